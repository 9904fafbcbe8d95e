// distill::gemm against a naive double reference; Eigen and xtensor zero-copy views.
#include <catch2/catch.hpp>

#include <Eigen/Core>
#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "distill/core/cpu_gemm.hpp"
#include "distill/interop/eigen.hpp"
#include "distill/interop/xtensor.hpp"
#include "reference/gemm_ref.hpp"
#include "support/compare.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;

TEMPLATE_TEST_CASE("gemm matches a double reference for every transpose and odd shapes", "[core][gemm]", float, double) {
  distill_test::rng g(10);
  const auto tolerance = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{1e-4, 1e-4};
  for (int trial = 0; trial < 24; ++trial) {
    const bool ta = trial & 1, tb = trial & 2;
    const long M = g.integer(1, 90), N = g.integer(1, 90), K = g.integer(1, 70);
    const int threads = static_cast<int>(g.integer(1, 3));
    const long pad = g.integer(0, 3);
    const long arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
    const long lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
    auto a = g.normals<double>(static_cast<std::size_t>(arows * lda));
    auto b = g.normals<double>(static_cast<std::size_t>(brows * ldb));
    std::vector<TestType> af(a.begin(), a.end()), bf(b.begin(), b.end());
    distill_test::guarded<TestType> c(static_cast<std::size_t>(M * ldc));
    const double alpha = 0.5, beta = trial % 3 == 0 ? 0.0 : -1.5;
    std::vector<double> c0(static_cast<std::size_t>(M * ldc));
    for (long i = 0; i < M; ++i)
      for (long j = 0; j < N; ++j) c.data()[i * ldc + j] = static_cast<TestType>(c0[i * ldc + j] = g.normal());
    CAPTURE(ta, tb, M, N, K, threads, pad, beta);
    auto st = gemm(cpu{threads}, ta ? transpose::yes : transpose::no, tb ? transpose::yes : transpose::no,
                   static_cast<TestType>(alpha),
                   make_strided_view(static_cast<const TestType*>(af.data()), std::array<index_t, 2>{arows, acols},
                                     std::array<index_t, 2>{lda, 1}),
                   make_strided_view(static_cast<const TestType*>(bf.data()), std::array<index_t, 2>{brows, bcols},
                                     std::array<index_t, 2>{ldb, 1}),
                   static_cast<TestType>(beta),
                   make_strided_view(c.data(), std::array<index_t, 2>{M, N}, std::array<index_t, 2>{ldc, 1}));
    REQUIRE(st.ok());
    const auto ab = distill_ref::matmul(ta, tb, M, N, K, a, lda, b, ldb);
    std::vector<double> expect, got;
    for (long i = 0; i < M; ++i)
      for (long j = 0; j < N; ++j) {
        expect.push_back(alpha * ab[i * N + j] + beta * c0[i * ldc + j]);
        got.push_back(static_cast<double>(c.data()[i * ldc + j]));
      }
    CHECK_CLOSE("C", got, expect, tolerance);
    CHECK(c.intact());
    CHECK(c.padding_intact(M, N, ldc));
  }
}

TEST_CASE("gemm takes column-major operands and refuses mismatched shapes and doubly strided views", "[core][gemm]") {
  std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {1, -1, 2, 0.5f, -3, 1}, c(4);
  auto st = gemm(cpu{1}, transpose::no, transpose::no, 1.0f, make_view(a.data(), 2, 3), make_view(b.data(), 2, 3), 0.0f,
                 make_view(c.data(), 2, 2));
  CHECK(st.code() == errc::shape_mismatch);
  // B = [3, 2] stored column-major (unit stride down the rows): B(k, n) = b[k + 3 n]
  auto col = make_strided_view(static_cast<const float*>(b.data()), std::array<index_t, 2>{3, 2}, std::array<index_t, 2>{1, 3});
  st = gemm(cpu{1}, transpose::no, transpose::no, 1.0f, make_view(static_cast<const float*>(a.data()), 2, 3), col, 0.0f,
            make_view(c.data(), 2, 2));
  REQUIRE(st.ok());
  for (int m = 0; m < 2; ++m)
    for (int n = 0; n < 2; ++n) {
      float want = 0;
      for (int k = 0; k < 3; ++k) want += a[m * 3 + k] * b[k + 3 * n];
      CHECK(c[m * 2 + n] == Approx(want));
    }
  // unit stride along neither axis
  const std::vector<float> big(12, 1.0f);
  auto neither = make_strided_view(big.data(), std::array<index_t, 2>{3, 2}, std::array<index_t, 2>{2, 3});
  st = gemm(cpu{1}, transpose::no, transpose::no, 1.0f, make_view(static_cast<const float*>(a.data()), 2, 3), neither, 0.0f,
            make_view(c.data(), 2, 2));
  CHECK(st.code() == errc::unsupported_layout);
}

TEST_CASE("Eigen interop is zero-copy in both directions and keeps the layout", "[interop]") {
  Eigen::MatrixXf colmajor(3, 4);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) colmajor(i, j) = static_cast<float>(10 * i + j);
  auto v = from_eigen(colmajor);
  static_assert(std::is_same_v<decltype(v), host_view<float, 2>>);
  CHECK(v.data() == colmajor.data());
  CHECK(v.extent(0) == 3);
  CHECK(v.extent(1) == 4);
  CHECK(v(2, 3) == 23.0f);
  CHECK_FALSE(v.inner_contiguous());

  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm(5, 6);
  rm.setRandom();
  auto blk = from_eigen(rm.block(1, 2, 3, 3));  // a block keeps the parent's row stride
  CHECK(blk.stride(0) == 6);
  CHECK(blk.inner_contiguous());
  CHECK(blk(2, 1) == rm(3, 3));
  const auto& crm = rm;
  auto cv = from_eigen(crm);
  static_assert(std::is_same_v<decltype(cv), host_view<const double, 2>>);

  auto m = to_eigen(blk);
  m(0, 0) = 42.0;
  CHECK(rm(1, 2) == 42.0);

  Eigen::VectorXf vec = Eigen::VectorXf::LinSpaced(5, 0, 4);
  auto v1 = from_eigen_vector(vec);
  CHECK(v1(4) == 4.0f);
  auto back = to_eigen(v1);
  CHECK(back.sum() == 10.0f);
}

TEST_CASE("xtensor interop is zero-copy in both directions", "[interop]") {
  xt::xtensor<float, 3> t({2, 3, 4});
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(i);
  auto v = from_xtensor(t);
  static_assert(std::is_same_v<decltype(v), host_view<float, 3>>);
  CHECK(v.data() == t.data());
  CHECK(v(1, 2, 3) == 23.0f);

  xt::xarray<double> a = xt::zeros<double>({3, 5});
  auto va = from_xtensor<2>(a);
  REQUIRE_FALSE(va.empty());
  va(2, 4) = 7.0;
  CHECK(a(2, 4) == 7.0);
  CHECK(from_xtensor<3>(a).empty());  // wrong rank -> absent view

  std::vector<float> buf(4 * 6, 1.0f);
  auto padded = make_strided_view(buf.data(), std::array<index_t, 2>{4, 5}, std::array<index_t, 2>{6, 1});
  auto x = to_xtensor(padded);
  CHECK(x.shape()[0] == 4);
  CHECK(x.shape()[1] == 5);
  x(3, 4) = 9.0f;
  CHECK(buf[3 * 6 + 4] == 9.0f);
}
