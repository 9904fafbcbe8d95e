// SPDX-License-Identifier: MIT
// distill_cpu: token NCE's CPU engine for float and double (contrastive/detail/token_nce_cpu.hpp
// declares it under DISTILL_CPU_LIBRARY).
#include "distill/contrastive/token_nce.hpp"
#include "distill/contrastive/detail/token_nce_cpu_engine.hpp"

namespace distill::token_nce_detail {
#define DISTILL_TOKEN_NCE_ENGINE(Acc)                                                                                               \
  template status run_cpu_engine<Acc>(const char*, const cpu&, host_view<const Acc, 2>, host_view<const Acc, 2>,                    \
                                      const sample_queue<Acc, host_space>&, host_view<const std::uint8_t, 1>,                       \
                                      host_view<const std::int64_t, 1>, host_view<Acc, 1>, host_view<Acc, 1>, host_view<Acc, 2>,    \
                                      host_view<Acc, 2>, host_view<std::byte, 1>, const token_nce_options&);
DISTILL_TOKEN_NCE_ENGINE(float)
DISTILL_TOKEN_NCE_ENGINE(double)
#undef DISTILL_TOKEN_NCE_ENGINE
}  // namespace distill::token_nce_detail
