// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The pieces every binary file format in distill shares: the FNV-1a 64 checksum, little-endian
//! integers, overflow-checked size arithmetic, atomic file replacement and whole-file reads.
//! Formats built on them: sample-queue files (contrastive/sample_queue.hpp), checkpoints
//! (nn/checkpoint.hpp) and the examples' dataset files.
//!
//!   std::vector<unsigned char> file = ...;                       // header, payload
//!   append_le64(file, fnv1a64::of(file));                        // checksum trailer
//!   DISTILL_TRY(write_file_atomically(fn, path, file));          // io_error on failure
//!   ...
//!   DISTILL_TRY(read_file(fn, path, file, largest_valid_size));  // regular files only
//!
//! write_file_atomically writes "<path>.tmp.XXXXXX" (mkstemp) in the same directory, fsyncs it,
//! renames it over <path> (atomic on POSIX) and fsyncs the directory, so a crash at any point
//! leaves either the old file or the new one, never a mixture. Its options carry test hooks that
//! simulate a crash part-way through the temporary file.
//!
//! Every size read from a file is hostile until checked: multiply and add such sizes only with
//! checked_mul / checked_add, which report overflow instead of wrapping (or, for signed types,
//! invoking undefined behaviour), and compare the result with the bytes actually present.

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "distill/core/status.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define DISTILL_FILE_IO_POSIX 1
#else
#define DISTILL_FILE_IO_POSIX 0
#endif

namespace distill {

/// FNV-1a, 64-bit (Fowler, Noll, Vo) over bytes: h = (h ^ byte) * 0x100000001b3 from
/// 0xcbf29ce484222325. Incremental: update() with consecutive pieces equals one update() with all.
class fnv1a64 {
 public:
  static constexpr std::uint64_t offset_basis = 0xcbf29ce484222325ull;
  static constexpr std::uint64_t prime = 0x100000001b3ull;

  constexpr fnv1a64& update(std::span<const unsigned char> bytes) noexcept {
    std::uint64_t h = hash_;
    for (const unsigned char b : bytes) h = (h ^ b) * prime;
    hash_ = h;
    return *this;
  }
  constexpr std::uint64_t value() const noexcept { return hash_; }
  /// The checksum of `bytes` alone.
  static constexpr std::uint64_t of(std::span<const unsigned char> bytes) noexcept { return fnv1a64{}.update(bytes).value(); }

 private:
  std::uint64_t hash_ = offset_basis;
};

// ---- little-endian integers (whatever the host's byte order) ----
constexpr void put_le32(unsigned char* p, std::uint32_t v) noexcept {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
constexpr void put_le64(unsigned char* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
constexpr std::uint32_t get_le32(const unsigned char* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
constexpr std::uint64_t get_le64(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
inline void append_le32(std::vector<unsigned char>& out, std::uint32_t v) {
  out.resize(out.size() + 4);
  put_le32(out.data() + out.size() - 4, v);
}
inline void append_le64(std::vector<unsigned char>& out, std::uint64_t v) {
  out.resize(out.size() + 8);
  put_le64(out.data() + out.size() - 8, v);
}

// ---- size arithmetic on values read from files ----
/// out = a * b; false (out unchanged) when the product does not fit in 64 bits.
[[nodiscard]] constexpr bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}
/// out = a + b; false (out unchanged) when the sum does not fit in 64 bits.
[[nodiscard]] constexpr bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (b > std::numeric_limits<std::uint64_t>::max() - a) return false;
  out = a + b;
  return true;
}

/// Options of write_file_atomically. The last two are test hooks; production code leaves them.
struct atomic_write_options {
  /// Create the missing folders of the path first (otherwise a missing folder is an io_error).
  bool create_parent_directories = false;
  /// Test hook: stop after writing this many bytes of the temporary file, as a crash or a full
  /// disk would, and return io_error without renaming (the target stays untouched).
  std::uint64_t fail_after_bytes = std::numeric_limits<std::uint64_t>::max();
  /// Test hook, with fail_after_bytes: leave the partial temporary file behind, as a killed
  /// process would (by default it is removed).
  bool keep_temp_on_failure = false;
};

namespace file_io_detail {
inline status io_error(const char* fn, const std::string& what, int err = 0) {
  return status(errc::io_error, std::string(fn) + ": " + what + (err ? std::string(": ") + std::strerror(err) : std::string()));
}
}  // namespace file_io_detail

/// Replace the file at `path` with the concatenation of `parts`, atomically (see the file
/// comment). Errors name `fn`, the calling entry point: invalid_argument for an empty path,
/// io_error for anything the file system refuses; the previous file at `path` is then untouched.
inline status write_file_atomically(const char* fn, const std::string& path, std::initializer_list<std::span<const unsigned char>> parts,
                                    const atomic_write_options& opt = {}) {
  using file_io_detail::io_error;
  if (path.empty()) return status(errc::invalid_argument, std::string(fn) + ": empty path");
  if (opt.create_parent_directories) {
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) return io_error(fn, "cannot create the folder '" + parent.string() + "': " + ec.message());
  }
  std::uint64_t total = 0;
  for (const auto& part : parts) total += part.size();
  const bool crash = opt.fail_after_bytes < total;  // the simulated crash of the test hook
  std::uint64_t budget = crash ? opt.fail_after_bytes : total;
#if DISTILL_FILE_IO_POSIX
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    const int err = errno;
    return io_error(fn, "cannot create a temporary file next to '" + path + "'", err);
  }
  (void)::fchmod(fd, S_IRUSR | S_IWUSR | S_IRGRP | S_IROTH);  // mkstemp makes it 0600
  const auto abandon = [&](const std::string& what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return io_error(fn, what, err);
  };
  for (const auto& part : parts) {
    const unsigned char* p = part.data();
    std::size_t left = static_cast<std::size_t>(std::min<std::uint64_t>(part.size(), budget));
    budget -= left;
    while (left > 0) {
      const ::ssize_t w = ::write(fd, p, left);
      if (w < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        return abandon("writing '" + tmp + "' failed", err);
      }
      p += w;
      left -= static_cast<std::size_t>(w);
    }
  }
  if (crash) {
    ::close(fd);
    if (!opt.keep_temp_on_failure) ::unlink(tmp.c_str());
    return io_error(fn, "simulated interruption after " + std::to_string(opt.fail_after_bytes) + " bytes of '" + tmp + "'");
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    return abandon("flushing '" + tmp + "' to disk failed", err);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error(fn, "closing '" + tmp + "' failed", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error(fn, "renaming '" + tmp + "' to '" + path + "' failed", err);
  }
  // Make the rename itself durable (best effort: some file systems refuse fsync on folders).
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return {};
#else
  // Portable fallback (no fsync): write "<path>.tmp", flush, replace.
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    const int err = errno;
    return io_error(fn, "cannot create '" + tmp + "'", err);
  }
  bool ok = true;
  for (const auto& part : parts) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(part.size(), budget));
    budget -= n;
    ok = ok && (n == 0 || std::fwrite(part.data(), 1, n, f) == n);
  }
  ok = std::fflush(f) == 0 && ok;
  ok = std::fclose(f) == 0 && ok;
  if (!ok || crash) {
    if (!ok || !opt.keep_temp_on_failure) std::remove(tmp.c_str());
    return io_error(fn, ok ? "simulated interruption of '" + tmp + "'" : "writing '" + tmp + "' failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return io_error(fn, "renaming '" + tmp + "' to '" + path + "' failed: " + ec.message());
  }
  return {};
#endif
}

/// The same for one buffer.
inline status write_file_atomically(const char* fn, const std::string& path, std::span<const unsigned char> bytes,
                                    const atomic_write_options& opt = {}) {
  return write_file_atomically(fn, path, {bytes}, opt);
}

/// Read the whole file at `path` into `out` (replacing its contents). Only regular files are
/// read (a FIFO would block, a device such as /dev/zero never ends): anything else is an
/// io_error, as is a file that cannot be opened or read or that changes size while it is read.
/// A file larger than `max_bytes` (the largest the caller's format can hold) is corrupt_data,
/// refused before anything is allocated. Errors name `fn`.
inline status read_file(const char* fn, const std::string& path, std::vector<unsigned char>& out,
                        std::uint64_t max_bytes = std::numeric_limits<std::uint64_t>::max()) {
  using file_io_detail::io_error;
  out.clear();
  const auto too_large = [&](std::uint64_t size) {
    return status(errc::corrupt_data, std::string(fn) + ": '" + path + "' holds " + std::to_string(size) +
                                          " bytes, more than the " + std::to_string(max_bytes) + " this format can hold");
  };
  const auto not_regular = [&](const std::string& kind) {
    return io_error(fn, "'" + path + "' is not a regular file (" + kind + ")");
  };
#if DISTILL_FILE_IO_POSIX
  // O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return io_error(fn, "cannot open '" + path + "'", err);
  }
  struct ::stat st{};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return io_error(fn, "cannot inspect '" + path + "'", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return not_regular(S_ISDIR(st.st_mode)    ? "a folder"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                                                      : "a socket or other special file");
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    return too_large(size);
  }
  try {
    out.resize(static_cast<std::size_t>(size));
  } catch (const std::exception&) {  // bad_alloc, or length_error beyond the address space
    ::close(fd);
    return io_error(fn, "not enough memory to read the " + std::to_string(size) + " bytes of '" + path + "'");
  }
  // Read exactly `size` bytes, then make sure nothing follows (the file changed under us).
  std::size_t at = 0;
  while (at < out.size()) {
    const ::ssize_t got = ::read(fd, out.data() + at, out.size() - at);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      out.clear();
      return io_error(fn, "reading '" + path + "' failed", err);
    }
    if (got == 0) break;
    at += static_cast<std::size_t>(got);
  }
  unsigned char extra;
  ::ssize_t more;
  do more = ::read(fd, &extra, 1);
  while (more < 0 && errno == EINTR);
  ::close(fd);
  if (at != out.size() || more != 0) {
    out.clear();
    return io_error(fn, "'" + path + "' changed size while it was read");
  }
  return {};
#else
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    if (!std::filesystem::exists(path, ec)) return io_error(fn, "cannot open '" + path + "'", ENOENT);
    return not_regular("a folder or special file");
  }
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return io_error(fn, "cannot inspect '" + path + "': " + ec.message());
  if (size > max_bytes) return too_large(size);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    return io_error(fn, "cannot open '" + path + "'", err);
  }
  try {
    out.resize(static_cast<std::size_t>(size));
  } catch (const std::exception&) {
    std::fclose(f);
    return io_error(fn, "not enough memory to read the " + std::to_string(size) + " bytes of '" + path + "'");
  }
  const bool complete = std::fread(out.data(), 1, out.size(), f) == out.size() && std::fgetc(f) == EOF && !std::ferror(f);
  std::fclose(f);
  if (!complete) {
    out.clear();
    return io_error(fn, "reading '" + path + "' failed or it changed size while it was read");
  }
  return {};
#endif
}

}  // namespace distill
