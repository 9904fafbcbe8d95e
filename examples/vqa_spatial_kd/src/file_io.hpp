// SPDX-License-Identifier: MIT
#pragma once
// Small pieces shared by the example's binary files (dataset_io.hpp, checkpoint.hpp):
// little-endian integers, the FNV-1a 64 checksum, and atomic file replacement.

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>
#define VQA_HAVE_POSIX_IO 1
#else
#define VQA_HAVE_POSIX_IO 0
#endif

namespace vqa {

/// FNV-1a, 64-bit (Fowler, Noll, Vo): a simple, well-known checksum over bytes.
class fnv1a64 {
 public:
  void update(std::span<const std::uint8_t> bytes) {
    std::uint64_t h = hash_;
    for (std::uint8_t b : bytes) h = (h ^ b) * 0x100000001B3ull;
    hash_ = h;
  }
  std::uint64_t value() const { return hash_; }

 private:
  std::uint64_t hash_ = 0xCBF29CE484222325ull;
};

inline void put_le32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
inline void put_le64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
inline std::uint32_t get_le32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t{p[i]} << (8 * i);
  return v;
}
inline std::uint64_t get_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

/// Replaces `path` with the concatenated `parts` atomically: writes "<path>.tmp-<pid>", flushes
/// it to disk, then renames it over `path` (creating the folder). A reader never sees a
/// half-written file; a crash leaves the old file (or none). Throws std::runtime_error on
/// failure, after removing the temporary file.
inline void write_file_atomically(const std::filesystem::path& path, std::initializer_list<std::span<const std::uint8_t>> parts) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
#if VQA_HAVE_POSIX_IO
  const long pid = static_cast<long>(::getpid());
#else
  const long pid = 0;
#endif
  std::filesystem::path tmp = path;
  tmp += ".tmp-" + std::to_string(pid);
  std::FILE* f = std::fopen(tmp.string().c_str(), "wb");
  if (!f) throw std::runtime_error("cannot create " + tmp.string());
  bool ok = true;
  for (const auto& part : parts) ok = ok && (part.empty() || std::fwrite(part.data(), 1, part.size(), f) == part.size());
  ok = ok && std::fflush(f) == 0;
#if VQA_HAVE_POSIX_IO
  ok = ok && ::fsync(::fileno(f)) == 0;
#endif
  ok = (std::fclose(f) == 0) && ok;
  if (ok) std::filesystem::rename(tmp, path, ec);
  if (!ok || ec) {
    std::filesystem::remove(tmp, ec);
    throw std::runtime_error("cannot write " + path.string());
  }
}

/// Reads a whole file into `out`; false when it cannot be opened or read.
inline bool read_whole_file(const std::filesystem::path& path, std::vector<std::uint8_t>& out) {
  std::FILE* f = std::fopen(path.string().c_str(), "rb");
  if (!f) return false;
  out.clear();
  std::uint8_t buf[1 << 16];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.insert(out.end(), buf, buf + n);
  const bool ok = std::ferror(f) == 0;
  std::fclose(f);
  return ok;
}

}  // namespace vqa
