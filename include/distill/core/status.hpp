// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `status`: what every public entry point returns. A code plus a message that names the entry
//! point and the offending argument, e.g.
//!   "kl_teacher_student_forward: 'teacher' has 31999 columns but 'student' has 32000".
//!
//! The library never throws, aborts or prints. Programs that prefer exceptions wrap calls in
//! `distill::throw_if_error(...)`, which throws `distill::error`.

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace distill {

/// Error categories. The message carries the details.
enum class errc : int {
  ok = 0,
  invalid_argument,    ///< an option or scalar is out of its domain (temperature <= 0, beta > 1, ...)
  shape_mismatch,      ///< two views disagree on an extent, or an extent is zero where rows are needed
  unsupported_layout,  ///< strides the chosen backend cannot handle (e.g. non-unit inner stride on CUDA)
  unsupported_dtype,   ///< element type not supported by this entry point
  wrong_memory_space,  ///< a pointer lives in the wrong memory (host pointer passed as device memory)
  misaligned,          ///< a pointer is not aligned to its element type
  non_finite,          ///< NaN/inf where the documented contract forbids it
  cuda_error,          ///< the CUDA runtime or a library (cuBLAS) reported an error
  io_error,            ///< a file could not be opened, read, written or renamed
  corrupt_data,        ///< a file has a bad header, wrong version, failed checksum or is truncated
  parse_error,         ///< a text input (rules, configuration) is malformed
  not_converged,       ///< an iterative solver hit its iteration cap (the result is still returned)
  communication_error, ///< MPI or NCCL reported an error in a collective (distill/distributed/)
};

/// Stable lowercase name of an error code, e.g. "shape_mismatch".
constexpr std::string_view to_string(errc c) noexcept {
  switch (c) {
    case errc::ok: return "ok";
    case errc::invalid_argument: return "invalid_argument";
    case errc::shape_mismatch: return "shape_mismatch";
    case errc::unsupported_layout: return "unsupported_layout";
    case errc::unsupported_dtype: return "unsupported_dtype";
    case errc::wrong_memory_space: return "wrong_memory_space";
    case errc::misaligned: return "misaligned";
    case errc::non_finite: return "non_finite";
    case errc::cuda_error: return "cuda_error";
    case errc::io_error: return "io_error";
    case errc::corrupt_data: return "corrupt_data";
    case errc::parse_error: return "parse_error";
    case errc::not_converged: return "not_converged";
    case errc::communication_error: return "communication_error";
  }
  return "unknown";
}

/// Result of a call. Default-constructed means success; success never allocates.
class [[nodiscard]] status {
 public:
  status() noexcept = default;
  status(errc code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const noexcept { return code_ == errc::ok; }
  errc code() const noexcept { return code_; }
  /// "<entry point>: <what is wrong>", empty on success.
  const std::string& message() const noexcept { return message_; }
  /// "shape_mismatch: kl_...: 'teacher' has ..." (or "ok").
  std::string to_string() const {
    return ok() ? std::string("ok") : std::string(distill::to_string(code_)) + ": " + message_;
  }

 private:
  errc code_ = errc::ok;
  std::string message_;
};

/// Exception thrown by `throw_if_error`; `code()` keeps the category.
class error : public std::runtime_error {
 public:
  explicit error(const status& st) : std::runtime_error(st.to_string()), code_(st.code()) {}
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

/// For programs that prefer exceptions: throws `distill::error` unless `st.ok()`.
inline void throw_if_error(const status& st) {
  if (!st.ok()) throw error(st);
}

}  // namespace distill

/// Inside a function returning `distill::status`: return early when `expr` fails.
#define DISTILL_TRY(expr)                               \
  do {                                                  \
    if (::distill::status distill_st_ = (expr); !distill_st_.ok()) \
      return distill_st_;                               \
  } while (0)
