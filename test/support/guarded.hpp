// SPDX-License-Identifier: MIT
#pragma once
// An output buffer with canary bands before and after it: a primitive that writes outside its
// view (or into row padding) changes a canary and `intact()` fails.
//   guarded<float> g(N * ld);  auto v = make_strided_view(g.data(), {N, C}, {ld, 1});
//   ...call...;  CHECK(g.intact());  CHECK(g.padding_intact(N, C, ld));

#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include "distill/core/dtype.hpp"

namespace distill_test {

template <class T>
class guarded {
 public:
  static constexpr std::size_t band = 64;
  explicit guarded(std::size_t n) : buf_(n + 2 * band), n_(n) {
    for (auto& x : buf_) x = canary();
  }
  T* data() { return buf_.data() + band; }
  const T* data() const { return buf_.data() + band; }
  std::size_t size() const { return n_; }
  std::vector<T> contents() const { return std::vector<T>(data(), data() + n_); }
  /// Canary bands before and after the buffer untouched.
  bool intact() const {
    for (std::size_t i = 0; i < band; ++i)
      if (!same(buf_[i]) || !same(buf_[band + n_ + i])) return false;
    return true;
  }
  /// For a (rows, cols) matrix with row stride ld: columns cols..ld-1 untouched.
  bool padding_intact(std::size_t rows, std::size_t cols, std::size_t ld) const {
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = cols; c < ld; ++c)
        if (r * ld + c < n_ && !same(data()[r * ld + c])) return false;
    return true;
  }
  static T canary() {
    if constexpr (std::is_same_v<T, std::byte>) return std::byte{0xA5};
    else if constexpr (std::is_integral_v<T>) return static_cast<T>(-91);
    else if constexpr (std::is_floating_point_v<T>) return static_cast<T>(-12345.678);
    else return distill::store<T>(-12345.0f);  // float16, bfloat16
  }
  static bool is_canary(const T& x) { return same(x); }

 private:
  static bool same(const T& x) {
    const T c = canary();
    return std::memcmp(&x, &c, sizeof(T)) == 0;
  }
  std::vector<T> buf_;
  std::size_t n_;
};

}  // namespace distill_test
