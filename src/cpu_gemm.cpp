// SPDX-License-Identifier: MIT
// distill_cpu: distill::gemm's float and double products (the only translation unit that
// compiles Eigen's GEMM kernels when the library is used).
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/detail/cpu_gemm_eigen.hpp"

namespace distill::gemm_detail {
template std::size_t product_workspace_size<float>(const cpu&, index_t, index_t, index_t);
template std::size_t product_workspace_size<double>(const cpu&, index_t, index_t, index_t);
template status product<float>(const cpu&, transpose, transpose, float, host_view<const float, 2>, host_view<const float, 2>, float,
                                host_view<float, 2>, host_view<std::byte, 1>);
template status product<double>(const cpu&, transpose, transpose, double, host_view<const double, 2>, host_view<const double, 2>,
                                double, host_view<double, 2>, host_view<std::byte, 1>);
}  // namespace distill::gemm_detail
