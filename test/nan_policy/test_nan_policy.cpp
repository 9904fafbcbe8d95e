// SPDX-License-Identifier: MIT
// The library's NaN/inf policy (docs/reliability.md, "NaN and infinity"), family by family on
// the CPU: with the options' `check_finite`, a NaN or infinite input is errc::non_finite naming
// it and nothing is written; the same call on finite data succeeds; with the check off (the
// default) the value propagates: the outputs that depend on it are NaN, never a plausible number.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "distill/distill.hpp"

using namespace distill;

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr float sentinel = 7.0f;

std::vector<float> ramp(std::size_t n, float scale = 0.1f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i * 7) % 11) - 0.3f;
  return v;
}

/// One entry point under test. `poison` is the input element that gets the bad value; `call`
/// runs the entry point with check_finite set or not and writes into `out` (filled with the
/// sentinel before each call).
struct policy_case {
  std::string name;  // the argument the message must name
  float* poison;     // the element made non-finite
  std::vector<float>* out;
  std::function<status(bool check)> call;
  bool minus_inf_allowed = false;  // logits: -inf is a class (pair, key) of probability 0
  errc off_code = errc::ok;        // the status with the check off (features report NaN after writing)
};

bool untouched(const std::vector<float>& out) {
  for (float v : out)
    if (v != sentinel) return false;
  return true;
}
bool any_nan(const std::vector<float>& out) {
  for (float v : out)
    if (std::isnan(v)) return true;
  return false;
}

void run_policy(const policy_case& c) {
  INFO("argument " << c.name);
  std::vector<float>& out = *c.out;
  const float good = *c.poison;
  std::fill(out.begin(), out.end(), sentinel);
  const status clean = c.call(true);
  INFO("finite data: " << clean.to_string());
  REQUIRE(clean.ok());
  CHECK(!any_nan(out));
  for (float bad : {nan_f, inf_f, -inf_f}) {
    INFO("bad value " << bad);
    *c.poison = bad;
    std::fill(out.begin(), out.end(), sentinel);
    const status st = c.call(true);
    INFO(st.to_string());
    if (bad < 0 && c.minus_inf_allowed) {
      CHECK(st.ok());
      continue;
    }
    CHECK(st.code() == errc::non_finite);
    CHECK(st.message().find("'" + c.name + "'") != std::string::npos);
    CHECK(untouched(out));
  }
  *c.poison = nan_f;  // check off: NaN reaches the outputs
  std::fill(out.begin(), out.end(), sentinel);
  const status off = c.call(false);
  INFO("check off: " << off.to_string());
  CHECK(off.code() == c.off_code);
  CHECK(any_nan(out));
  *c.poison = good;
}

const host_view<std::byte, 1> no_workspace{};

}  // namespace

TEST_CASE("check_finite: every dtype, strided views, the index of the first bad element", "[nan_policy][core]") {
  std::vector<float> m(4 * 8, 1.0f);
  const auto v = make_strided_view(m.data(), std::array<index_t, 2>{3, 4}, std::array<index_t, 2>{8, 2});  // even columns
  CHECK(check_finite("f", "x", v).ok());
  m[8 * 2 + 1] = nan_f;  // outside the view (an odd column)
  CHECK(check_finite("f", "x", v).ok());
  m[8 * 2 + 6] = inf_f;  // (2, 3)
  CHECK(check_finite("f", "x", v).message() == "f: 'x' has a NaN or infinite value at (2, 3)");
  CHECK(check_finite("f", "x", v).code() == errc::non_finite);

  std::vector<double> d(2 * 3 * 4, 0.5);
  d[1 * 12 + 2 * 4 + 3] = -std::numeric_limits<double>::infinity();
  const auto d3 = make_view(d.data(), 2, 3, 4);
  CHECK(check_finite("g", "y", d3).message() == "g: 'y' has a NaN or infinite value at (1, 2, 3)");
  CHECK(check_finite("g", "y", d3, finite_rule::finite_or_minus_inf).ok());
  d[5] = std::numeric_limits<double>::quiet_NaN();
  CHECK(check_finite("g", "y", d3, finite_rule::finite_or_minus_inf).message() == "g: 'y' has a NaN or +inf value at (0, 1, 1)");

  for (float bad : {nan_f, inf_f, -inf_f}) {
    std::vector<float16> h(5, float16(1.0f));
    std::vector<bfloat16> b(5, bfloat16(-2.0f));
    CHECK(check_finite("h", "h", make_view(h.data(), 5)).ok());
    CHECK(check_finite("h", "b", make_view(b.data(), 5)).ok());
    h[3] = float16(bad), b[4] = bfloat16(bad);
    CHECK(check_finite("h", "h", make_view(h.data(), 5)).message() == "h: 'h' has a NaN or infinite value at (3)");
    CHECK(check_finite("h", "b", make_view(b.data(), 5)).message() == "h: 'b' has a NaN or infinite value at (4)");
  }
  // the largest finite values, subnormals and -0 are finite
  std::vector<float> edge = {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                             std::numeric_limits<float>::denorm_min(), -0.0f};
  CHECK(check_finite("e", "e", make_view(edge.data(), 4)).ok());
  // absent views pass, and so does a device view (not inspected: docs/reliability.md)
  CHECK(check_finite("a", "a", host_view<const float, 2>{}).ok());
  CHECK(check_finite("a", "a", make_view<cuda_space>(m.data(), 4, 8)).ok());
  CHECK(check_finite_if(false, "f", "x", v).ok());
  const status st = check_finite_if(true, "f", "w", make_view(edge.data(), 4), "x", v);
  CHECK(st.message() == "f: 'x' has a NaN or infinite value at (2, 3)");
}

TEST_CASE("soft targets and multi-label soft targets", "[nan_policy][soft_target]") {
  std::vector<float> s = ramp(12), t = ramp(12, 0.2f), loss(1), grad(12);
  soft_target_options o;
  auto kl = [&](bool check) {
    o.check_finite = check;
    return kl_teacher_student_forward(cpu{1}, make_view(s.data(), 3, 4), make_view(t.data(), 3, 4), make_view(loss.data(), 1),
                                      {}, no_workspace, o);
  };
  run_policy({"student", &s[6], &loss, kl, true});
  run_policy({"teacher", &t[1], &loss, kl, true});
  // the fused pass: nothing written on refusal, the gradient of the affected row only is NaN
  auto fb = [&](bool check) {
    o.check_finite = check;
    return jsd_forward_backward(cpu{1}, make_view(s.data(), 3, 4), make_view(t.data(), 3, 4), make_view(loss.data(), 1),
                                make_view(grad.data(), 3, 4), {}, no_workspace, jsd_options{o});
  };
  run_policy({"teacher", &t[5], &grad, fb, true});
  t[5] = nan_f;
  REQUIRE(fb(false).ok());
  CHECK(std::isfinite(grad[0]));
  CHECK(std::isnan(grad[4]));
  t[5] = 0.1f;

  std::vector<std::int64_t> idx = {0, 1, 2, 3, 0, 1};
  std::vector<float> logprobs = {-0.5f, -1.0f, -0.7f, -0.9f, -0.3f, -1.5f};
  topk_teacher_options ko;
  run_policy({"teacher_logprobs", &logprobs[3], &loss, [&](bool check) {
                ko.check_finite = check;
                return kl_topk_teacher_student_forward(cpu{1}, make_view(s.data(), 3, 4),
                                                       make_view(static_cast<const std::int64_t*>(idx.data()), 3, 2),
                                                       make_view(logprobs.data(), 3, 2), make_view(loss.data(), 1), {},
                                                       no_workspace, ko);
              },
              true});

  multilabel_soft_target_options mo;
  run_policy({"teacher", &t[7], &loss, [&](bool check) {
                mo.check_finite = check;
                return multilabel_soft_target_forward(cpu{1}, make_view(s.data(), 3, 4), make_view(t.data(), 3, 4), {},
                                                      make_view(loss.data(), 1), no_workspace, mo);
              }});
}

TEST_CASE("attention: transfer, maps, diversity", "[nan_policy][attention]") {
  std::vector<float> s = ramp(2 * 3 * 2 * 2), t = ramp(2 * 4 * 2 * 2, 0.3f), loss(1), grad(s.size());
  attention_transfer_options ao;
  auto at = [&](bool check) {
    ao.check_finite = check;
    return attention_transfer_forward(cpu{1}, make_view(s.data(), 2, 3, 2, 2), make_view(t.data(), 2, 4, 2, 2),
                                      make_view(loss.data(), 1), no_workspace, ao);
  };
  run_policy({"student", &s[13], &loss, at});
  run_policy({"teacher", &t[2], &loss, at});
  // several layers: the message names the layer
  std::vector<float> s2 = ramp(s.size(), 0.05f);
  const attention_transfer_layer<float, float> layers[2] = {
      {make_view(s.data(), 2, 3, 2, 2), make_view(t.data(), 2, 4, 2, 2), {}, 1.0},
      {make_view(t.data(), 2, 4, 2, 2), make_view(s2.data(), 2, 3, 2, 2), {}, 0.5}};
  run_policy({"layers[1].teacher", &s2[0], &loss, [&](bool check) {
                ao.check_finite = check;
                return attention_transfer_forward(cpu{1}, std::span(layers), make_view(loss.data(), 1), no_workspace, ao);
              }});

  // attention maps [B, H, Lq, Lk] of logits: -inf is a masked key
  std::vector<float> ms = ramp(1 * 2 * 3 * 4), mt = ramp(1 * 2 * 3 * 4, 0.25f);
  attention_map_options mo;
  run_policy({"student", &ms[9], &loss, [&](bool check) {
                mo.check_finite = check;
                return attention_map_kl_teacher_student_forward(cpu{1}, make_view(ms.data(), 1, 2, 3, 4), make_view(mt.data(), 1, 2, 3, 4),
                                                                attention_masks<host_space>{}, make_view(loss.data(), 1), no_workspace, mo);
              },
              true});
  mo.student_input = mo.teacher_input = attention_input::probabilities;
  for (float& x : ms) x = 0.25f;
  for (float& x : mt) x = 0.25f;
  run_policy({"teacher", &mt[4], &loss, [&](bool check) {  // probabilities: -inf is refused too
                mo.check_finite = check;
                return attention_map_mse_forward(cpu{1}, make_view(ms.data(), 1, 2, 3, 4), make_view(mt.data(), 1, 2, 3, 4),
                                                 attention_masks<host_space>{}, make_view(loss.data(), 1), no_workspace, mo);
              }});

  attention_diversity_options dopt;
  run_policy({"peer", &t[3], &loss, [&](bool check) {
                dopt.check_finite = check;
                return attention_diversity_forward(cpu{1}, make_view(s.data(), 2, 3, 2, 2), make_view(t.data(), 2, 4, 2, 2),
                                                   make_view(loss.data(), 1), no_workspace, dopt);
              }});
}

TEST_CASE("features: statistics, AdaIN, embedding alignment, text classifier", "[nan_policy][features]") {
  std::vector<float> x = ramp(2 * 3 * 2 * 2), y = ramp(2 * 3 * 3 * 3, 0.3f), loss(1), stats(2 * 3), out(x.size());
  feature_stats_options fo;
  run_policy({"x", &x[5], &stats, [&](bool check) {
                fo.check_finite = check;
                return channel_stats_forward(cpu{1}, make_view(x.data(), 2, 3, 2, 2), make_view(stats.data(), 2, 3),
                                             host_view<float, 2>{}, fo);
              },
              false, errc::non_finite});
  stats_matching_options so;
  run_policy({"teacher", &y[20], &loss, [&](bool check) {
                so.check_finite = check;
                return stats_matching_forward(cpu{1}, make_view(x.data(), 2, 3, 2, 2), make_view(y.data(), 2, 3, 3, 3),
                                              make_view(loss.data(), 1), no_workspace, so);
              },
              false, errc::non_finite});
  adain_options ao;
  run_policy({"style", &y[1], &out, [&](bool check) {
                ao.check_finite = check;
                return adain_forward(cpu{1}, make_view(x.data(), 2, 3, 2, 2), make_view(y.data(), 2, 3, 3, 3),
                                     make_view(out.data(), 2, 3, 2, 2), ao);
              },
              false, errc::non_finite});

  std::vector<float> e = ramp(3 * 4), f = ramp(3 * 4, 0.2f);
  embedding_alignment_options eo;
  run_policy({"student", &e[2], &loss, [&](bool check) {
                eo.check_finite = check;
                return embedding_alignment_forward(cpu{1}, make_view(e.data(), 3, 4), make_view(f.data(), 3, 4), {}, {},
                                                   make_view(loss.data(), 1), no_workspace, eo);
              },
              false, errc::non_finite});

  std::vector<float> regions = ramp(3 * 4), classes = ramp(2 * 4, 0.2f), background = ramp(4, 0.3f), logits(3 * 3);
  text_classifier_options to;
  run_policy({"classes", &classes[6], &logits, [&](bool check) {
                to.check_finite = check;
                return text_classifier_forward(cpu{1}, make_view(regions.data(), 3, 4), make_view(classes.data(), 2, 4),
                                               make_view(background.data(), 4), {}, make_view(logits.data(), 3, 3), no_workspace, to);
              },
              false, errc::non_finite});
}

TEST_CASE("contrastive: token NCE with a queue", "[nan_policy][contrastive]") {
  std::vector<float> z = ramp(4 * 3), y = ramp(4 * 3, 0.2f), keys = ramp(5 * 3, 0.15f), loss(1);
  for (int with_keys = 0; with_keys < 2; ++with_keys) {
    sample_queue<float> queue(make_view(keys.data(), 5, 3));
    REQUIRE(sample_queue_enqueue(cpu{1}, queue, make_view(static_cast<const float*>(keys.data()), 4, 3), {}).ok());
    token_nce_options o;
    const std::size_t bytes = token_nce_queue_workspace_size<float>(cpu{1}, 4, 3, 5, o);
    std::vector<std::byte> w(bytes + 16);
    auto wv = make_view(w.data(), static_cast<index_t>(bytes));
    run_policy({with_keys ? "queue" : "inputs.teacher", with_keys ? &keys[4] : &y[7], &loss, [&](bool check) {
                  o.check_finite = check;
                  token_nce_inputs<float> in{make_view(static_cast<const float*>(z.data()), 4, 3),
                                             make_view(static_cast<const float*>(y.data()), 4, 3)};
                  token_nce_outputs<float> out{make_view(loss.data(), 1)};
                  return token_nce_queue_forward(cpu{1}, in, queue, out, wv, o);
                }});
  }
}

TEST_CASE("relational: pairing, pair scorer loss", "[nan_policy][relational]") {
  const index_t B = 2, N = 3, D = 2, Q = 1, H = 4;
  std::vector<float> objects = ramp(B * N * D), question = ramp(B * Q, 0.4f), w1 = ramp((2 * D + Q) * H, 0.2f), b1 = ramp(H, 0.05f),
                     out(B * H);
  relational_mlp<const float> g;
  g.layers = 1;
  g.weight[0] = make_view(static_cast<const float*>(w1.data()), 2 * D + Q, H);
  g.bias[0] = make_view(static_cast<const float*>(b1.data()), H);
  relational_pairing_options po;
  po.last_relu = false;  // a NaN must not be hidden by max(0, NaN)
  std::vector<std::byte> w(relational_pairing_workspace_size<float>(cpu{1}, B, N, D, Q, H, 1, po) + 64);
  run_policy({"objects", &objects[3], &out, [&](bool check) {
                po.check_finite = check;
                return relational_pairing_forward(cpu{1}, make_view(objects.data(), B, N, D), make_view(question.data(), B, Q),
                                                  host_view<const float, 3>{}, {}, g, make_view(out.data(), B, H),
                                                  make_view(w.data(), static_cast<index_t>(w.size())), po);
              }});

  std::vector<float> scores = ramp(B * N * N), target(B * N * N, 1.0f / 9.0f), loss(1);
  pair_scorer_options so;
  run_policy({"scores", &scores[4], &loss, [&](bool check) {
                so.check_finite = check;
                return pair_scorer_loss_forward(cpu{1}, make_view(scores.data(), B, N, N), make_view(target.data(), B, N, N), {},
                                                make_view(loss.data(), 1), no_workspace, so);
              },
              true});
}

TEST_CASE("detection: RoI Align, WSDDN", "[nan_policy][detection]") {
  std::vector<float> input = ramp(1 * 2 * 4 * 4), rois = {0, 0.5f, 0.5f, 2.5f, 2.5f}, out(1 * 2 * 2 * 2);
  roi_align_options ro;
  run_policy({"input", &input[5], &out, [&](bool check) {
                ro.check_finite = check;
                return roi_align_forward(cpu{1}, make_view(input.data(), 1, 2, 4, 4), make_view(rois.data(), 1, 5),
                                         make_view(out.data(), 1, 2, 2, 2), ro);
              }});

  std::vector<float> cls = ramp(2 * 3 * 2), det = ramp(2 * 3 * 2, 0.3f), scores(2 * 2);
  wsddn_options wo;
  run_policy({"logits.detection", &det[4], &scores, [&](bool check) {
                wo.check_finite = check;
                const wsddn_host_streams<const float> logits{make_view(static_cast<const float*>(cls.data()), 2, 3, 2),
                                                             make_view(static_cast<const float*>(det.data()), 2, 3, 2)};
                return wsddn_forward(cpu{1}, logits, make_view(scores.data(), 2, 2), host_view<float, 3>{}, no_workspace, wo);
              },
              true});
}

TEST_CASE("nn: softmax cross-entropy", "[nan_policy][nn]") {
  std::vector<float> z = ramp(3 * 4), loss(1);
  std::vector<std::int64_t> labels = {0, 3, 1};
  nn::cross_entropy_options o;
  run_policy({"logits", &z[6], &loss, [&](bool check) {
                o.check_finite = check;
                return nn::softmax_cross_entropy_forward(cpu{1}, make_view(z.data(), 3, 4),
                                                         make_view(static_cast<const std::int64_t*>(labels.data()), 3),
                                                         make_view(loss.data(), 1), o);
              },
              true});
}

TEST_CASE("logic and metrics check their values always", "[nan_policy][logic]") {
  // Their inputs are probabilities, coordinates and scores whose range is part of the contract:
  // the range check refuses NaN and inf whatever the options (docs/reliability.md).
  std::vector<float> scores = {0.5f, nan_f, 0.2f};
  std::vector<std::uint8_t> labels = {1, 0, 1};
  double ap = 0;
  const status st = average_precision(cpu{1}, make_view(static_cast<const float*>(scores.data()), 3),
                                      make_view(static_cast<const std::uint8_t*>(labels.data()), 3), ap);
  CHECK(st.code() == errc::non_finite);
}
