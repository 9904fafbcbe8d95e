// SPDX-License-Identifier: MIT
// Text-embedding classifier, CPU-only checks: bad inputs (shapes, options, labels, NaN). Logits,
// backward and the fused cross-entropy against the reference on every backend:
// features_cases.hpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/features/text_embedding_classifier.hpp"

using namespace distill;

TEST_CASE("features: text classifier bad inputs", "[features][classifier][errors]") {
  std::vector<float> e(4 * 3, 0.5f), t(5 * 3, 0.25f), t2(5 * 4, 0.25f), w(3, 1.0f), z(4 * 6), ge(12), gw(3);
  for (std::size_t i = 0; i < e.size(); ++i) e[i] = float(i % 4) - 1.5f;
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = float(i % 3) + 0.5f;
  const auto ev = make_view(static_cast<const float*>(e.data()), 4, 3);
  const auto tv = make_view(static_cast<const float*>(t.data()), 5, 3);
  const auto wv = make_view(static_cast<const float*>(w.data()), 3);
  status st = text_classifier_forward(cpu{1}, ev, make_view(static_cast<const float*>(t2.data()), 5, 4), wv, {}, make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'classes'") != std::string::npos);
  st = text_classifier_forward(cpu{1}, ev, tv, wv, {}, make_view(z.data(), 4, 5), {});  // K = 6 with a background
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'logits'") != std::string::npos);
  text_classifier_options bad;
  bad.temperature = 0;
  st = text_classifier_forward(cpu{1}, ev, tv, wv, {}, make_view(z.data(), 4, 6), {}, bad);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'temperature'") != std::string::npos);
  st = text_classifier_backward(cpu{1}, ev, tv, {}, {}, make_view(static_cast<const float*>(z.data()), 4, 5), make_view(ge.data(), 4, 3),
                                make_view(gw.data(), 3), {}, {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'grad_background'") != std::string::npos);
  std::vector<std::uint8_t> m(4, 1);
  st = text_classifier_forward(cpu{1}, ev, tv, wv, make_view(static_cast<const std::uint8_t*>(m.data()), 4), make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'class_mask'") != std::string::npos);
  std::vector<std::int64_t> y = {0, 6, 1, -100};  // 6 is out of range for K = 6
  float loss[1];
  st = text_classifier_cross_entropy_forward_backward(cpu{1}, ev, tv, wv, {}, make_view(static_cast<const std::int64_t*>(y.data()), 4), {},
                                                      make_view(loss, 1), make_view(ge.data(), 4, 3), {}, {}, make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'labels'") != std::string::npos);
  y[1] = 2;
  text_classifier_cross_entropy_options ce;
  ce.reduction = reduction::none;
  CHECK(text_classifier_cross_entropy_forward(cpu{1}, ev, tv, wv, {}, make_view(static_cast<const std::int64_t*>(y.data()), 4), {},
                                              make_view(loss, 1), make_view(z.data(), 4, 6), {}, ce)
            .code() == errc::invalid_argument);
  e[4] = std::numeric_limits<float>::quiet_NaN();
  st = text_classifier_forward(cpu{1}, ev, tv, wv, {}, make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'regions'") != std::string::npos);
  CHECK(std::isnan(z[1 * 6 + 2]));
  CHECK(std::isfinite(z[0]));
}
