// CUDA core: block reductions and the online log-sum-exp merge against double references on
// the host, 16-bit conversions on the device against the host conversions, pointer-space checks.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/math.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using distill_test::device_buffer;

namespace {

template <int BlockSize>
__global__ void reduce_rows_kernel(const float* x, int n, float* sum, float* mx, float* lse) {
  __shared__ float smem[BlockSize / 32];
  __shared__ lse_state<float> lsmem[BlockSize / 32];
  const float* row = x + static_cast<long>(blockIdx.x) * n;
  float s = 0, m = neg_infinity<float>();
  lse_state<float> st;
  for (int i = threadIdx.x; i < n; i += BlockSize) {
    s += row[i];
    m = fmaxf(m, row[i]);
    st.add(row[i]);
  }
  s = cuda_detail::block_sum<BlockSize>(s, smem);
  m = cuda_detail::block_max<BlockSize>(m, smem);
  st = cuda_detail::block_merge<BlockSize>(st, lsmem);
  if (threadIdx.x == 0) {
    sum[blockIdx.x] = s;
    mx[blockIdx.x] = m;
    lse[blockIdx.x] = st.value();
  }
}

__global__ void convert_kernel(const float* x, int n, bfloat16* b, float16* h, float* bf, float* hf) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  b[i] = bfloat16(x[i]);
  h[i] = float16(x[i]);
  bf[i] = load<float>(b[i]);
  hf[i] = load<float>(h[i]);
}

template <int BlockSize>
void check_block_reductions() {
  distill_test::rng g(BlockSize);
  const int rows = 7;
  for (int n : {1, 31, 32, 33, 1000, 4097}) {
    std::vector<float> x(static_cast<std::size_t>(rows) * n);
    for (auto& v : x) v = g.coin(0.05) ? -INFINITY : static_cast<float>(g.normal(0, 20));
    device_buffer<float> dx(x), dsum(rows), dmax(rows), dlse(rows);
    reduce_rows_kernel<BlockSize><<<rows, BlockSize>>>(dx.data(), n, dsum.data(), dmax.data(), dlse.data());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    auto s = dsum.download(), m = dmax.download(), l = dlse.download();
    for (int r = 0; r < rows; ++r) {
      double rs = 0, rm = -INFINITY, acc = 0;
      for (int i = 0; i < n; ++i) rm = std::max(rm, static_cast<double>(x[r * n + i]));
      for (int i = 0; i < n; ++i) {
        const double v = x[r * n + i];
        if (std::isfinite(v)) rs += v;
        acc += std::exp(v - rm);
      }
      CAPTURE(BlockSize, n, r);
      CHECK(m[r] == static_cast<float>(rm));
      CHECK(l[r] == Approx(rm + std::log(acc)).epsilon(1e-5));
      if (std::isfinite(s[r])) CHECK(s[r] == Approx(rs).margin(1e-3 * std::sqrt(n) * 20));
    }
  }
}

}  // namespace

TEST_CASE("CUDA block reductions match double references", "[core][cuda]") {
  check_block_reductions<32>();
  check_block_reductions<128>();
  check_block_reductions<1024>();
}

TEST_CASE("CUDA 16-bit conversions agree with the host conversions", "[core][cuda][dtype]") {
  distill_test::rng g(3);
  std::vector<float> x(50000);
  for (auto& v : x) v = static_cast<float>(g.normal(0, std::pow(10.0, g.uniform(-7, 5))));
  x[0] = INFINITY, x[1] = -INFINITY, x[2] = NAN, x[3] = 0.0f, x[4] = -0.0f, x[5] = 65504.0f, x[6] = 1e-8f;
  const int n = static_cast<int>(x.size());
  device_buffer<float> dx(x), dbf(x.size()), dhf(x.size());
  device_buffer<bfloat16> db(x.size());
  device_buffer<float16> dh(x.size());
  convert_kernel<<<(n + 255) / 256, 256>>>(dx.data(), n, db.data(), dh.data(), dbf.data(), dhf.data());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  auto b = db.download();
  auto h = dh.download();
  int mismatches = 0;
  for (int i = 0; i < n; ++i) {
    const bfloat16 hb(x[i]);
    const float16 hh(x[i]);
    const bool nan_in = std::isnan(x[i]);
    if (!nan_in && (b[i].bits != hb.bits || h[i].bits != hh.bits)) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("cuda_space views must hold device pointers", "[core][cuda]") {
  std::vector<float> host(16);
  device_buffer<float> dev(16);
  auto bad = make_view<cuda_space>(host.data(), 4, 4);
  auto good = dev.view(4, 4);
  CHECK(cuda_detail::check_device_view("f", "x", good).ok());
  const status st = cuda_detail::check_device_view("f", "x", bad);
  CHECK(st.code() == errc::wrong_memory_space);
  CHECK(st.message().find("'x'") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);  // the query leaves no sticky error behind
}
