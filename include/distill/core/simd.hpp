// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Portable SIMD for the CPU paths: xsimd batches of the widest instruction set the translation
//! unit is compiled for, so every vectorised loop is written once for all widths:
//!
//!   -march=x86-64 / x86-64-v2   SSE2 / SSE4.2,  4 floats a batch
//!   -march=x86-64-v3            AVX2 + FMA,     8 floats
//!   -march=x86-64-v4 / native   AVX-512,       16 floats (on CPUs that have it)
//!   aarch64                     NEON,           4 floats
//!
//!   for (index_t k = 0; k + simd::width<float> <= n; k += simd::width<float>)
//!     acc += simd::load<float>(x + k);
//!   if (k < n) acc += simd::load_partial<float>(x + k, n - k, 0.0f);   // the ragged end
//!   const float total = simd::reduce_sum(acc);
//!
//! What xsimd 8.1 (Debian 12) lacks is here: loads and stores that convert from and to the
//! storage types (float16, bfloat16, float into double), partial loads and stores of the
//! ragged end, non-temporal stores (x86 only; a plain store elsewhere), and `reduce_max`.
//! Reductions run in a fixed order, so a result depends on the instruction set but never on
//! timing or on the thread count. docs/design.md explains why xsimd (and not Highway or SLEEF).

#include <bit>
#include <cstdint>
#include <type_traits>

// GCC 12's AVX-512 intrinsics (_mm512_max_ps, ...) warn "used uninitialized" about their own
// _mm512_undefined_* operands once inlined (GCC bug 105593, fixed in GCC 13); the warning is
// attributed to the header lines, so it is silenced where the headers are first read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include "distill/core/config.hpp"
#include "distill/core/dtype.hpp"

/// For lambdas that hold a loop body: they must inline for the loop to stay in registers, and
/// GCC does not always do it by itself (`[&](...) DISTILL_INLINE_LAMBDA { ... }`).
#if defined(__GNUC__)
#define DISTILL_INLINE_LAMBDA __attribute__((always_inline))
#else
#define DISTILL_INLINE_LAMBDA
#endif

namespace distill::simd {

/// The instruction set xsimd picked for this translation unit (its best compiled-in one).
using arch = xsimd::default_arch;

/// A batch of `width<T>` values of T (float or double).
template <class T>
using batch = xsimd::batch<T, arch>;
template <class T>
using batch_mask = xsimd::batch_bool<T, arch>;

/// Lanes of a batch of T.
template <class T>
inline constexpr int width = static_cast<int>(batch<T>::size);

/// Name of the instruction set this code was compiled for ("avx512bw", "fma3+avx2", "sse2",
/// "arm64+neon", ...), for benchmark and test reports.
constexpr const char* instruction_set() noexcept { return arch::name(); }

/// float for float and batch<float>; the element type behind a value that may be either.
template <class V>
struct scalar_of {
  using type = V;
};
template <class T, class A>
struct scalar_of<xsimd::batch<T, A>> {
  using type = T;
};
template <class V>
using scalar_t = typename scalar_of<V>::type;

/// `c ? a : b` lane by lane, for a float, a double or a batch (`c` a bool or a batch mask), in
/// host and device code alike (the per-class math of the losses is shared with the CUDA
/// kernels). Scalars on the host blend bit patterns: GCC turns a float select whose arms hold
/// trapping operations back into a branch, and a loop with a branch is not auto-vectorised.
template <class C, class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V select(const C& c, const V& a, const V& b) noexcept {
#if defined(__CUDA_ARCH__)
  return c ? a : b;
#else
  if constexpr (std::is_floating_point_v<V>) {
    using U = std::conditional_t<sizeof(V) == 4, std::uint32_t, std::uint64_t>;
    const U m = U(0) - static_cast<U>(static_cast<bool>(c));
    return std::bit_cast<V>((std::bit_cast<U>(a) & m) | (std::bit_cast<U>(b) & ~m));
  } else if constexpr (std::is_same_v<C, bool>) {
    return c ? a : b;
  } else {
    return xsimd::select(c, a, b);
  }
#endif
}

// Comparisons: never write `a != b` on batches. xsimd 8.1's AVX and AVX-512 `!=` is an ordered
// comparison, false where a lane is NaN, unlike C++ and unlike xsimd's own SSE2 `!=`.

/// True where `v` is NaN (a bool for a scalar, a mask for a batch).
template <class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE auto is_nan(const V& v) noexcept {
#if defined(__CUDA_ARCH__)
  return v != v;
#else
  if constexpr (std::is_arithmetic_v<V>) return v != v;
  else return xsimd::isnan(v);
#endif
}
/// a / b, correctly rounded on every instruction set: xsimd 8.1 divides float batches on AArch64
/// with NEON's reciprocal estimate and two Newton steps (up to 2 ulp off), not with the
/// instruction AArch64 has.
template <class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V div(const V& a, const V& b) noexcept {
#if defined(__aarch64__) && !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<V, xsimd::batch<float, xsimd::neon64>>) return vdivq_f32(a, b);
#endif
  return a / b;
}

/// `c != 0 ? v : 0` (NaN counts as nonzero), one compare and one blend on a batch: the form of
/// the "0 * anything = 0" terms (p log p, p (x - y), ...) that must not turn 0 * inf into NaN.
template <class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V keep_nonzero(const V& c, const V& v) noexcept {
  return select(c == V(0), V(0), v);
}

/// `keep ? v : 0`, written so that a NaN `v` in a discarded lane never leaks (0 * NaN would).
template <class C, class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V keep_or_zero(const C& keep, const V& v) noexcept {
  return select(keep, v, V(0));
}

namespace detail {
template <class S, class T>
inline constexpr bool direct_load_v = std::is_same_v<S, T> || (std::is_same_v<S, float> && std::is_same_v<T, double>);
}

/// width<T> consecutive values from `p` (any alignment), converted to T. float16/bfloat16 are
/// converted lane by lane through a small buffer (the CPU paths read them rarely).
template <class T, class S>
DISTILL_FORCEINLINE batch<T> load(const S* p) noexcept {
  if constexpr (detail::direct_load_v<S, T>) {
    return batch<T>::load_unaligned(p);
  } else {
    alignas(64) T buf[width<T>];
    for (int j = 0; j < width<T>; ++j) buf[j] = distill::load<T>(p[j]);
    return batch<T>::load_aligned(buf);
  }
}

/// The first `n` (<= width<T>) values of `p` in the low lanes, `fill` in the others; reads only
/// p[0, n).
template <class T, class S>
DISTILL_FORCEINLINE batch<T> load_partial(const S* p, int n, T fill) noexcept {
  if (n == width<T>) return simd::load<T>(p);
  alignas(64) T buf[width<T>];
  for (int j = 0; j < width<T>; ++j) buf[j] = j < n ? distill::load<T>(p[j]) : fill;
  return batch<T>::load_aligned(buf);
}

/// Stores all lanes of `v` at `p` (any alignment), converted to G.
template <class G, class T>
DISTILL_FORCEINLINE void store(G* p, const batch<T>& v) noexcept {
  if constexpr (std::is_same_v<G, T>) {
    v.store_unaligned(p);
  } else {
    alignas(64) T buf[width<T>];
    v.store_aligned(buf);
    for (int j = 0; j < width<T>; ++j) p[j] = distill::store<G>(buf[j]);
  }
}

/// Stores the first `n` (<= width<T>) lanes of `v`; writes only p[0, n).
template <class G, class T>
DISTILL_FORCEINLINE void store_partial(G* p, int n, const batch<T>& v) noexcept {
  if (n == width<T>) return simd::store(p, v);
  alignas(64) T buf[width<T>];
  v.store_aligned(buf);
  for (int j = 0; j < n; ++j) p[j] = distill::store<G>(buf[j]);
}

/// Calls f(k, n) for the batches of [0, count): n = width<T> for whole batches, the rest for
/// the last one; f reads and writes with load_partial / store_partial (whole batches fold to
/// plain loads and stores once inlined).
template <class T, class F>
DISTILL_FORCEINLINE void for_each_batch(index_t count, F&& f) {
  index_t k = 0;
  for (; k + width<T> <= count; k += width<T>) f(k, width<T>);
  if (k < count) f(k, static_cast<int>(count - k));
}

/// Whether `stream` bypasses the caches on this instruction set (x86: non-temporal stores).
template <class T>
inline constexpr bool has_streaming_store =
#if defined(__SSE2__)
    std::is_floating_point_v<T>;
#else
    false;
#endif

/// Stores `v` at `p` (aligned to sizeof(batch<T>)) without first reading the line into the
/// cache (x86 non-temporal store): for outputs written once and not read again soon, this
/// saves the read-for-ownership, a third of a streaming pass's memory traffic. Call
/// `stream_fence()` before the data is handed to another thread. A plain store elsewhere.
template <class T>
DISTILL_FORCEINLINE void stream(T* p, const batch<T>& v) noexcept {
  constexpr bool is_float = std::is_same_v<T, float>;
#if defined(__AVX512F__)
  if constexpr (sizeof(v) == 64) {
    if constexpr (is_float) _mm512_stream_ps(p, v);
    else _mm512_stream_pd(p, v);
    return;
  }
#endif
#if defined(__AVX__)
  if constexpr (sizeof(v) == 32) {
    if constexpr (is_float) _mm256_stream_ps(p, v);
    else _mm256_stream_pd(p, v);
    return;
  }
#endif
#if defined(__SSE2__)
  if constexpr (sizeof(v) == 16) {
    if constexpr (is_float) _mm_stream_ps(p, v);
    else _mm_stream_pd(p, v);
    return;
  }
#endif
  v.store_aligned(p);
}
/// Orders earlier `stream` stores before later stores (x86 sfence; nothing elsewhere).
DISTILL_FORCEINLINE void stream_fence() noexcept {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/// Sum of the lanes (xsimd's fixed tree order).
template <class T>
DISTILL_FORCEINLINE T reduce_sum(const batch<T>& v) noexcept {
  return xsimd::hadd(v);
}

/// Largest lane, pairwise; NaN lanes are skipped unless every lane is NaN.
template <class T>
DISTILL_FORCEINLINE T reduce_max(const batch<T>& v) noexcept {
  alignas(64) T a[width<T>];
  v.store_aligned(a);
  for (int half = width<T> / 2; half > 0; half /= 2)
    for (int j = 0; j < half; ++j) a[j] = a[j + half] > a[j] ? a[j + half] : a[j];
  return a[0];
}

/// a * b + c rounded once wherever the CPU has FMA. xsimd 8.1 fuses it for FMA3 and NEON but
/// computes a * b + c for AVX-512 (its avx512f has no fma kernel), which only GCC at -O2 and above
/// contracts again; the intrinsics make it one instruction for every compiler and flag, so that
/// a batch lane and a scalar std::fma-style call round alike (core/fast_math.hpp relies on it).
template <class T, class A>
DISTILL_FORCEINLINE xsimd::batch<T, A> fma(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b,
                                           const xsimd::batch<T, A>& c) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fmadd_ps(a, b, c);
    else if constexpr (std::is_same_v<T, double>) return _mm512_fmadd_pd(a, b, c);
  }
#endif
  return xsimd::fma(a, b, c);
}
/// c - a * b, fused like fma.
template <class T, class A>
DISTILL_FORCEINLINE xsimd::batch<T, A> fnma(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b,
                                            const xsimd::batch<T, A>& c) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fnmadd_ps(a, b, c);
    else if constexpr (std::is_same_v<T, double>) return _mm512_fnmadd_pd(a, b, c);
  }
#endif
  return xsimd::fnma(a, b, c);
}

/// Lane-wise maximum that keeps `acc` where `v` is NaN (so NaN never wins a running maximum).
template <class T>
DISTILL_FORCEINLINE batch<T> max_skip_nan(const batch<T>& acc, const batch<T>& v) noexcept {
  return xsimd::select(v > acc, v, acc);
}

/// sum_k a[k] b[k] over n contiguous values (batch accumulators, then reduce_sum).
template <class T>
T dot(const T* a, const T* b, index_t n) noexcept {
  batch<T> acc(T(0));
  for_each_batch<T>(n, [&](index_t k, int m) DISTILL_INLINE_LAMBDA {
    acc = simd::fma(load_partial<T>(a + k, m, T(0)), load_partial<T>(b + k, m, T(0)), acc);
  });
  return reduce_sum(acc);
}
/// y[k] += x * a[k] over n contiguous values.
template <class T>
void axpy(T* y, T x, const T* a, index_t n) noexcept {
  const batch<T> vx(x);
  for_each_batch<T>(n, [&](index_t k, int m) DISTILL_INLINE_LAMBDA {
    store_partial(y + k, m, simd::fma(vx, load_partial<T>(a + k, m, T(0)), load_partial<T>(y + k, m, T(0))));
  });
}

}  // namespace distill::simd
