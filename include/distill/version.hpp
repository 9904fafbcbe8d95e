// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Library version.

#define DISTILL_VERSION_MAJOR 0
#define DISTILL_VERSION_MINOR 1
#define DISTILL_VERSION_PATCH 0

namespace distill {
inline constexpr const char* version_string = "0.1.0";
}  // namespace distill
