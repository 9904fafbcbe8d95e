// Core types: tensor_view, status, dtypes, math, parallel loops.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "support/random.hpp"

using namespace distill;

TEST_CASE("tensor_view: contiguous, strided, const conversion", "[core]") {
  std::vector<float> buf(4 * 7);
  std::iota(buf.begin(), buf.end(), 0.0f);
  auto v = make_view(buf.data(), 4, 7);
  static_assert(decltype(v)::rank == 2);
  CHECK(v.extent(0) == 4);
  CHECK(v.extent(1) == 7);
  CHECK(v.stride(0) == 7);
  CHECK(v.stride(1) == 1);
  CHECK(v.size() == 28);
  CHECK(v.contiguous());
  CHECK(v(2, 3) == 17.0f);
  CHECK(v.row(3)[1] == 22.0f);

  // Padded rows: 4 x 5 inside a row stride of 7.
  auto p = make_strided_view(buf.data(), std::array<index_t, 2>{4, 5}, std::array<index_t, 2>{7, 1});
  CHECK_FALSE(p.contiguous());
  CHECK(p.inner_contiguous());
  CHECK(p(3, 4) == 25.0f);

  // Column of a matrix: non-unit inner stride.
  auto col = make_strided_view(buf.data() + 2, std::array<index_t, 1>{4}, std::array<index_t, 1>{7});
  CHECK_FALSE(col.inner_contiguous());
  CHECK(col(3) == 23.0f);

  host_view<const float, 2> c = v;  // implicit const conversion
  CHECK(c(1, 1) == 8.0f);
  CHECK(as_const(v).data() == buf.data());

  host_view<float, 2> absent;
  CHECK(absent.empty());
  CHECK(absent.size() == 0);

  auto r = reshape<1>(v, {28});
  CHECK(r(27) == 27.0f);
  auto v4 = make_view(buf.data(), 1, 2, 2, 7);
  CHECK(v4(0, 1, 1, 6) == 27.0f);
}

TEST_CASE("status: codes, messages, throwing helper", "[core]") {
  status ok;
  CHECK(ok.ok());
  CHECK(ok.to_string() == "ok");
  status bad(errc::shape_mismatch, "fn: 'x' is wrong");
  CHECK_FALSE(bad.ok());
  CHECK(bad.code() == errc::shape_mismatch);
  CHECK(bad.to_string() == "shape_mismatch: fn: 'x' is wrong");
  CHECK_NOTHROW(throw_if_error(ok));
  try {
    throw_if_error(bad);
    FAIL("throw_if_error did not throw");
  } catch (const distill::error& e) {
    CHECK(e.code() == errc::shape_mismatch);
    CHECK(std::string(e.what()).find("'x' is wrong") != std::string::npos);
  }
  auto early = []() -> status {
    DISTILL_TRY(status(errc::invalid_argument, "first"));
    return status(errc::io_error, "unreachable");
  };
  CHECK(early().code() == errc::invalid_argument);
}

TEST_CASE("checks: messages name the entry point and the argument", "[core]") {
  std::vector<float> a(12), b(15);
  auto va = make_view(a.data(), 3, 4);
  auto vb = make_view(b.data(), 3, 5);
  status st = check_same_shape("kl_forward", "teacher", vb, "student", va);
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message() == "kl_forward: 'teacher' has shape [3, 5] but 'student' has shape [3, 4]");
  CHECK(check_shape("f", "grad", va, {3, 4}).ok());
  CHECK(check_shape("f", "grad", va, {3, 5}).message() == "f: 'grad' has shape [3, 4], expected [3, 5]");
  CHECK(check_positive("f", "temperature", 0.0).code() == errc::invalid_argument);
  CHECK(check_positive("f", "temperature", std::numeric_limits<double>::quiet_NaN()).code() == errc::invalid_argument);
  CHECK(check_positive("f", "temperature", std::numeric_limits<double>::infinity()).code() == errc::invalid_argument);
  CHECK(check_positive("f", "temperature", 2.0).ok());
  CHECK(check_in_range("f", "beta", 1.5, 0.0, 1.0).message() == "f: 'beta' must be in [0, 1], got 1.5");
  auto col = make_strided_view(a.data(), std::array<index_t, 2>{3, 2}, std::array<index_t, 2>{4, 2});
  CHECK(check_inner_contiguous("f", "x", col).code() == errc::unsupported_layout);
  CHECK(check_nonempty("f", "x", make_view(a.data(), 0, 4)).code() == errc::shape_mismatch);
  host_view<float, 2> absent;
  CHECK(check_present("f", "labels", absent).code() == errc::invalid_argument);
  auto mis = make_view(reinterpret_cast<float*>(reinterpret_cast<char*>(a.data()) + 1), 2, 2);
  CHECK(check_aligned("f", "x", mis).code() == errc::misaligned);
}

TEST_CASE("bfloat16 and float16 round trip and round to nearest even", "[core][dtype]") {
  distill_test::rng g(1);
  for (int i = 0; i < 20000; ++i) {
    const float x = static_cast<float>(g.normal(0, std::pow(10.0, g.uniform(-6, 4))));
    // bfloat16: reference = round-to-nearest-even on the top 16 bits, computed in double.
    const float b = static_cast<float>(bfloat16(x));
    const double ulp_b = std::ldexp(1.0, std::ilogb(x) - 7);
    CHECK(std::fabs(b - x) <= 0.5 * ulp_b);
    // float16: representable range only; error within float16 an ulp (subnormals: ulp = 2^-24).
    if (std::fabs(x) < 65504.0f) {
      const float h = static_cast<float>(float16(x));
      const double ulp_h = std::fabs(x) < std::ldexp(1.0, -14) ? std::ldexp(1.0, -24) : std::ldexp(1.0, std::ilogb(x) - 10);
      CHECK(std::fabs(h - x) <= 0.5 * ulp_h * (1 + 1e-12));
    }
  }
  // Exhaustive: every finite float16 converts to float and back unchanged.
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float16 h = float16::from_bits(static_cast<std::uint16_t>(bits));
    const float f = h;
    if (std::isnan(f)) continue;
    CHECK(float16(f).bits == h.bits);
  }
  CHECK(std::isinf(static_cast<float>(float16(70000.0f))));
  CHECK(std::isnan(static_cast<float>(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(static_cast<float>(float16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(static_cast<float>(bfloat16(-std::numeric_limits<float>::infinity())) == -std::numeric_limits<float>::infinity());
  // Ties go to even: 1 + 2^-8 lies halfway between two bfloat16 values; the even one is 1.
  CHECK(static_cast<float>(bfloat16(1.0f + std::ldexp(1.0f, -8))) == 1.0f);
  CHECK(static_cast<float>(float16(1.0f + std::ldexp(1.0f, -11))) == 1.0f);
  CHECK(load<float>(bfloat16(3.0f)) == 3.0f);
  CHECK(store<float16>(0.5f).bits == 0x3800);
}

TEST_CASE("lse_state matches a direct log-sum-exp, in any merge order", "[core][math]") {
  distill_test::rng g(2);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = static_cast<int>(g.integer(1, 300));
    std::vector<double> x(n);
    for (auto& v : x) v = g.coin(0.1) ? -std::numeric_limits<double>::infinity() : g.normal(0, 50);
    double m = -std::numeric_limits<double>::infinity();
    for (double v : x) m = std::max(m, v);
    double s = 0;
    for (double v : x) s += std::exp(v - m);
    const double expect = m == -std::numeric_limits<double>::infinity() ? m : m + std::log(s);
    lse_state<double> seq;
    for (double v : x) seq.add(v);
    lse_state<double> a, b;
    for (int i = 0; i < n; ++i) (i % 3 ? a : b).add(x[i]);
    b.merge(a);
    if (std::isinf(expect)) {
      CHECK(std::isinf(seq.value()));
      CHECK(std::isinf(b.value()));
    } else {
      CHECK(seq.value() == Approx(expect).epsilon(1e-13));
      CHECK(b.value() == Approx(expect).epsilon(1e-13));
    }
  }
  lse_state<float> empty;
  CHECK(empty.value() == -std::numeric_limits<float>::infinity());
  CHECK(xlogy(0.0, 0.0) == 0.0);
  CHECK(log1mexp(-1e-10) == Approx(std::log(1e-10)).epsilon(1e-8));
  CHECK(log1mexp(-50.0) == Approx(-std::exp(-50.0)).epsilon(1e-12));
  CHECK(log_add_exp(-std::numeric_limits<double>::infinity(), 2.0) == 2.0);
  CHECK(log_add_exp(1000.0, 1000.0) == Approx(1000.0 + std::log(2.0)));
}

TEST_CASE("reduction divisors", "[core]") {
  CHECK(reduction_divisor(reduction::sum, 8.0, 5.0) == 1.0);
  CHECK(reduction_divisor(reduction::none, 8.0, 5.0) == 1.0);
  CHECK(reduction_divisor(reduction::mean, 8.0, 5.0) == 5.0);
  CHECK(reduction_divisor(reduction::batchmean, 8.0, 5.0) == 8.0);
  CHECK(safe_inverse(0.0) == 0.0);
  CHECK(safe_inverse(4.0) == 0.25);
}

TEST_CASE("parallel_for covers every index once; parallel_sum is deterministic", "[core][parallel]") {
  for (int threads : {1, 2, 3, 8}) {
    for (index_t n : {0, 1, 5, 1000, 12345}) {
      std::vector<int> hits(static_cast<std::size_t>(n), 0);
      parallel_for(cpu{threads}, n, [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) hits[static_cast<std::size_t>(i)]++;
      });
      CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      const double total = parallel_sum<double>(cpu{threads}, n, [&](index_t b, index_t e) {
        double s = 0;
        for (index_t i = b; i < e; ++i) s += static_cast<double>(i);
        return s;
      });
      CHECK(total == static_cast<double>(n) * static_cast<double>(n - 1) / 2);
    }
  }
}
