// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Checkpoints: a model's parameters (and buffers), its optimiser's state and small metadata in
//! one file with a versioned header, named tensors with dtypes and shapes, and a checksum,
//! written atomically so a crash never leaves a half-written file in place of the last good one.
//!
//! File layout (version 1, little-endian):
//!   "DSTLCKPT" | u32 version = 1 | u32 byte-order mark 0x01020304 | u64 entry count
//!   entry*:    u32 name length | name bytes | u32 dtype (1 f32, 2 f64, 3 i64, 4 u8) | u32 rank |
//!              i64 extents[rank] | u64 payload bytes | payload
//!   footer:    u64 checksum | "DSTLEND\0"
//! checksum = FNV-1a-style hash over 8-byte little-endian words of everything before the footer
//! (h = (h ^ word) * 0x100000001b3, tail bytes one at a time): every step is a bijection in h, so
//! any single changed byte changes the checksum.
//!
//! Saving writes "<path>.tmp.XXXXXX" in the same directory, fsyncs it, renames it over <path>
//! (atomic on POSIX) and fsyncs the directory (core/file_io.hpp's write_file_atomically). Loading
//! reads regular files only, verifies magic, version, byte order, checksum and every bound (sizes
//! multiplied with overflow checks, so extents whose product wraps are refused), and returns
//! corrupt_data ("truncated", "checksum mismatch", ...) otherwise; restoring into a model returns
//! shape_mismatch / unsupported_dtype / invalid_argument (missing or unexpected names) and changes
//! nothing unless everything matches.
//!
//! Names: parameters "param/<name>", optimiser state "optim/<state name>" and "optim/step",
//! metadata "meta/<key>" (int64 scalars or strings as u8).
//!
//! safetensors (core/safetensors.hpp): `save(path, {.format = file_format::safetensors})` writes
//! the same entries as a file PyTorch opens with `safetensors.torch.load_file` (dtypes F32, F64,
//! I64, U8; same names), atomically and with distill's checksum in its metadata; `load` and
//! `parse` recognise either format, and also take safetensors files written elsewhere (then
//! without a checksum) whose tensors have those dtypes.
//!
//!   nn::checkpoint ck;
//!   DISTILL_TRY(ck.add_parameters(params));
//!   DISTILL_TRY(ck.add_optimizer(opt));
//!   ck.put_int("epoch", epoch);
//!   DISTILL_TRY(ck.save("run/model.ckpt"));
//!   ...
//!   nn::checkpoint in;
//!   DISTILL_TRY(nn::checkpoint::load("run/model.ckpt", in));
//!   DISTILL_TRY(in.restore_parameters(params));
//!   DISTILL_TRY(in.restore_optimizer(opt));

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/file_io.hpp"
#include "distill/core/safetensors.hpp"
#include "distill/core/status.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/tensor.hpp"

namespace distill::nn {

enum class checkpoint_dtype : std::uint32_t { f32 = 1, f64 = 2, i64 = 3, u8 = 4 };

template <class T>
constexpr checkpoint_dtype checkpoint_dtype_of() noexcept {
  if constexpr (std::is_same_v<T, float>) return checkpoint_dtype::f32;
  else if constexpr (std::is_same_v<T, double>) return checkpoint_dtype::f64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return checkpoint_dtype::i64;
  else {
    static_assert(std::is_same_v<T, std::uint8_t>, "checkpoint tensors are float, double, int64 or uint8");
    return checkpoint_dtype::u8;
  }
}

constexpr const char* to_string(checkpoint_dtype d) noexcept {
  switch (d) {
    case checkpoint_dtype::f32: return "f32";
    case checkpoint_dtype::f64: return "f64";
    case checkpoint_dtype::i64: return "i64";
    case checkpoint_dtype::u8: return "u8";
  }
  return "unknown";
}

/// Testing hook for saves: stop after `fail_after_bytes` bytes of the temporary file, as a crash
/// would (the temporary file is left behind, the target untouched), and return io_error.
struct checkpoint_save_options {
  std::size_t fail_after_bytes = std::numeric_limits<std::size_t>::max();
  /// distill's format (above) or safetensors.
  file_format format = file_format::native;
};

namespace checkpoint_detail {
inline constexpr char magic[8] = {'D', 'S', 'T', 'L', 'C', 'K', 'P', 'T'};
inline constexpr char end_magic[8] = {'D', 'S', 'T', 'L', 'E', 'N', 'D', '\0'};
inline constexpr std::uint32_t version = 1;
inline constexpr std::uint32_t byte_order_mark = 0x01020304u;

/// The format's checksum: FNV-1a's constants over 8-byte little-endian words, then the tail bytes
/// one at a time. Not byte-wise FNV-1a (core/file_io.hpp's fnv1a64): version 1 files store this.
inline std::uint64_t checksum(const unsigned char* p, std::size_t n) noexcept {
  std::uint64_t h = fnv1a64::offset_basis;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) h = (h ^ get_le64(p + i)) * fnv1a64::prime;
  for (; i < n; ++i) h = (h ^ p[i]) * fnv1a64::prime;
  return h;
}

/// Bounds-checked little-endian reader over the file bytes.
struct reader {
  const unsigned char* p;
  std::size_t n, at = 0;
  bool ok = true;
  template <class U>
  U get() {
    if (!ok || n - at < sizeof(U)) {
      ok = false;
      return U{};
    }
    U v;
    if constexpr (std::is_same_v<U, std::uint32_t>) {
      v = get_le32(p + at);
    } else {
      static_assert(std::is_same_v<U, std::uint64_t>, "the format holds u32 and u64 fields");
      v = get_le64(p + at);
    }
    at += sizeof(U);
    return v;
  }
  const unsigned char* take(std::size_t bytes) {
    if (!ok || n - at < bytes) {
      ok = false;
      return nullptr;
    }
    const unsigned char* r = p + at;
    at += bytes;
    return r;
  }
};

/// Number of elements of `shape`, or -1 when an extent is negative or the product does not fit
/// in index_t (shapes come from files: never multiply them unchecked).
inline index_t element_count(const std::vector<index_t>& shape) noexcept {
  std::uint64_t n = 1;
  for (const index_t d : shape)
    if (d < 0 || !checked_mul(n, static_cast<std::uint64_t>(d), n)) return -1;
  return n <= static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()) ? static_cast<index_t>(n) : -1;
}

/// The safetensors spelling of a dtype, and back (false for a dtype checkpoints do not hold).
inline const char* safetensors_dtype(checkpoint_dtype d) noexcept {
  switch (d) {
    case checkpoint_dtype::f32: return "F32";
    case checkpoint_dtype::f64: return "F64";
    case checkpoint_dtype::i64: return "I64";
    case checkpoint_dtype::u8: return "U8";
  }
  return "";
}
inline bool from_safetensors_dtype(const std::string& s, checkpoint_dtype& d) noexcept {
  for (const auto c : {checkpoint_dtype::f32, checkpoint_dtype::f64, checkpoint_dtype::i64, checkpoint_dtype::u8})
    if (s == safetensors_dtype(c)) {
      d = c;
      return true;
    }
  return false;
}

inline std::size_t dtype_size(checkpoint_dtype d) {
  switch (d) {
    case checkpoint_dtype::f32: return 4;
    case checkpoint_dtype::f64: return 8;
    case checkpoint_dtype::i64: return 8;
    case checkpoint_dtype::u8: return 1;
  }
  return 0;
}

}  // namespace checkpoint_detail

/// An in-memory set of named tensors, saved and loaded as one file.
class checkpoint {
 public:
  struct entry {
    checkpoint_dtype dtype;
    std::vector<index_t> shape;
    std::vector<unsigned char> bytes;
    /// Number of elements; -1 for a shape with a negative extent or too many elements for index_t.
    index_t elements() const noexcept { return checkpoint_detail::element_count(shape); }
  };

  /// Add (or replace) a host tensor of `shape` (row-major, contiguous); invalid_argument for a
  /// negative extent, a size beyond 64 bits, or null data with a non-empty shape.
  template <class T>
  [[nodiscard]] status put(const std::string& name, const T* data, const std::vector<index_t>& shape) {
    constexpr const char* fn = "nn::checkpoint::put";
    const index_t n = checkpoint_detail::element_count(shape);
    std::uint64_t bytes = 0;
    if (n < 0 || !checked_mul(static_cast<std::uint64_t>(n), sizeof(T), bytes) || bytes > std::numeric_limits<std::size_t>::max())
      return fail(errc::invalid_argument, fn, "'" + name + "' has shape " + shape_string(shape) + ", which no tensor can have");
    if (bytes > 0 && !data) return fail(errc::invalid_argument, fn, "'" + name + "': data is null");
    store(name, data, shape);
    return {};
  }
  void put_int(const std::string& key, std::int64_t v) { store("meta/" + key, &v, {1}); }
  void put_string(const std::string& key, const std::string& s) {
    store("meta/" + key, reinterpret_cast<const std::uint8_t*>(s.data()), {static_cast<index_t>(s.size())});
  }

  const entry* find(const std::string& name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, entry>& entries() const noexcept { return entries_; }

  /// Copy entry `name` into `out` (exactly `shape`, dtype T), with a clear status otherwise.
  template <class T>
  [[nodiscard]] status get(const std::string& name, const std::vector<index_t>& shape, T* out) const {
    constexpr const char* fn = "nn::checkpoint::get";
    const entry* e = find(name);
    if (!e) return fail(errc::invalid_argument, fn, "the checkpoint has no entry '" + name + "'");
    if (e->dtype != checkpoint_dtype_of<T>())
      return fail(errc::unsupported_dtype, fn, "'" + name + "' is stored as " + to_string(e->dtype) + ", the model wants " +
                                                   to_string(checkpoint_dtype_of<T>()));
    if (e->shape != shape)
      return fail(errc::shape_mismatch, fn, "'" + name + "' has shape " + shape_string(e->shape) + " in the checkpoint, the model has " +
                                                shape_string(shape));
    if (!e->bytes.empty()) std::memcpy(out, e->bytes.data(), e->bytes.size());
    return {};
  }
  [[nodiscard]] status get_int(const std::string& key, std::int64_t& v) const { return get("meta/" + key, {1}, &v); }
  [[nodiscard]] status get_string(const std::string& key, std::string& s) const {
    const entry* e = find("meta/" + key);
    if (!e || e->dtype != checkpoint_dtype::u8)
      return fail(errc::invalid_argument, "nn::checkpoint::get_string", "no string entry 'meta/" + key + "'");
    s.assign(reinterpret_cast<const char*>(e->bytes.data()), e->bytes.size());
    return {};
  }

  // ---- models and optimisers ----

  /// Add every parameter and buffer (values, downloaded from the device if needed).
  template <class T, class Space>
  [[nodiscard]] status add_parameters(const parameter_list<T, Space>& params) {
    for (const auto* p : params) {
      if (p->name.empty()) return fail(errc::invalid_argument, "nn::checkpoint::add_parameters", "a parameter has no name");
      const auto host = p->value.to_host();
      store("param/" + p->name, host.data(), shape_of(p->shape()));
    }
    return {};
  }

  /// Restore every parameter; refuses (changing nothing) when a parameter is missing, has another
  /// shape or dtype, or the checkpoint holds parameters the model does not have.
  template <class T, class Space>
  [[nodiscard]] status restore_parameters(const parameter_list<T, Space>& params) const {
    constexpr const char* fn = "nn::checkpoint::restore_parameters";
    std::vector<std::vector<T>> staged;
    std::map<std::string, bool> wanted;
    for (const auto* p : params) {
      wanted["param/" + p->name] = true;
      staged.emplace_back(static_cast<std::size_t>(p->size()));
      DISTILL_TRY(get("param/" + p->name, shape_of(p->shape()), staged.back().data()));
    }
    for (const auto& [name, e] : entries_)
      if (name.rfind("param/", 0) == 0 && !wanted.count(name))
        return fail(errc::invalid_argument, fn, "the checkpoint holds '" + name + "', which the model does not have");
    for (std::size_t i = 0; i < params.size(); ++i) DISTILL_TRY(params[i]->value.copy_from_host(staged[i]));
    return {};
  }

  /// Add an optimiser's state tensors and step count (any optimiser with state() and steps()).
  template <class Optimizer>
  [[nodiscard]] status add_optimizer(Optimizer& opt) {
    for (auto& [name, t] : opt.state()) {
      const auto host = t->to_host();
      store("optim/" + name, host.data(), shape_of(t->shape()));
    }
    const std::int64_t step = opt.steps();
    store("optim/step", &step, {1});
    return {};
  }

  template <class Optimizer>
  [[nodiscard]] status restore_optimizer(Optimizer& opt) const {
    constexpr const char* fn = "nn::checkpoint::restore_optimizer";
    auto state = opt.state();
    using T = typename std::remove_pointer_t<typename decltype(state)::value_type::second_type>::value_type;
    std::vector<std::vector<T>> staged;
    std::map<std::string, bool> wanted{{"optim/step", true}};
    for (auto& [name, t] : state) {
      wanted["optim/" + name] = true;
      staged.emplace_back(static_cast<std::size_t>(t->size()));
      DISTILL_TRY(get("optim/" + name, shape_of(t->shape()), staged.back().data()));
    }
    std::int64_t step = 0;
    DISTILL_TRY(get("optim/step", {1}, &step));
    for (const auto& [name, e] : entries_)
      if (name.rfind("optim/", 0) == 0 && !wanted.count(name))
        return fail(errc::invalid_argument, fn, "the checkpoint holds '" + name + "', which this optimiser does not have");
    for (std::size_t i = 0; i < state.size(); ++i) DISTILL_TRY(state[i].second->copy_from_host(staged[i]));
    opt.step_count() = static_cast<index_t>(step);
    return {};
  }

  // ---- files ----

  /// Serialise to bytes (header, entries, checksum, end magic).
  std::vector<unsigned char> serialize() const {
    using namespace checkpoint_detail;
    std::vector<unsigned char> out(magic, magic + 8);
    append_le32(out, version);
    append_le32(out, byte_order_mark);
    append_le64(out, entries_.size());
    for (const auto& [name, e] : entries_) {
      append_le32(out, static_cast<std::uint32_t>(name.size()));
      out.insert(out.end(), name.begin(), name.end());
      append_le32(out, static_cast<std::uint32_t>(e.dtype));
      append_le32(out, static_cast<std::uint32_t>(e.shape.size()));
      for (index_t d : e.shape) append_le64(out, static_cast<std::uint64_t>(d));
      append_le64(out, e.bytes.size());
      out.insert(out.end(), e.bytes.begin(), e.bytes.end());
    }
    append_le64(out, checksum(out.data(), out.size()));
    out.insert(out.end(), end_magic, end_magic + 8);
    return out;
  }

  /// The same entries as a safetensors image (core/safetensors.hpp).
  std::vector<unsigned char> serialize_safetensors() const {
    std::vector<safetensors_tensor> tensors;
    for (const auto& [name, e] : entries_) tensors.push_back({name, checkpoint_detail::safetensors_dtype(e.dtype), e.shape, e.bytes});
    std::vector<unsigned char> image;
    const status st = safetensors_serialize(tensors, {{"distill.content", "checkpoint"}}, image);
    (void)st;  // entries are valid by construction (put checks shapes; names are unique map keys)
    return image;
  }

  /// Write atomically (temporary file in the same directory, fsync, rename, fsync directory), in
  /// distill's format or as safetensors (opt.format).
  [[nodiscard]] status save(const std::string& path, const checkpoint_save_options& opt = {}) const {
    atomic_write_options w;
    w.fail_after_bytes = opt.fail_after_bytes;
    w.keep_temp_on_failure = true;  // the simulated crash leaves its temporary file, as a real one would
    return write_file_atomically("nn::checkpoint::save", path, opt.format == file_format::safetensors ? serialize_safetensors() : serialize(),
                                 w);
  }

  /// Parse bytes (either format); corrupt_data with the reason when anything is off.
  [[nodiscard]] static status parse(const unsigned char* data, std::size_t n, checkpoint& out) {
    using namespace checkpoint_detail;
    constexpr const char* fn = "nn::checkpoint::load";
    if (is_safetensors({data, n})) return parse_safetensors(fn, {data, n}, out);
    constexpr std::size_t header = 8 + 4 + 4 + 8, footer = 8 + 8;
    if (n < header + footer)
      return fail(errc::corrupt_data, fn, "file of " + std::to_string(n) + " bytes is truncated (smaller than header + footer)");
    if (std::memcmp(data, magic, 8) != 0) return fail(errc::corrupt_data, fn, "not a distill checkpoint (bad magic)");
    if (std::memcmp(data + n - 8, end_magic, 8) != 0)
      return fail(errc::corrupt_data, fn, "truncated or damaged file (end marker missing)");
    reader r{data, n - footer};
    r.at = 8;
    const auto ver = r.get<std::uint32_t>();
    if (ver != version)
      return fail(errc::corrupt_data, fn, "unsupported checkpoint version " + std::to_string(ver) + " (this build reads " +
                                              std::to_string(version) + ")");
    if (r.get<std::uint32_t>() != byte_order_mark) return fail(errc::corrupt_data, fn, "wrong byte order mark");
    reader tail{data, n - 8};
    tail.at = n - footer;
    const auto stored = tail.get<std::uint64_t>();
    if (stored != checksum(data, n - footer)) return fail(errc::corrupt_data, fn, "checksum mismatch: the file is corrupt");
    const auto count = r.get<std::uint64_t>();
    checkpoint ck;
    for (std::uint64_t i = 0; i < count; ++i) {
      const auto len = r.get<std::uint32_t>();
      const unsigned char* name = r.take(len);
      entry e{};
      const auto dt = r.get<std::uint32_t>();
      const auto rank = r.get<std::uint32_t>();
      if (!r.ok) break;
      if (dt < 1 || dt > 4 || rank > 8) return fail(errc::corrupt_data, fn, "entry " + std::to_string(i) + " has a bad dtype or rank");
      e.dtype = static_cast<checkpoint_dtype>(dt);
      for (std::uint32_t d = 0; d < rank; ++d) {
        const auto ext = static_cast<index_t>(r.get<std::uint64_t>());
        if (ext < 0) return fail(errc::corrupt_data, fn, "negative extent");
        e.shape.push_back(ext);
      }
      const auto nbytes = r.get<std::uint64_t>();
      if (!r.ok) break;
      const index_t elements = e.elements();
      std::uint64_t want = 0;
      if (elements < 0 || !checked_mul(static_cast<std::uint64_t>(elements), dtype_size(e.dtype), want))
        return fail(errc::corrupt_data, fn, "entry " + std::to_string(i) + " has a shape whose size does not fit in 64 bits");
      if (nbytes != want) return fail(errc::corrupt_data, fn, "entry " + std::to_string(i) + " payload size disagrees with its shape");
      const unsigned char* payload = r.take(static_cast<std::size_t>(nbytes));
      if (!r.ok) break;
      e.bytes.assign(payload, payload + nbytes);
      ck.entries_[std::string(reinterpret_cast<const char*>(name), len)] = std::move(e);
    }
    if (!r.ok) return fail(errc::corrupt_data, fn, "truncated file (an entry runs past the end)");
    if (r.at != r.n) return fail(errc::corrupt_data, fn, "trailing bytes before the footer");
    out = std::move(ck);
    return {};
  }

  /// Read and verify a checkpoint file: a regular file of at most `max_bytes` (io_error for a
  /// FIFO or device, corrupt_data for a larger file).
  [[nodiscard]] static status load(const std::string& path, checkpoint& out,
                                   std::uint64_t max_bytes = std::numeric_limits<std::uint64_t>::max()) {
    std::vector<unsigned char> bytes;
    DISTILL_TRY(read_file("nn::checkpoint::load", path, bytes, max_bytes));
    return parse(bytes.data(), bytes.size(), out);
  }

 private:
  std::map<std::string, entry> entries_;

  static status parse_safetensors(const char* fn, std::span<const unsigned char> bytes, checkpoint& out) {
    safetensors_file f;
    DISTILL_TRY(safetensors_parse(fn, bytes, f));
    checkpoint ck;
    for (const auto& t : f.tensors) {
      entry e{};
      if (!checkpoint_detail::from_safetensors_dtype(t.dtype, e.dtype))
        return fail(errc::corrupt_data, fn, "tensor '" + t.name + "' has dtype " + t.dtype + "; checkpoints hold F32, F64, I64 and U8");
      if (t.shape.size() > 8) return fail(errc::corrupt_data, fn, "tensor '" + t.name + "' has rank above 8");
      e.shape = t.shape;
      if (e.elements() < 0) return fail(errc::corrupt_data, fn, "tensor '" + t.name + "' has too many elements");
      e.bytes.assign(t.bytes.begin(), t.bytes.end());
      ck.entries_[t.name] = std::move(e);
    }
    out = std::move(ck);
    return {};
  }

  /// put() for shapes known to be valid (metadata, tensors of the model).
  template <class T>
  void store(const std::string& name, const T* data, const std::vector<index_t>& shape) {
    entry e{checkpoint_dtype_of<T>(), shape, {}};
    e.bytes.resize(static_cast<std::size_t>(e.elements()) * sizeof(T));
    if (!e.bytes.empty()) std::memcpy(e.bytes.data(), data, e.bytes.size());
    entries_[name] = std::move(e);
  }

  static std::vector<index_t> shape_of(const tensor_shape& s) {
    return std::vector<index_t>(s.dims.begin(), s.dims.begin() + s.rank);
  }
  static std::string shape_string(const std::vector<index_t>& s) {
    std::string r = "[";
    for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }
};

}  // namespace distill::nn
