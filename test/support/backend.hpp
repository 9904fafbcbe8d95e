// SPDX-License-Identifier: MIT
#pragma once
// The backend a test case runs on, in the manner of Kokkos' unit tests: a case is a template over
// the memory space, written once; the family's test_*.cpp instantiates it with host_space (run
// here, always) and its test_*_cuda.cu with cuda_space (support/backend_cuda.cuh; compiled by
// nvcc, run where a GPU is lent).
//
//   using B = backend<Space>;
//   typename B::session run;                          // the context (CUDA: a non-blocking stream)
//   guarded_tensor<float, 2, Space> x({N, C}, {3});   // padded rows, canaries around and inside
//   x.set(values);                                    // logical row-major doubles, rounded to T
//   workspace<Space> ws(foo_workspace_size(run.ctx, N));   // filled with 0xff: never zeroed
//   REQUIRE(foo_forward(run.ctx, x.view<const float>(), ..., ws.view()).ok());
//   run.sync();
//   CHECK(x.intact());  CHECK_CLOSE("out", out.get(), want, tol);
//
// Every buffer lives in the space's memory with canary bands before and after it; on a device
// backend its host image (support/guarded.hpp) is copied there and back, bands and padding
// included, so one check covers both.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/tensor_view.hpp"
#include "support/guarded.hpp"

namespace distill_test {

using distill::index_t;

template <class Space>
struct backend;

/// How a space's memory is allocated and copied (the host needs nothing: the image is the memory).
template <class Space>
struct space_memory {
  static constexpr bool separate = false;
};

template <>
struct backend<distill::host_space> {
  using space = distill::host_space;
  using context = distill::cpu;
  static constexpr const char* name = "cpu";
  struct session {
    context ctx;
    explicit session(int threads = 2) : ctx{threads} {}
    void sync() const {}
    /// f() as it would run inside a captured CUDA graph (on the CPU: just f()).
    template <class F>
    auto captured(F&& f) const {
      return f();
    }
  };
};

/// `n` values of T with canary bands, in Space's memory (see the file comment).
template <class T, class Space>
class mirrored_buffer {
  using mem = space_memory<Space>;
  static constexpr std::size_t band = guarded<T>::band;

 public:
  explicit mirrored_buffer(std::size_t n) : image_(n) {
    if constexpr (mem::separate) {
      dev_ = static_cast<T*>(mem::allocate((n + 2 * band) * sizeof(T)));
      upload();
    }
  }
  mirrored_buffer(const mirrored_buffer&) = delete;
  mirrored_buffer& operator=(const mirrored_buffer&) = delete;
  mirrored_buffer(mirrored_buffer&& o) noexcept : image_(std::move(o.image_)), dev_(std::exchange(o.dev_, nullptr)) {}
  ~mirrored_buffer() {
    if constexpr (mem::separate)
      if (dev_) mem::release(dev_);
  }

  /// Pointer to the first value in Space's memory.
  T* data() {
    if constexpr (mem::separate) return dev_ + band;
    else return image_.data();
  }
  std::size_t size() const { return image_.size(); }
  /// The host image (values and bands); upload() after changing it, download() before reading.
  guarded<T>& image() { return image_; }
  void upload() {
    if constexpr (mem::separate) mem::to_device(dev_, image_.data() - band, (image_.size() + 2 * band) * sizeof(T));
  }
  void download() {
    if constexpr (mem::separate) mem::to_host(image_.data() - band, dev_, (image_.size() + 2 * band) * sizeof(T));
  }

 private:
  guarded<T> image_;
  T* dev_ = nullptr;
};

/// A rank-R tensor of T in Space's memory with padded strides: stride(R-1) = inner, stride(d) =
/// extent(d+1) stride(d+1) + pad[d]; for R = 2 column_major swaps the roles (unit stride down
/// the columns). Canary bands around it and canaries in every padding element.
template <class T, int R, class Space = distill::host_space>
class guarded_tensor {
 public:
  explicit guarded_tensor(std::array<index_t, R> extents, std::array<index_t, R> pad = {}, index_t inner = 1,
                          bool column_major = false)
      : ext_(extents), str_(strides_of(extents, pad, inner, column_major)), buf_(span_of(ext_, str_)) {
    used_.assign(buf_.size(), false);
    for_each([&](std::size_t, std::size_t off) { used_[off] = true; });
  }

  std::size_t size() const {
    std::size_t n = 1;
    for (index_t e : ext_) n *= static_cast<std::size_t>(e);
    return n;
  }
  const std::array<index_t, R>& extents() const { return ext_; }
  const std::array<index_t, R>& strides() const { return str_; }

  /// Logical row-major values, rounded to T, into the tensor (padding keeps its canaries).
  void set(const std::vector<double>& v) {
    for_each([&](std::size_t i, std::size_t off) { buf_.image().data()[off] = from_double(v[i]); });
    buf_.upload();
  }
  void fill(double x) { set(std::vector<double>(size(), x)); }
  /// The values as the tensor holds them, logical row-major.
  std::vector<double> get() {
    buf_.download();
    std::vector<double> out(size());
    for_each([&](std::size_t i, std::size_t off) { out[i] = as_double(buf_.image().data()[off]); });
    return out;
  }
  /// Canary bands and every padding element untouched.
  bool intact() {
    buf_.download();
    if (!buf_.image().intact()) return false;
    for (std::size_t off = 0; off < used_.size(); ++off)
      if (!used_[off] && !guarded<T>::is_canary(buf_.image().data()[off])) return false;
    return true;
  }
  template <class U = T>
  distill::tensor_view<U, R, Space> view() {
    return distill::make_strided_view<Space>(static_cast<U*>(buf_.data()), ext_, str_);
  }
  T* data() { return buf_.data(); }

  static T from_double(double x) {
    if constexpr (std::is_integral_v<T> || std::is_same_v<T, double>) return static_cast<T>(x);
    else return distill::store<T>(x);
  }
  static double as_double(const T& x) {
    if constexpr (std::is_same_v<T, double>) return x;
    else if constexpr (std::is_integral_v<T>) return static_cast<double>(x);
    else return static_cast<double>(distill::load<float>(x));
  }

 private:
  static std::array<index_t, R> strides_of(const std::array<index_t, R>& e, const std::array<index_t, R>& pad, index_t inner,
                                           bool column_major) {
    std::array<index_t, R> s{};
    if (column_major && R == 2) {
      s[0] = inner;
      s[R - 1] = e[0] * inner + pad[0];
      return s;
    }
    s[R - 1] = inner;
    for (int d = R - 2; d >= 0; --d) s[d] = e[d + 1] * s[d + 1] + pad[d];
    return s;
  }
  static std::size_t span_of(const std::array<index_t, R>& e, const std::array<index_t, R>& s) {
    std::size_t last = 0;
    for (int d = 0; d < R; ++d) {
      if (e[d] == 0) return 0;
      last += static_cast<std::size_t>((e[d] - 1) * s[d]);
    }
    return last + 1;
  }
  /// f(logical row-major index, storage offset) for every element.
  template <class F>
  void for_each(F&& f) const {
    const std::size_t n = size();
    std::array<index_t, R> idx{};
    for (std::size_t i = 0; i < n; ++i) {
      std::size_t off = 0;
      for (int d = 0; d < R; ++d) off += static_cast<std::size_t>(idx[d] * str_[d]);
      f(i, off);
      for (int d = R - 1; d >= 0; --d) {
        if (++idx[d] < ext_[d]) break;
        idx[d] = 0;
      }
    }
  }

  std::array<index_t, R> ext_, str_;
  mirrored_buffer<T, Space> buf_;
  std::vector<bool> used_;
};

/// Scratch for a primitive: filled with 0xff bytes (no entry point may rely on zeroed scratch),
/// canary bands around it; an empty view when `bytes` is 0. The base is 16-byte aligned.
template <class Space>
class workspace {
 public:
  explicit workspace(std::size_t bytes) : buf_(bytes) {
    std::fill_n(buf_.image().data(), buf_.size(), std::byte{0xff});  // (memset: a GCC 12 -Wstringop-overflow false positive)
    buf_.upload();
  }
  distill::tensor_view<std::byte, 1, Space> view() {
    if (buf_.size() == 0) return {};
    return distill::make_view<Space>(buf_.data(), static_cast<index_t>(buf_.size()));
  }
  bool intact() {
    buf_.download();
    return buf_.image().intact();
  }

 private:
  mirrored_buffer<std::byte, Space> buf_;
};

/// A plain array of T in Space's memory (labels, masks, ids, scalars), uploaded from `values`.
template <class T, class Space>
class guarded_array : public guarded_tensor<T, 1, Space> {
 public:
  explicit guarded_array(std::size_t n) : guarded_tensor<T, 1, Space>({static_cast<index_t>(n)}) {}
  explicit guarded_array(const std::vector<T>& values) : guarded_array(values.size()) { put(values); }
  void put(const std::vector<T>& values) {
    std::vector<double> d(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) d[i] = guarded_tensor<T, 1, Space>::as_double(values[i]);
    this->set(d);
  }
};

}  // namespace distill_test
