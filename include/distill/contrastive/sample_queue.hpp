// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Sample queue: a fixed-capacity FIFO ring buffer of K unit-norm keys of dimension D (MoCo,
//! He et al. CVPR 2020; DistillVLM's token queue, Fang et al. ICCV 2021), in host or device
//! memory the caller owns.
//!
//!   storage    keys [K, D] row-major (unit stride along D, any row stride), optional ids [K]
//!   state      write position p in [0, K) and fill count n in [0, K] (host-side integers)
//!   enqueue    batch row r of B rows goes to slot (p + r) mod K; only the newest min(B, K) rows
//!              are written (a batch larger than K keeps its last K rows), then
//!              p <- (p + B) mod K,  n <- min(n + B, K)
//!   valid rows slots [0, n): filling starts at slot 0, so until the queue is full the valid
//!              keys are a prefix and the loss never reads uninitialised rows
//!   normalise  enqueue stores u = x / max(||x||_2, eps) by default (B2), so the queue holds unit
//!              keys whatever the caller passes; the loss uses queue rows as they are
//!   ids        per-slot int64 sample ids (image id, caption id) used by the loss to drop false
//!              negatives; `no_sample_id` (-1) never matches anything
//!   init       sample_queue_init_random fills every slot with N(0, 1) draws normalised per row,
//!              as MoCo's `queue = normalize(randn(dim, K))`; the draws are a pure function of
//!              (seed, slot, column), so the CPU and CUDA paths produce the same keys
//!
//! The state (p, n) lives in the `sample_queue` object on the host: every enqueue knows how many
//! rows it adds, so no device round trip is ever needed. Consequence for CUDA graphs: a captured
//! enqueue replays with the write position it was captured with; capture the loss, enqueue
//! outside the graph (or re-capture).
//!
//! Files (sample_queue_save / sample_queue_load; the same bytes in memory with
//! sample_queue_serialize / sample_queue_deserialize), little-endian:
//!   header (64 bytes)  "DSTLQUE1" magic, u32 version (1), u32 dtype code (1 f32, 2 f64, 3 bf16,
//!                      4 f16), u32 element bytes, u32 flags (bit 0: ids present), u64 capacity K,
//!                      u64 dim D, u64 write position, u64 fill count, u64 payload bytes
//!   payload            keys K x D dense row-major in the element type, then ids K x int64
//!   trailer            u64 FNV-1a 64 of header + payload
//! As safetensors (core/safetensors.hpp; opt.format = file_format::safetensors): tensors "keys"
//! [K, D] (F32, F64, BF16 or F16) and "ids" [K] (I64, when present), metadata "distill.content" =
//! "sample_queue", "write_position" and "fill_count" (decimal), plus the format's checksum; NumPy
//! and PyTorch users open it with the safetensors package. Loading recognises either format.
//! Saving writes a temporary file in the same directory, fsyncs it, renames it over the target
//! and fsyncs the directory, so a crash at any point leaves either the old or the new file.
//! Loading reads a regular file no larger than the queue's own file would be, checks all of it
//! (magic, version, dtype, K, D, ids flag, sizes with overflow checks, checksum, state
//! consistency) before touching the queue: a failed load leaves it unchanged.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/file_io.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/safetensors.hpp"
#include "distill/core/splitmix64.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// Id that matches nothing: slots and tokens without an id are never masked as false negatives.
inline constexpr std::int64_t no_sample_id = -1;

// ------------------------------------------------------------------------------------------
// Scalar math shared by the CPU loops and the CUDA kernels of the contrastive family.
// ------------------------------------------------------------------------------------------
namespace contrastive_detail {

/// 1 / max(sqrt(sumsq), eps): the scale of F.normalize (B2).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc inverse_norm(Acc sumsq, Acc eps) noexcept {
  using std::sqrt;
  const Acc n = sqrt(sumsq);
  return Acc(1) / (n > eps ? n : eps);
}

/// True when the norm was not clamped (the projection term of B2's backward applies).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE bool norm_unclamped(Acc sumsq, Acc eps) noexcept {
  using std::sqrt;
  return sqrt(sumsq) > eps;
}

/// Standard normal draw number `index` of stream `seed` (Box-Muller on two uniforms hashed with
/// SplitMix64, core/splitmix64.hpp, in
/// double so host and device agree to the last float bit in practice).
DISTILL_HOST_DEVICE inline float normal_draw(std::uint64_t seed, std::uint64_t index) noexcept {
  using std::cos;
  using std::log;
  using std::sqrt;
  const std::uint64_t h1 = splitmix64_hash(splitmix64_hash(seed) ^ index);
  const std::uint64_t h2 = splitmix64_hash(h1 ^ 0xD1B54A32D192ED03ull);
  const double u1 = static_cast<double>((h1 >> 11) + 1) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(h2 >> 11) * 0x1.0p-53;        // [0, 1)
  constexpr double two_pi = 6.283185307179586476925286766559;
  return static_cast<float>(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
}

/// Slot a batch row lands in: (write_pos + r) mod K.
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE index_t enqueue_slot(index_t write_pos, index_t r, index_t capacity) noexcept {
  return (write_pos + r) % capacity;
}

}  // namespace contrastive_detail

// ------------------------------------------------------------------------------------------
// The queue (non-owning) and the owning host wrapper.
// ------------------------------------------------------------------------------------------

/// Ring buffer of keys over caller-owned storage. `T` is the key element type (float, double,
/// float16, bfloat16); `Space` is host_space or cuda_space. Copying the object copies the view
/// and the state, not the keys.
template <class T, class Space = host_space>
class sample_queue {
  static_assert(!std::is_const_v<T>, "sample_queue: the key type must be non-const (the queue writes its keys)");
  static_assert(is_supported_float_v<T>, "sample_queue: keys must be float, double, float16 or bfloat16");

 public:
  using value_type = T;
  using memory_space = Space;

  /// An absent queue (capacity 0): the loss then uses in-batch negatives only.
  sample_queue() = default;
  /// Queue over `keys` [K, D] and optional `ids` [K]; empty (size 0, write position 0).
  explicit sample_queue(tensor_view<T, 2, Space> keys, tensor_view<std::int64_t, 1, Space> ids = {}) noexcept
      : keys_(keys), ids_(ids) {}

  const tensor_view<T, 2, Space>& keys() const noexcept { return keys_; }
  const tensor_view<std::int64_t, 1, Space>& ids() const noexcept { return ids_; }
  bool has_ids() const noexcept { return !ids_.empty(); }
  /// K, the number of slots (0 for an absent queue).
  index_t capacity() const noexcept { return keys_.empty() ? 0 : keys_.extent(0); }
  /// D, the key dimension.
  index_t dim() const noexcept { return keys_.empty() ? 0 : keys_.extent(1); }
  /// Number of valid keys n: slots [0, n) hold keys, the rest was never written.
  index_t size() const noexcept { return filled_; }
  /// Slot the next enqueued row goes to.
  index_t write_position() const noexcept { return write_pos_; }
  bool empty() const noexcept { return filled_ == 0; }
  bool full() const noexcept { return filled_ == capacity() && filled_ > 0; }

  /// The valid keys [n, D] (rows [0, n)).
  tensor_view<const T, 2, Space> valid_keys() const noexcept {
    const index_t ext[2] = {filled_, dim()};
    const index_t str[2] = {keys_.stride(0), keys_.stride(1)};
    return tensor_view<const T, 2, Space>(keys_.data(), ext, str);
  }

  /// Forget every key (storage untouched): size 0, write position 0.
  void clear() noexcept { filled_ = write_pos_ = 0; }

  /// Record that `rows` rows were enqueued (the enqueue entry points call this after writing;
  /// an engine that writes slots itself may call it too).
  void advance(index_t rows) noexcept {
    const index_t k = capacity();
    if (k == 0 || rows <= 0) return;
    write_pos_ = (write_pos_ + rows % k) % k;
    filled_ = rows >= k - filled_ ? k : filled_ + rows;
  }

  /// Set the state (used by load and init). Refused unless 0 <= n <= K, 0 <= p < K (p = 0 when
  /// K = 0) and p == n whenever the queue is not full (the invariant enqueue maintains).
  status restore_state(index_t write_pos, index_t filled) {
    const index_t k = capacity();
    const bool ok = filled >= 0 && filled <= k && write_pos >= 0 && (k == 0 ? write_pos == 0 : write_pos < k) &&
                    (filled == k || write_pos == filled);
    if (!ok)
      return fail(errc::invalid_argument, "sample_queue::restore_state",
                  "write position " + std::to_string(write_pos) + " and fill count " + std::to_string(filled) +
                      " are inconsistent for capacity " + std::to_string(k));
    write_pos_ = write_pos;
    filled_ = filled;
    return {};
  }

 private:
  tensor_view<T, 2, Space> keys_{};
  tensor_view<std::int64_t, 1, Space> ids_{};
  index_t write_pos_ = 0;
  index_t filled_ = 0;
};

/// A sample_queue that owns its host storage (std::vector). Move-only; `queue()` is the
/// non-owning queue every entry point takes.
template <class T>
class host_sample_queue {
 public:
  host_sample_queue() = default;
  host_sample_queue(index_t capacity, index_t dim, bool with_ids = false)
      : keys_(static_cast<std::size_t>(capacity * dim), T(0.0f)),
        ids_(with_ids ? static_cast<std::size_t>(capacity) : 0, no_sample_id) {
    queue_ = sample_queue<T, host_space>(make_view(keys_.data(), capacity, dim),
                                         with_ids ? make_view(ids_.data(), capacity) : host_view<std::int64_t, 1>{});
  }
  host_sample_queue(const host_sample_queue&) = delete;
  host_sample_queue& operator=(const host_sample_queue&) = delete;
  host_sample_queue(host_sample_queue&&) noexcept = default;  // vectors keep their buffers on move
  host_sample_queue& operator=(host_sample_queue&&) noexcept = default;

  sample_queue<T, host_space>& queue() noexcept { return queue_; }
  const sample_queue<T, host_space>& queue() const noexcept { return queue_; }

 private:
  std::vector<T> keys_;
  std::vector<std::int64_t> ids_;
  sample_queue<T, host_space> queue_;
};

/// Options of sample_queue_enqueue.
struct enqueue_options {
  bool normalize = true;        ///< store x / max(||x||, eps); false stores the rows as given
  float normalize_eps = 1e-12f; ///< eps of the normalisation (F.normalize's default)
};

/// Options of sample_queue_save: the file format, and testing hooks (production code leaves
/// those at their defaults).
struct queue_save_options {
  /// Simulate a crash or a full disk: stop after writing this many bytes of the temporary file
  /// and report io_error (-1 = never).
  std::int64_t fail_after_bytes = -1;
  /// On such a failure leave the temporary file behind, as a killed process would.
  bool keep_temp_on_failure = false;
  /// distill's format (above) or safetensors.
  file_format format = file_format::native;
};

namespace contrastive_detail {

template <class T, class Space>
status check_queue(const char* fn, const sample_queue<T, Space>& q, bool allow_absent) {
  if (q.keys().empty()) {
    if (allow_absent) return {};
    return fail(errc::invalid_argument, fn, "the queue has no key storage");
  }
  DISTILL_TRY(check_nonempty(fn, "queue keys", q.keys()));
  DISTILL_TRY(check_strides(fn, "queue keys", q.keys()));
  DISTILL_TRY(check_inner_contiguous(fn, "queue keys", q.keys()));
  if (q.keys().extent(0) > 1 && q.keys().stride(0) < q.keys().extent(1))
    return fail(errc::unsupported_layout, fn, "queue keys rows overlap (row stride < D)");
  if (q.has_ids()) {
    DISTILL_TRY(check_extent(fn, "queue ids", q.ids(), 0, q.capacity(), "queue capacity"));
    DISTILL_TRY(check_strides(fn, "queue ids", q.ids()));
  }
  return {};
}

/// Batch rows actually written by an enqueue of `rows` rows: [first, rows).
inline index_t first_surviving_row(index_t rows, index_t capacity) noexcept {
  return rows > capacity ? rows - capacity : 0;
}

template <class T>
constexpr std::uint32_t dtype_code() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return 1;
  else if constexpr (std::is_same_v<U, double>) return 2;
  else if constexpr (std::is_same_v<U, bfloat16>) return 3;
  else if constexpr (std::is_same_v<U, float16>) return 4;
#if DISTILL_CUDA_COMPILER
  else if constexpr (std::is_same_v<U, __nv_bfloat16>) return 3;
  else if constexpr (std::is_same_v<U, __half>) return 4;
#endif
  else return 0;
}

inline const char* dtype_code_name(std::uint32_t c) noexcept {
  switch (c) {
    case 1: return "f32";
    case 2: return "f64";
    case 3: return "bf16";
    case 4: return "f16";
    default: return "unknown";
  }
}

// ---- file format ----
inline constexpr char queue_file_magic[8] = {'D', 'S', 'T', 'L', 'Q', 'U', 'E', '1'};
inline constexpr std::uint32_t queue_file_version = 1;
inline constexpr std::size_t queue_file_header_bytes = 64;

struct queue_file_meta {
  std::uint32_t dtype = 0, elem_bytes = 0, flags = 0;
  std::uint64_t capacity = 0, dim = 0, write_pos = 0, filled = 0, payload_bytes = 0;
};

/// Payload bytes of a queue file (keys K x D x elem, then ids K x 8 when flagged); false when
/// the sizes, read from a file, overflow 64 bits.
inline bool queue_payload_bytes(const queue_file_meta& m, std::uint64_t& bytes) {
  std::uint64_t keys = 0, ids = 0;
  return checked_mul(m.capacity, m.dim, keys) && checked_mul(keys, m.elem_bytes, keys) &&
         checked_mul(m.capacity, (m.flags & 1u) ? 8 : 0, ids) && checked_add(keys, ids, bytes);
}

/// The whole file image (header + payload + checksum) for a queue whose keys and ids were
/// already gathered densely into `payload` (keys K x D x elem bytes, then ids K x 8).
inline std::vector<unsigned char> build_queue_file(const queue_file_meta& m, std::vector<unsigned char>&& payload) {
  std::vector<unsigned char> file(queue_file_header_bytes + payload.size() + 8, 0);  // zeros: the header's reserved bytes
  unsigned char* h = file.data();
  std::memcpy(h, queue_file_magic, 8);
  put_le32(h + 8, queue_file_version);
  put_le32(h + 12, m.dtype);
  put_le32(h + 16, m.elem_bytes);
  put_le32(h + 20, m.flags);
  put_le64(h + 24, m.capacity);
  put_le64(h + 32, m.dim);
  put_le64(h + 40, m.write_pos);
  put_le64(h + 48, m.filled);
  put_le64(h + 56, payload.size());
  if (!payload.empty()) std::memcpy(h + queue_file_header_bytes, payload.data(), payload.size());
  const std::uint64_t sum = fnv1a64::of({file.data(), queue_file_header_bytes + payload.size()});
  put_le64(file.data() + queue_file_header_bytes + payload.size(), sum);
  return file;
}

// ---- the same content as safetensors ----
inline const char* safetensors_dtype(std::uint32_t code) noexcept {
  switch (code) {
    case 1: return "F32";
    case 2: return "F64";
    case 3: return "BF16";
    case 4: return "F16";
    default: return "";
  }
}

/// A native queue image (as build_queue_file made it) as a safetensors image.
inline std::vector<unsigned char> queue_image_to_safetensors(std::span<const unsigned char> file) {
  const unsigned char* h = file.data();
  const std::uint32_t dtype = get_le32(h + 12), elem = get_le32(h + 16), flags = get_le32(h + 20);
  const std::uint64_t K = get_le64(h + 24), D = get_le64(h + 32);
  const std::size_t key_bytes = static_cast<std::size_t>(K * D * elem);
  std::vector<safetensors_tensor> tensors{
      {"keys", safetensors_dtype(dtype), {static_cast<index_t>(K), static_cast<index_t>(D)}, file.subspan(queue_file_header_bytes, key_bytes)}};
  if (flags & 1u)
    tensors.push_back({"ids", "I64", {static_cast<index_t>(K)}, file.subspan(queue_file_header_bytes + key_bytes, static_cast<std::size_t>(K * 8))});
  std::vector<unsigned char> image;
  const status st = safetensors_serialize(tensors,
                                          {{"distill.content", "sample_queue"},
                                           {"write_position", std::to_string(get_le64(h + 40))},
                                           {"fill_count", std::to_string(get_le64(h + 48))}},
                                          image);
  (void)st;  // sizes come from a valid queue
  return image;
}

/// A safetensors queue file as the native image, which parse_queue_file then checks against the
/// queue like any other.
inline status queue_image_from_safetensors(const char* fn, const std::string& where, std::span<const unsigned char> bytes,
                                           std::vector<unsigned char>& native) {
  const auto corrupt = [&](const std::string& what) { return fail(errc::corrupt_data, fn, "'" + where + "': " + what); };
  safetensors_file f;
  DISTILL_TRY(safetensors_parse(fn, bytes, f));
  const auto meta = [&](const char* key) -> const std::string* {
    const auto it = f.metadata.find(key);
    return it == f.metadata.end() ? nullptr : &it->second;
  };
  const auto number = [](const std::string* s, std::uint64_t& v) {
    if (!s || s->empty() || s->size() > 18) return false;  // decimal, below 10^18
    v = 0;
    for (const char c : *s) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return true;
  };
  const std::string* content = meta("distill.content");
  if (!content || *content != "sample_queue") return corrupt("not a sample-queue safetensors file (distill.content)");
  const safetensors_tensor* keys = f.find("keys");
  const safetensors_tensor* ids = f.find("ids");
  if (!keys || keys->shape.size() != 2) return corrupt("no 'keys' tensor of rank 2");
  if (f.tensors.size() != (ids ? 2u : 1u)) return corrupt("tensors other than 'keys' and 'ids'");
  queue_file_meta m;
  for (std::uint32_t c = 1; c <= 4; ++c)
    if (keys->dtype == safetensors_dtype(c)) m.dtype = c;
  if (m.dtype == 0) return corrupt("keys of dtype " + keys->dtype + " (queues hold F32, F64, BF16, F16)");
  m.elem_bytes = static_cast<std::uint32_t>(safetensors_detail::dtype_bytes(keys->dtype));
  m.capacity = static_cast<std::uint64_t>(keys->shape[0]);
  m.dim = static_cast<std::uint64_t>(keys->shape[1]);
  if (ids && (ids->dtype != "I64" || ids->shape.size() != 1 || ids->shape[0] != keys->shape[0]))
    return corrupt("'ids' must be I64 of shape [K]");
  m.flags = ids ? 1u : 0u;
  if (!number(meta("write_position"), m.write_pos) || !number(meta("fill_count"), m.filled))
    return corrupt("missing or malformed write_position / fill_count");
  std::vector<unsigned char> payload(keys->bytes.begin(), keys->bytes.end());  // sizes: checked by safetensors_parse
  if (ids) payload.insert(payload.end(), ids->bytes.begin(), ids->bytes.end());
  native = build_queue_file(m, std::move(payload));
  return {};
}

/// Header bytes a queue's safetensors file may add to its native size (its JSON is ~300 bytes).
inline constexpr std::uint64_t queue_safetensors_allowance = 4096;

/// Write a file image atomically (core/file_io.hpp), passing sample_queue_save's test hooks on.
inline status write_queue_file(const char* fn, const std::string& path, const std::vector<unsigned char>& file,
                               const queue_save_options& opt) {
  atomic_write_options w;
  if (opt.fail_after_bytes >= 0) w.fail_after_bytes = static_cast<std::uint64_t>(opt.fail_after_bytes);
  w.keep_temp_on_failure = opt.keep_temp_on_failure;
  return write_file_atomically(fn, path, file, w);
}

/// Check a file image against the queue it is loaded into (`where` names it in messages: the
/// path, or "image"); the keys (K x D x elem) follow the header, then the ids (K x 8) if present.
inline status parse_queue_file(const char* fn, const std::string& where, std::span<const unsigned char> file,
                               const queue_file_meta& expect, queue_file_meta& got) {
  const auto corrupt = [&](const std::string& what) { return fail(errc::corrupt_data, fn, "'" + where + "': " + what); };
  if (file.size() < queue_file_header_bytes + 8)
    return corrupt("truncated (" + std::to_string(file.size()) + " bytes, shorter than the header)");
  const unsigned char* h = file.data();
  if (std::memcmp(h, queue_file_magic, 8) != 0) return corrupt("not a distill sample-queue file (bad magic)");
  const std::uint32_t version = get_le32(h + 8);
  if (version != queue_file_version)
    return corrupt("unsupported version " + std::to_string(version) + " (this build reads version " +
                   std::to_string(queue_file_version) + ")");
  got.dtype = get_le32(h + 12);
  got.elem_bytes = get_le32(h + 16);
  got.flags = get_le32(h + 20);
  got.capacity = get_le64(h + 24);
  got.dim = get_le64(h + 32);
  got.write_pos = get_le64(h + 40);
  got.filled = get_le64(h + 48);
  got.payload_bytes = get_le64(h + 56);
  if (got.payload_bytes != file.size() - queue_file_header_bytes - 8)
    return corrupt("truncated or padded: the header announces " + std::to_string(got.payload_bytes) +
                   " payload bytes, the file holds " + std::to_string(file.size() - queue_file_header_bytes - 8));
  const std::uint64_t stored = get_le64(file.data() + file.size() - 8);
  if (fnv1a64::of({file.data(), file.size() - 8}) != stored) return corrupt("checksum mismatch (the file is corrupt)");
  // The file is intact; now check it fits this queue.
  if (got.dtype != expect.dtype || got.elem_bytes != expect.elem_bytes)
    return corrupt(std::string("holds ") + dtype_code_name(got.dtype) + " keys but the queue stores " +
                   dtype_code_name(expect.dtype));
  if (got.capacity != expect.capacity || got.dim != expect.dim)
    return corrupt("holds a queue of K = " + std::to_string(got.capacity) + ", D = " + std::to_string(got.dim) +
                   " but the queue has K = " + std::to_string(expect.capacity) + ", D = " + std::to_string(expect.dim));
  if ((got.flags & 1u) != (expect.flags & 1u))
    return corrupt(std::string("ids ") + ((got.flags & 1u) ? "present in the file but the queue has no id storage"
                                                            : "absent from the file but the queue has id storage"));
  if ((got.flags & ~1u) != 0) return corrupt("unknown flags " + std::to_string(got.flags));
  std::uint64_t want = 0;
  if (!queue_payload_bytes(got, want) || got.payload_bytes != want) return corrupt("payload size does not match K, D and the dtype");
  const bool state_ok = got.filled <= got.capacity && got.write_pos < std::max<std::uint64_t>(got.capacity, 1) &&
                        (got.filled == got.capacity || got.write_pos == got.filled);
  if (!state_ok) return corrupt("inconsistent write position / fill count");
  return {};
}

/// Read the file at `path` meant for a queue like `expect` (a regular file of the size its K, D,
/// dtype and ids give, plus the safetensors header allowance; larger files refused unread) and
/// check it (parse_queue_file), converting a safetensors file to the native image first.
inline status read_queue_file(const char* fn, const std::string& path, const queue_file_meta& expect, std::vector<unsigned char>& file,
                              queue_file_meta& got) {
  std::uint64_t payload = 0, size = 0;
  if (!queue_payload_bytes(expect, payload) || !checked_add(payload, queue_file_header_bytes + 8 + queue_safetensors_allowance, size))
    return fail(errc::invalid_argument, fn, "the queue is too large to have a file");
  DISTILL_TRY(read_file(fn, path, file, size));
  if (is_safetensors(file)) {
    std::vector<unsigned char> native;
    DISTILL_TRY(queue_image_from_safetensors(fn, path, file, native));
    file.swap(native);
  }
  return parse_queue_file(fn, path, file, expect, got);
}

template <class T, class Space>
queue_file_meta meta_of(const sample_queue<T, Space>& q) {
  queue_file_meta m;
  m.dtype = dtype_code<T>();
  m.elem_bytes = sizeof(T);
  m.flags = q.has_ids() ? 1u : 0u;
  m.capacity = static_cast<std::uint64_t>(q.capacity());
  m.dim = static_cast<std::uint64_t>(q.dim());
  m.write_pos = static_cast<std::uint64_t>(q.write_position());
  m.filled = static_cast<std::uint64_t>(q.size());
  return m;
}

/// Copy a file image that parse_queue_file accepted for `queue` into it: keys, ids and state.
template <class T>
status restore_queue_image(std::span<const unsigned char> file, const queue_file_meta& got, sample_queue<T, host_space>& queue) {
  const index_t K = queue.capacity(), D = queue.dim();
  const std::size_t row_bytes = static_cast<std::size_t>(D) * sizeof(T);
  const unsigned char* payload = file.data() + queue_file_header_bytes;
  for (index_t j = 0; j < K; ++j) std::memcpy(queue.keys().row(j), payload + static_cast<std::size_t>(j) * row_bytes, row_bytes);
  if (queue.has_ids())
    for (index_t j = 0; j < K; ++j) {
      std::int64_t id;
      std::memcpy(&id, payload + static_cast<std::size_t>(K) * row_bytes + static_cast<std::size_t>(j) * 8, 8);
      queue.ids()(j) = id;
    }
  return queue.restore_state(static_cast<index_t>(got.write_pos), static_cast<index_t>(got.filled));
}

}  // namespace contrastive_detail

// ------------------------------------------------------------------------------------------
// CPU entry points.
// ------------------------------------------------------------------------------------------

/// Enqueue the rows of `keys` [B, D] (B >= 0, any B, e.g. keys all-gathered from every rank),
/// with optional `ids` [B] (required shape when given; absent ids store no_sample_id when the
/// queue has id storage). Normalises each row unless opt.normalize is false.
template <class T, class TK>
[[nodiscard]] status sample_queue_enqueue(const cpu& ctx, sample_queue<T, host_space>& queue, host_view<TK, 2> keys,
                                          host_view<const std::int64_t, 1> ids = {}, const enqueue_options& opt = {}) {
  static_assert(is_supported_float_v<TK>, "sample_queue_enqueue: keys must be float, double, float16 or bfloat16");
  constexpr const char* fn = "sample_queue_enqueue";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  const index_t B = keys.extent(0), D = queue.dim(), K = queue.capacity();
  if (B == 0) return {};
  DISTILL_TRY(check_present(fn, "keys", keys));
  DISTILL_TRY(check_strides(fn, "keys", keys));
  DISTILL_TRY(check_extent(fn, "keys", keys, 1, D, "queue dimension D"));
  if (!ids.empty()) {
    if (!queue.has_ids()) return fail(errc::invalid_argument, fn, "'ids' given but the queue has no id storage");
    DISTILL_TRY(check_extent(fn, "ids", ids, 0, B, "rows of 'keys'"));
    DISTILL_TRY(check_strides(fn, "ids", ids));
  }
  if (opt.normalize) DISTILL_TRY(check_positive(fn, "normalize_eps", opt.normalize_eps));
  using Acc = std::conditional_t<std::is_same_v<std::remove_cv_t<TK>, double> || std::is_same_v<T, double>, double, float>;
  const index_t first = contrastive_detail::first_surviving_row(B, K);
  const index_t pos = queue.write_position();
  parallel_for(
      ctx, B - first,
      [&](index_t b, index_t e) {
        for (index_t rr = b; rr < e; ++rr) {
          const index_t r = first + rr;
          const index_t slot = contrastive_detail::enqueue_slot(pos, r, K);
          Acc scale = Acc(1);
          if (opt.normalize) {
            Acc ss = 0;
            for (index_t d = 0; d < D; ++d) {
              const Acc x = load<Acc>(keys(r, d));
              ss += x * x;
            }
            scale = contrastive_detail::inverse_norm(ss, static_cast<Acc>(opt.normalize_eps));
          }
          T* dst = queue.keys().row(slot);
          for (index_t d = 0; d < D; ++d) dst[d] = store<T>(load<Acc>(keys(r, d)) * scale);
          if (queue.has_ids()) queue.ids()(slot) = ids.empty() ? no_sample_id : ids(r);
        }
      },
      64);
  queue.advance(B);
  return {};
}

/// MoCo initialisation: every slot gets N(0, 1) draws (a pure function of seed, slot and
/// column), normalised per row; ids become no_sample_id; the queue is full, write position 0.
template <class T>
[[nodiscard]] status sample_queue_init_random(const cpu& ctx, sample_queue<T, host_space>& queue, std::uint64_t seed) {
  constexpr const char* fn = "sample_queue_init_random";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  const index_t K = queue.capacity(), D = queue.dim();
  parallel_for(
      ctx, K,
      [&](index_t b, index_t e) {
        for (index_t j = b; j < e; ++j) {
          float ss = 0;
          T* row = queue.keys().row(j);
          for (index_t d = 0; d < D; ++d) {
            const float x = contrastive_detail::normal_draw(seed, static_cast<std::uint64_t>(j * D + d));
            ss += x * x;
          }
          const float scale = contrastive_detail::inverse_norm(ss, 1e-12f);
          for (index_t d = 0; d < D; ++d)
            row[d] = store<T>(contrastive_detail::normal_draw(seed, static_cast<std::uint64_t>(j * D + d)) * scale);
          if (queue.has_ids()) queue.ids()(j) = no_sample_id;
        }
      },
      64);
  return queue.restore_state(0, K);
}

/// The bytes sample_queue_save writes (header, keys, ids, state, checksum; or safetensors) in memory, e.g. to keep
/// the queue inside a training checkpoint with the model it belongs to.
template <class T>
[[nodiscard]] status sample_queue_serialize(const cpu& /*ctx*/, const sample_queue<T, host_space>& queue, std::vector<unsigned char>& image,
                                            file_format format = file_format::native) {
  static_assert(std::endian::native == std::endian::little, "sample_queue files are little-endian; big-endian hosts are not supported");
  DISTILL_TRY(contrastive_detail::check_queue("sample_queue_serialize", queue, false));
  const index_t K = queue.capacity(), D = queue.dim();
  const std::size_t row_bytes = static_cast<std::size_t>(D) * sizeof(T);
  std::vector<unsigned char> payload(static_cast<std::size_t>(K) * row_bytes + (queue.has_ids() ? static_cast<std::size_t>(K) * 8 : 0));
  for (index_t j = 0; j < K; ++j) std::memcpy(payload.data() + static_cast<std::size_t>(j) * row_bytes, queue.keys().row(j), row_bytes);
  if (queue.has_ids())
    for (index_t j = 0; j < K; ++j) {
      const std::int64_t id = queue.ids()(j);
      std::memcpy(payload.data() + static_cast<std::size_t>(K) * row_bytes + static_cast<std::size_t>(j) * 8, &id, 8);
    }
  image = contrastive_detail::build_queue_file(contrastive_detail::meta_of(queue), std::move(payload));
  if (format == file_format::safetensors) image = contrastive_detail::queue_image_to_safetensors(image);
  return {};
}

/// Restore `queue` from bytes made by sample_queue_serialize (or read from a queue file), with
/// sample_queue_load's checks; corrupt_data otherwise, and the queue is then unchanged.
template <class T>
[[nodiscard]] status sample_queue_deserialize(const cpu& /*ctx*/, sample_queue<T, host_space>& queue, std::span<const unsigned char> image) {
  constexpr const char* fn = "sample_queue_deserialize";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  std::vector<unsigned char> converted;
  if (is_safetensors(image)) {
    DISTILL_TRY(contrastive_detail::queue_image_from_safetensors(fn, "image", image, converted));
    image = converted;
  }
  contrastive_detail::queue_file_meta got;
  DISTILL_TRY(contrastive_detail::parse_queue_file(fn, "image", image, contrastive_detail::meta_of(queue), got));
  return contrastive_detail::restore_queue_image(image, got, queue);
}

/// Save keys, ids and state to `path` atomically (see the file comment for the format).
template <class T>
[[nodiscard]] status sample_queue_save(const cpu& ctx, const sample_queue<T, host_space>& queue, const std::string& path,
                                       const queue_save_options& opt = {}) {
  constexpr const char* fn = "sample_queue_save";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  std::vector<unsigned char> file;
  DISTILL_TRY(sample_queue_serialize(ctx, queue, file, opt.format));
  return contrastive_detail::write_queue_file(fn, path, file, opt);
}

/// Load a file written by sample_queue_save into `queue` (same dtype, K, D and ids presence).
/// Refused with corrupt_data (bad magic/version, truncated, larger than this queue's file,
/// checksum, mismatch) or io_error (cannot open/read, not a regular file); the queue is
/// unchanged unless the call succeeds.
template <class T>
[[nodiscard]] status sample_queue_load(const cpu& /*ctx*/, sample_queue<T, host_space>& queue, const std::string& path) {
  constexpr const char* fn = "sample_queue_load";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  std::vector<unsigned char> file;
  contrastive_detail::queue_file_meta got;
  DISTILL_TRY(contrastive_detail::read_queue_file(fn, path, contrastive_detail::meta_of(queue), file, got));
  return contrastive_detail::restore_queue_image(file, got, queue);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/sample_queue.cuh"
#endif
