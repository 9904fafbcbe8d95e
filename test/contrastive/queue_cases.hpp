// SPDX-License-Identifier: MIT
#pragma once
// Sample-queue cases written once for every backend (support/backend.hpp); the including file
// defines `test_space` first (test_contrastive_backends.cpp: host_space;
// test_contrastive_cuda.cu: cuda_space). The queue's keys live in the space's memory with padded
// rows (canaries in the padding and around them); every enqueue is compared with the double
// reference ring buffer (reference/contrastive_ref.hpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/backend.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace queue_cases {

inline constexpr bool on_host = std::is_same_v<test_space, distill::host_space>;
using key_types = std::conditional_t<on_host, std::tuple<float, double, distill::bfloat16, distill::float16>,
                                     std::tuple<float, distill::bfloat16, distill::float16>>;

template <class T>
double key_tol() {
  if constexpr (std::is_same_v<T, double>) return 1e-14;
  else if constexpr (std::is_same_v<T, float>) return on_host ? 2e-7 : 1e-6;  // the device's norm: a warp's float sum
  else if constexpr (std::is_same_v<T, distill::float16>) return 1e-3;
  else return 8e-3;
}

}  // namespace queue_cases

TEMPLATE_LIST_TEST_CASE("sample_queue: enqueue matches the reference ring buffer, on every backend", "[contrastive][queue][backend]",
                        queue_cases::key_types) {
  using namespace distill;
  using T = TestType;
  using Space = test_space;
  const std::string backend = distill_test::backend<Space>::name;
  distill_test::rng g(301);
  for (int trial = 0; trial < 30; ++trial) {
    // Small queues, and ones wider than a warp with more slots than a block has threads.
    const bool small = g.coin();
    const long K = g.integer(1, small ? 40 : 300), D = g.integer(1, small ? 9 : 70), pad = g.integer(0, 3);
    const bool with_ids = g.coin(), normalize = g.coin(0.7);
    distill_test::guarded_tensor<T, 2, Space> keys({K, D}, {pad, 0});
    distill_test::guarded_array<std::int64_t, Space> ids(std::vector<std::int64_t>(static_cast<std::size_t>(K), 12345));
    keys.fill(0.0);
    sample_queue<T, Space> q(keys.view(), with_ids ? ids.view() : tensor_view<std::int64_t, 1, Space>{});
    distill_ref::ref_queue ref(K, D);
    ref.ids.assign(static_cast<std::size_t>(K), 12345);  // never-written slots keep their old id
    CAPTURE(backend, trial, K, D, pad, with_ids, normalize);
    for (int step = 0; step < 6; ++step) {
      const int kind = static_cast<int>(g.integer(0, 4));
      const long B = kind == 0 ? 0 : kind == 1 ? 1 : kind == 2 ? g.integer(1, K) : kind == 3 ? K : g.integer(K + 1, 2 * K + 7);
      auto rows = g.normals<double>(static_cast<std::size_t>(B * D), 0.0, 2.0);
      distill_test::guarded_tensor<float, 2, Space> batch({std::max(B, 1L), D});
      if (B > 0) batch.set(rows);
      for (auto& r : rows) r = static_cast<float>(r);  // what the float batch holds
      std::vector<std::int64_t> bid;
      const bool pass_ids = with_ids && g.coin(0.8);
      if (pass_ids)
        for (long r = 0; r < B; ++r) bid.push_back(g.integer(0, 1000));
      distill_test::guarded_array<std::int64_t, Space> batch_ids(bid.empty() ? std::vector<std::int64_t>(1) : bid);
      enqueue_options opt;
      opt.normalize = normalize;
      CAPTURE(step, B, pass_ids);
      typename distill_test::backend<Space>::session run(static_cast<int>(g.integer(1, 3)));
      REQUIRE(sample_queue_enqueue(run.ctx, q, make_view<Space>(static_cast<const float*>(batch.data()), B, D),
                                   pass_ids ? make_view<Space>(static_cast<const std::int64_t*>(batch_ids.data()), B)
                                            : tensor_view<const std::int64_t, 1, Space>{},
                                   opt)
                  .ok());
      run.sync();
      ref.enqueue(rows, bid, normalize, 1e-12);
      CHECK(q.size() == ref.filled);
      CHECK(q.write_position() == ref.pos);
      CHECK(q.full() == (ref.filled == K));
      CHECK(q.empty() == (ref.filled == 0));
      // Compare the written slots (the rest stays zero in both).
      CHECK_CLOSE("keys", keys.get(), ref.keys, (distill_test::tolerance{queue_cases::key_tol<T>(), queue_cases::key_tol<T>()}));
      if (with_ids) {
        const auto got = ids.get();
        CHECK(std::vector<std::int64_t>(got.begin(), got.end()) == ref.ids);
      }
      CHECK(keys.intact());
      CHECK(ids.intact());
      CHECK(batch.intact());
    }
    // valid_keys() is the prefix of filled rows
    const auto vk = q.valid_keys();
    CHECK(vk.extent(0) == q.size());
    CHECK(vk.data() == q.keys().data());
  }
}
