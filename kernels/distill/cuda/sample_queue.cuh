// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA paths of the sample queue (include/distill/contrastive/sample_queue.hpp): enqueue and
//! random initialisation kernels, save/load through a host staging copy, and the owning
//! `cuda_sample_queue` (the only type of the family that allocates device memory).
//! nvcc only; included by the header above.

#if !defined(__CUDACC__)
#error "distill/cuda/sample_queue.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <utility>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill {

namespace cuda_detail {

// One warp per written row: sum of squares over D (lanes stride D, coalesced), warp_sum, then
// the scaled copy into slot (pos + r) mod K. Rows written by one launch land in distinct slots
// (only the newest min(B, K) rows are written), so no two warps touch the same slot.
template <class T, class TK>
__global__ void sample_queue_enqueue_warp_per_row_kernel(T* __restrict__ keys, index_t keys_ld, std::int64_t* __restrict__ qids,
                                                         index_t qids_stride, const TK* __restrict__ src, index_t src_ld,
                                                         const std::int64_t* __restrict__ ids, index_t ids_stride,
                                                         index_t first, index_t rows, index_t pos, index_t capacity, index_t dim,
                                                         bool normalize, float eps) {
  const index_t warp = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const index_t r = first + warp;
  if (r >= rows) return;  // whole warp exits together
  const TK* in = src + r * src_ld;
  float scale = 1.0f;
  if (normalize) {
    float ss = 0.0f;
    for (index_t d = lane; d < dim; d += 32) {
      const float x = load<float>(in[d]);
      ss += x * x;
    }
    ss = warp_sum(ss);
    scale = contrastive_detail::inverse_norm(ss, eps);
  }
  const index_t slot = contrastive_detail::enqueue_slot(pos, r, capacity);
  T* out = keys + slot * keys_ld;
  for (index_t d = lane; d < dim; d += 32) out[d] = store<T>(load<float>(in[d]) * scale);
  if (qids != nullptr && lane == 0) qids[slot * qids_stride] = ids != nullptr ? ids[r * ids_stride] : no_sample_id;
}

// One warp per slot: the same counter-based draws as the CPU path, written raw, then rescaled
// by the row's inverse norm (each lane rescales only the elements it wrote).
template <class T>
__global__ void sample_queue_init_random_warp_per_row_kernel(T* __restrict__ keys, index_t keys_ld, std::int64_t* __restrict__ qids,
                                                             index_t qids_stride, index_t capacity, index_t dim,
                                                             std::uint64_t seed) {
  const index_t j = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (j >= capacity) return;
  float ss = 0.0f;
  for (index_t d = lane; d < dim; d += 32) {
    const float x = contrastive_detail::normal_draw(seed, static_cast<std::uint64_t>(j * dim + d));
    ss += x * x;
  }
  ss = warp_sum(ss);
  const float scale = contrastive_detail::inverse_norm(ss, 1e-12f);
  T* out = keys + j * keys_ld;
  for (index_t d = lane; d < dim; d += 32)
    out[d] = store<T>(contrastive_detail::normal_draw(seed, static_cast<std::uint64_t>(j * dim + d)) * scale);
  if (qids != nullptr && lane == 0) qids[j * qids_stride] = no_sample_id;
}

template <class T>
status check_device_queue(const char* fn, const sample_queue<T, cuda_space>& q, bool allow_absent) {
  DISTILL_TRY(contrastive_detail::check_queue(fn, q, allow_absent));
  DISTILL_TRY(check_device_view(fn, "queue keys", q.keys()));
  DISTILL_TRY(check_device_view(fn, "queue ids", q.ids()));
  return {};
}

}  // namespace cuda_detail

/// Enqueue on the device (asynchronous on ctx.stream; see the CPU overload for the semantics).
/// `keys` needs unit stride along D.
template <class T, class TK>
[[nodiscard]] status sample_queue_enqueue(const cuda& ctx, sample_queue<T, cuda_space>& queue, cuda_view<TK, 2> keys,
                                          cuda_view<const std::int64_t, 1> ids = {}, const enqueue_options& opt = {}) {
  static_assert(is_supported_float_v<TK> && !std::is_same_v<std::remove_cv_t<TK>, double>,
                "sample_queue_enqueue (CUDA): keys must be float, float16 or bfloat16");
  static_assert(!std::is_same_v<T, double>, "sample_queue (CUDA): double keys are not supported on the device");
  constexpr const char* fn = "sample_queue_enqueue";
  DISTILL_TRY(cuda_detail::check_device_queue(fn, queue, false));
  const index_t B = keys.extent(0), D = queue.dim(), K = queue.capacity();
  if (B == 0) return {};
  DISTILL_TRY(check_present(fn, "keys", keys));
  DISTILL_TRY(check_strides(fn, "keys", keys));
  DISTILL_TRY(check_inner_contiguous(fn, "keys", keys));
  DISTILL_TRY(check_extent(fn, "keys", keys, 1, D, "queue dimension D"));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "keys", keys));
  if (!ids.empty()) {
    if (!queue.has_ids()) return fail(errc::invalid_argument, fn, "'ids' given but the queue has no id storage");
    DISTILL_TRY(check_extent(fn, "ids", ids, 0, B, "rows of 'keys'"));
    DISTILL_TRY(check_strides(fn, "ids", ids));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "ids", ids));
  }
  if (opt.normalize) DISTILL_TRY(check_positive(fn, "normalize_eps", opt.normalize_eps));
  const index_t first = contrastive_detail::first_surviving_row(B, K);
  const index_t rows = B - first;
  constexpr int block = 256;
  const index_t grid = cuda_detail::ceil_div<index_t>(rows, block / 32);
  cuda_detail::sample_queue_enqueue_warp_per_row_kernel<T, std::remove_const_t<TK>>
      <<<static_cast<unsigned>(grid), block, 0, cuda_detail::stream_of(ctx)>>>(
          queue.keys().data(), queue.keys().stride(0), queue.has_ids() ? queue.ids().data() : nullptr,
          queue.has_ids() ? queue.ids().stride(0) : 0, keys.data(), keys.stride(0), ids.empty() ? nullptr : ids.data(),
          ids.empty() ? 0 : ids.stride(0), first, B, queue.write_position(), K, D, opt.normalize, opt.normalize_eps);
  DISTILL_TRY(cuda_detail::launch_status(fn, cuda_detail::stream_of(ctx)));
  queue.advance(B);
  return {};
}

/// MoCo initialisation on the device; the same keys as the CPU overload for the same seed.
template <class T>
[[nodiscard]] status sample_queue_init_random(const cuda& ctx, sample_queue<T, cuda_space>& queue, std::uint64_t seed) {
  constexpr const char* fn = "sample_queue_init_random";
  DISTILL_TRY(cuda_detail::check_device_queue(fn, queue, false));
  const index_t K = queue.capacity(), D = queue.dim();
  constexpr int block = 256;
  const index_t grid = cuda_detail::ceil_div<index_t>(K, block / 32);
  cuda_detail::sample_queue_init_random_warp_per_row_kernel<T><<<static_cast<unsigned>(grid), block, 0, cuda_detail::stream_of(ctx)>>>(
      queue.keys().data(), queue.keys().stride(0), queue.has_ids() ? queue.ids().data() : nullptr,
      queue.has_ids() ? queue.ids().stride(0) : 0, K, D, seed);
  DISTILL_TRY(cuda_detail::launch_status(fn, cuda_detail::stream_of(ctx)));
  return queue.restore_state(0, K);
}

/// The queue's file image in host memory (see the CPU overload): copies keys and ids to the host
/// on ctx.stream and synchronises it.
template <class T>
[[nodiscard]] status sample_queue_serialize(const cuda& ctx, const sample_queue<T, cuda_space>& queue, std::vector<unsigned char>& image) {
  constexpr const char* fn = "sample_queue_serialize";
  DISTILL_TRY(cuda_detail::check_device_queue(fn, queue, false));
  const index_t K = queue.capacity(), D = queue.dim();
  const std::size_t row_bytes = static_cast<std::size_t>(D) * sizeof(T);
  const std::size_t key_bytes = static_cast<std::size_t>(K) * row_bytes;
  std::vector<unsigned char> payload(key_bytes + (queue.has_ids() ? static_cast<std::size_t>(K) * 8 : 0));
  const cudaStream_t s = cuda_detail::stream_of(ctx);
  DISTILL_CUDA_TRY(cudaMemcpy2DAsync(payload.data(), row_bytes, queue.keys().data(),
                                     static_cast<std::size_t>(queue.keys().stride(0)) * sizeof(T), row_bytes,
                                     static_cast<std::size_t>(K), cudaMemcpyDeviceToHost, s));
  if (queue.has_ids())
    DISTILL_CUDA_TRY(cudaMemcpy2DAsync(payload.data() + key_bytes, 8, queue.ids().data(),
                                       static_cast<std::size_t>(queue.ids().stride(0)) * 8, 8, static_cast<std::size_t>(K),
                                       cudaMemcpyDeviceToHost, s));
  DISTILL_CUDA_TRY(cudaStreamSynchronize(s));
  image = contrastive_detail::build_queue_file(contrastive_detail::meta_of(queue), std::move(payload));
  return {};
}

namespace cuda_detail {
/// Copy a checked image (parse_queue_file accepted it for `queue`) into the device queue on
/// ctx.stream and synchronise (the image must outlive the copies).
template <class T>
status upload_queue_image(const char* fn, const cuda& ctx, std::span<const unsigned char> image,
                          const contrastive_detail::queue_file_meta& got, sample_queue<T, cuda_space>& queue) {
  const index_t K = queue.capacity(), D = queue.dim();
  const std::size_t row_bytes = static_cast<std::size_t>(D) * sizeof(T);
  const std::size_t key_bytes = static_cast<std::size_t>(K) * row_bytes;
  const unsigned char* payload = image.data() + contrastive_detail::queue_file_header_bytes;
  const cudaStream_t s = stream_of(ctx);
  DISTILL_CUDA_TRY(cudaMemcpy2DAsync(queue.keys().data(), static_cast<std::size_t>(queue.keys().stride(0)) * sizeof(T), payload,
                                     row_bytes, row_bytes, static_cast<std::size_t>(K), cudaMemcpyHostToDevice, s));
  if (queue.has_ids())
    DISTILL_CUDA_TRY(cudaMemcpy2DAsync(queue.ids().data(), static_cast<std::size_t>(queue.ids().stride(0)) * 8, payload + key_bytes, 8,
                                       8, static_cast<std::size_t>(K), cudaMemcpyHostToDevice, s));
  DISTILL_CUDA_TRY(cudaStreamSynchronize(s));
  return queue.restore_state(static_cast<index_t>(got.write_pos), static_cast<index_t>(got.filled));
}
}  // namespace cuda_detail

/// Restore a device queue from a file image in host memory (checked on the host first, then
/// copied on ctx.stream, which is synchronised). Unchanged on failure.
template <class T>
[[nodiscard]] status sample_queue_deserialize(const cuda& ctx, sample_queue<T, cuda_space>& queue, std::span<const unsigned char> image) {
  constexpr const char* fn = "sample_queue_deserialize";
  DISTILL_TRY(cuda_detail::check_device_queue(fn, queue, false));
  contrastive_detail::queue_file_meta got;
  DISTILL_TRY(contrastive_detail::parse_queue_file(fn, "image", image, contrastive_detail::meta_of(queue), got));
  return cuda_detail::upload_queue_image(fn, ctx, image, got, queue);
}

/// Save a device queue: its image (sample_queue_serialize), then the file written atomically.
template <class T>
[[nodiscard]] status sample_queue_save(const cuda& ctx, const sample_queue<T, cuda_space>& queue, const std::string& path,
                                       const queue_save_options& opt = {}) {
  constexpr const char* fn = "sample_queue_save";
  DISTILL_TRY(cuda_detail::check_device_queue(fn, queue, false));
  std::vector<unsigned char> file;
  DISTILL_TRY(sample_queue_serialize(ctx, queue, file));
  return contrastive_detail::write_queue_file(fn, path, file, opt);
}

/// Load into a device queue (the file is read and checked on the host first, then copied on
/// ctx.stream, which is synchronised before returning). Unchanged on failure.
template <class T>
[[nodiscard]] status sample_queue_load(const cuda& ctx, sample_queue<T, cuda_space>& queue, const std::string& path) {
  constexpr const char* fn = "sample_queue_load";
  DISTILL_TRY(cuda_detail::check_device_queue(fn, queue, false));
  std::vector<unsigned char> file;
  contrastive_detail::queue_file_meta got;
  DISTILL_TRY(contrastive_detail::read_queue_file(fn, path, contrastive_detail::meta_of(queue), file, got));
  return cuda_detail::upload_queue_image(fn, ctx, file, got, queue);
}

/// A sample_queue that owns zero-initialised device storage (cudaMalloc/cudaFree, RAII,
/// move-only). Allocation is the only thing it adds; every entry point takes `queue()`.
template <class T>
class cuda_sample_queue {
 public:
  cuda_sample_queue() = default;
  /// Allocate K x D zeroed keys (dense rows) and, when asked, K ids set to no_sample_id.
  /// Synchronous: it returns once the storage is zeroed, so work on any stream (a non-blocking
  /// one included, which does not wait for the default stream) sees the zeros. Call it at
  /// setup, not inside a captured step.
  static status create(index_t capacity, index_t dim, bool with_ids, cuda_sample_queue& out) {
    constexpr const char* fn = "cuda_sample_queue::create";
    if (capacity <= 0 || dim <= 0)
      return fail(errc::invalid_argument, fn,
                  "capacity and dim must be > 0, got " + std::to_string(capacity) + " x " + std::to_string(dim));
    cuda_sample_queue q;
    const std::size_t key_bytes = static_cast<std::size_t>(capacity * dim) * sizeof(T);
    DISTILL_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&q.keys_), key_bytes));
    DISTILL_CUDA_TRY(cudaMemsetAsync(q.keys_, 0, key_bytes, nullptr));
    if (with_ids) {
      DISTILL_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&q.ids_), static_cast<std::size_t>(capacity) * 8));
      DISTILL_CUDA_TRY(cudaMemsetAsync(q.ids_, 0xff, static_cast<std::size_t>(capacity) * 8, nullptr));  // 0xff.. = -1 = no_sample_id
    }
    // cudaMemset is asynchronous on the default stream, which a non-blocking stream does not
    // wait for: finish the zeroing before anyone can enqueue
    DISTILL_CUDA_TRY(cudaStreamSynchronize(nullptr));
    q.queue_ = sample_queue<T, cuda_space>(make_view<cuda_space>(q.keys_, capacity, dim),
                                           with_ids ? make_view<cuda_space>(q.ids_, capacity) : cuda_view<std::int64_t, 1>{});
    out = std::move(q);
    return {};
  }
  cuda_sample_queue(const cuda_sample_queue&) = delete;
  cuda_sample_queue& operator=(const cuda_sample_queue&) = delete;
  cuda_sample_queue(cuda_sample_queue&& o) noexcept { swap(o); }
  cuda_sample_queue& operator=(cuda_sample_queue&& o) noexcept {
    swap(o);
    return *this;
  }
  ~cuda_sample_queue() {
    if (keys_) cudaFree(keys_);
    if (ids_) cudaFree(ids_);
  }

  sample_queue<T, cuda_space>& queue() noexcept { return queue_; }
  const sample_queue<T, cuda_space>& queue() const noexcept { return queue_; }

 private:
  void swap(cuda_sample_queue& o) noexcept {
    std::swap(keys_, o.keys_);
    std::swap(ids_, o.ids_);
    std::swap(queue_, o.queue_);
  }
  T* keys_ = nullptr;
  std::int64_t* ids_ = nullptr;
  sample_queue<T, cuda_space> queue_;
};

}  // namespace distill
