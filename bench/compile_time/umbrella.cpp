// SPDX-License-Identifier: MIT
// Compile-time probe: the cost of including the umbrella header alone (docs/performance.md).
#include <distill/distill.hpp>

int main() { return distill::version_string[0] == '\0'; }
