// SPDX-License-Identifier: MIT
#pragma once
// One program, written once as a template over the execution context, that calls every family's
// entry points (soft targets, attention, features, contrastive, relational, detection, nn) with
// the same arguments on distill::cpu (host views) and distill::cuda (device views). That it compiles for
// both contexts is half of the test: test_backend_generic.cpp builds it as CPU code,
// test_backend_generic.cu builds it under nvcc for both contexts. The other half: every call
// succeeds, writes every output it owns (outputs start as NaN), sizes its scratch with the
// primitive's `_workspace_size(ctx, ...)` and refuses a workspace one byte short; the CUDA
// binary compares the CUDA results with the CPU ones.
//
// Memory is nn::tensor<T, Space> (std::vector on the host, cudaMalloc on the device), filled
// from the same host data on both backends.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "distill/distill.hpp"
#include "support/random.hpp"

namespace generic_test {

using distill::index_t;

/// The outputs of one run of the program, by name, and the calls that failed.
struct results {
  std::map<std::string, std::vector<double>> values;
  std::vector<std::string> failures;
};

template <class Ctx>
class program {
 public:
  using Space = typename Ctx::memory_space;
  template <class T>
  using buffer = distill::nn::tensor<T, Space>;
  using bytes = buffer<std::byte>;

  explicit program(const Ctx& ctx) : ctx_(ctx), exec_(distill::nn::make_exec<Space>({.threads = 2})) {}

  results run() {
    soft_targets();
    attention();
    features();
    contrastive();
    relational();
    detection();
    nn();
    return std::move(r_);
  }

 private:
  // ---- plumbing --------------------------------------------------------------------------
  /// Device (or host) copy of host data, shaped.
  template <class T>
  buffer<T> upload(const std::vector<T>& host, const distill::nn::tensor_shape& shape) {
    buffer<T> b(shape);
    expect("upload", b.copy_from_host(host));
    return b;
  }
  /// An output buffer filled with NaN, so that an element the call does not write shows.
  buffer<float> output(const distill::nn::tensor_shape& shape) {
    return upload(std::vector<float>(static_cast<std::size_t>(shape.size()), std::numeric_limits<float>::quiet_NaN()), shape);
  }
  std::vector<float> normals(std::size_t n, double sd = 1.0) { return g_.normals<float>(n, 0.0, sd); }
  /// Scratch of `n` bytes (the primitive's _workspace_size): an empty view when n is 0.
  static distill::tensor_view<std::byte, 1, Space> view_of(bytes& b) {
    return b.size() ? b.template view<1>() : distill::tensor_view<std::byte, 1, Space>{};
  }
  bytes scratch(std::size_t n) { return bytes({static_cast<index_t>(n)}); }
  void expect(const std::string& what, const distill::status& st) {
    if (!st.ok()) r_.failures.push_back(what + ": " + st.to_string());
  }
  void keep(const std::string& name, const buffer<float>& b) {
    const auto h = b.to_host();
    r_.values[name] = std::vector<double>(h.begin(), h.end());
  }
  /// A call given `need - 1` bytes of scratch must be refused (when it needs any).
  template <class Call>
  void refuses_short_workspace(const std::string& what, std::size_t need, Call&& call) {
    if (need == 0) return;
    bytes small({static_cast<index_t>(need - 1)});
    const distill::status st = call(small.template view<1>());
    if (st.code() != distill::errc::invalid_argument) r_.failures.push_back(what + ": a short workspace was not refused");
  }

  // ---- soft targets ----------------------------------------------------------------------
  void soft_targets() {
    using namespace distill;
    const index_t N = 5, C = 7, K = 3;
    auto s = upload(normals(N * C, 2.0), {N, C}), t = upload(normals(N * C, 2.0), {N, C});
    std::vector<std::int32_t> y(N);  // int32 labels, one ignored row
    for (index_t i = 0; i < N; ++i) y[static_cast<std::size_t>(i)] = i == 2 ? -100 : static_cast<std::int32_t>((3 * i) % C);
    auto labels = upload(y, {N});
    auto weights = upload(g_.uniforms<float>(N, 0.5, 1.5), {N});
    soft_target_extras<float, Space> ex;
    ex.labels = labels.template cview<1>();
    ex.row_weights = weights.template cview<1>();
    soft_target_options opt;
    opt.temperature = 2.0f;
    opt.hard_label_weight = 0.3f;
    const std::size_t need = soft_target_workspace_size(ctx_, N);
    auto ws = scratch(need);
    auto loss = output({1}), grad = output({N, C}), loss_fwd = output({1}), grad_bwd = output({N, C});
    expect("kl_teacher_student_forward_backward",
           kl_teacher_student_forward_backward(ctx_, s.template cview<2>(), t.template cview<2>(), loss.template view<1>(),
                                               grad.template view<2>(), ex, view_of(ws), opt));
    expect("kl_teacher_student_forward",
           kl_teacher_student_forward(ctx_, s.template cview<2>(), t.template cview<2>(), loss_fwd.template view<1>(), ex, view_of(ws), opt));
    expect("kl_teacher_student_backward",
           kl_teacher_student_backward(ctx_, s.template cview<2>(), t.template cview<2>(), grad_bwd.template view<2>(), ex, view_of(ws), opt));
    keep("kl_teacher_student/loss", loss), keep("kl_teacher_student/grad", grad);
    keep("kl_teacher_student/forward", loss_fwd), keep("kl_teacher_student/backward", grad_bwd);
    refuses_short_workspace("kl_teacher_student_forward", need, [&](auto w) {
      return kl_teacher_student_forward(ctx_, s.template cview<2>(), t.template cview<2>(), loss.template view<1>(), ex, w, opt);
    });

    auto each = [&](const std::string& name, auto&& call) {
      auto l = output({1}), g = output({N, C});
      expect(name, call(l.template view<1>(), g.template view<2>()));
      keep(name + "/loss", l), keep(name + "/grad", g);
    };
    each("kl_student_teacher", [&](auto l, auto g) {
      return kl_student_teacher_forward_backward(ctx_, s.template cview<2>(), t.template cview<2>(), l, g, ex, view_of(ws), opt);
    });
    each("soft_cross_entropy", [&](auto l, auto g) {
      return soft_cross_entropy_forward_backward(ctx_, s.template cview<2>(), t.template cview<2>(), l, g, ex, view_of(ws), opt);
    });
    jsd_options jo;
    jo.beta = 0.3f;
    each("jsd", [&](auto l, auto g) {
      return jsd_forward_backward(ctx_, s.template cview<2>(), t.template cview<2>(), l, g, ex, view_of(ws), jo);
    });
    dkd_options dk;
    dk.temperature = 2.0f;
    each("dkd", [&](auto l, auto g) {
      return dkd_forward_backward(ctx_, s.template cview<2>(), t.template cview<2>(), l, g, ex, view_of(ws), dk);
    });
    std::vector<std::int64_t> idx(N * K);
    for (index_t i = 0; i < N; ++i)
      for (index_t j = 0; j < K; ++j) idx[static_cast<std::size_t>(i * K + j)] = (i + 2 * j) % C;
    auto topk_idx = upload(idx, {N, K});
    auto topk_val = upload(normals(N * K), {N, K});
    each("kl_topk_teacher_student", [&](auto l, auto g) {
      return kl_topk_teacher_student_forward_backward(ctx_, s.template cview<2>(), topk_idx.template cview<2>(),
                                                      topk_val.template cview<2>(), l, g, ex, view_of(ws), topk_teacher_options{});
    });
  }

  // ---- attention -------------------------------------------------------------------------
  void attention() {
    using namespace distill;
    const index_t B = 2, H = 2, L = 5;
    auto s = upload(normals(B * H * L * L), {B, H, L, L}), t = upload(normals(B * H * L * L), {B, H, L, L});
    const std::size_t need = attention_map_workspace_size(ctx_);
    auto ws = scratch(need);
    auto l1 = output({1}), g1 = output({B, H, L, L}), l2 = output({1}), g2 = output({B, H, L, L});
    expect("attention_map_mse_forward_backward",
           attention_map_mse_forward_backward(ctx_, s.template cview<4>(), t.template cview<4>(), attention_masks<Space>{},
                                              l1.template view<1>(), g1.template view<4>(), view_of(ws), attention_map_options{}));
    expect("attention_map_kl_teacher_student_forward_backward",
           attention_map_kl_teacher_student_forward_backward(ctx_, s.template cview<4>(), t.template cview<4>(), attention_masks<Space>{},
                                                             l2.template view<1>(), g2.template view<4>(), view_of(ws), {}));
    keep("attention_map_mse/loss", l1), keep("attention_map_mse/grad", g1);
    keep("attention_map_kl/loss", l2), keep("attention_map_kl/grad", g2);
    refuses_short_workspace("attention_map_mse_forward", need, [&](auto w) {
      return attention_map_mse_forward(ctx_, s.template cview<4>(), t.template cview<4>(), attention_masks<Space>{}, l1.template view<1>(), w);
    });

    // attention transfer: one pair, then two pairs of layers in one call
    const index_t Cs = 3, Ct = 4, h = 4, w = 3;
    auto fs = upload(normals(B * Cs * h * w), {B, Cs, h, w}), ft = upload(normals(B * Ct * h * w), {B, Ct, h, w});
    const std::size_t at_need = attention_transfer_workspace_size(ctx_, B, h, w);
    auto at_ws = scratch(at_need);
    attention_transfer_options opt;
    opt.beta = 1e3;
    auto l3 = output({1}), g3 = output({B, Cs, h, w});
    expect("attention_transfer_forward_backward",
           attention_transfer_forward_backward(ctx_, fs.template cview<4>(), ft.template cview<4>(), l3.template view<1>(),
                                               g3.template view<4>(), view_of(at_ws), opt));
    keep("attention_transfer/loss", l3), keep("attention_transfer/grad", g3);
    auto l4 = output({1}), g4a = output({B, Cs, h, w}), g4b = output({B, Cs, h, w});
    const attention_transfer_layer<float, float, Space> layers[2] = {
        {fs.template cview<4>(), ft.template cview<4>(), g4a.template view<4>(), 1.0},
        {fs.template cview<4>(), ft.template cview<4>(), g4b.template view<4>(), 0.5}};
    expect("attention_transfer_forward_backward (layers)",
           attention_transfer_forward_backward(ctx_, layers, l4.template view<1>(), view_of(at_ws), opt));
    keep("attention_transfer_layers/loss", l4), keep("attention_transfer_layers/grad", g4b);
    refuses_short_workspace("attention_transfer_forward", at_need, [&](auto wsv) {
      return attention_transfer_forward(ctx_, fs.template cview<4>(), ft.template cview<4>(), l3.template view<1>(), wsv, opt);
    });
  }

  // ---- features --------------------------------------------------------------------------
  void features() {
    using namespace distill;
    const index_t B = 2, C = 3, H = 4, W = 5;
    auto x = upload(normals(B * C * H * W), {B, C, H, W}), y = upload(normals(B * C * 3 * 3, 2.0), {B, C, 3, 3});
    auto mean = output({B, C}), sd = output({B, C});
    expect("channel_stats_forward", channel_stats_forward(ctx_, x.template cview<4>(), mean.template view<2>(), sd.template view<2>()));
    keep("channel_stats/mean", mean), keep("channel_stats/std", sd);

    const std::size_t sm_need = stats_matching_workspace_size(ctx_, B, C);
    auto sm_ws = scratch(sm_need);
    auto l1 = output({1}), g1 = output({B, C, H, W});
    expect("stats_matching_forward_backward",
           stats_matching_forward_backward(ctx_, x.template cview<4>(), y.template cview<4>(), l1.template view<1>(),
                                           g1.template view<4>(), view_of(sm_ws), stats_matching_options{}));
    keep("stats_matching/loss", l1), keep("stats_matching/grad", g1);
    refuses_short_workspace("stats_matching_forward", sm_need, [&](auto w) {
      return stats_matching_forward(ctx_, x.template cview<4>(), y.template cview<4>(), l1.template view<1>(), w, stats_matching_options{});
    });

    auto out = output({B, C, H, W});
    expect("adain_forward", adain_forward(ctx_, x.template cview<4>(), y.template cview<4>(), out.template view<4>()));
    keep("adain/out", out);
    auto ad_ws = scratch(adain_stats_loss_workspace_size(ctx_, B, C));
    auto l2 = output({1}), g2 = output({B, C, H, W});
    expect("adain_stats_loss_forward_backward",
           adain_stats_loss_forward_backward(ctx_, x.template cview<4>(), y.template cview<4>(), l2.template view<1>(),
                                             g2.template view<4>(), view_of(ad_ws), adain_stats_loss_options{}));
    keep("adain_stats_loss/loss", l2), keep("adain_stats_loss/grad", g2);

    const index_t R = 6, D = 8;
    auto es = upload(normals(R * D), {R, D}), et = upload(normals(R * D), {R, D});
    auto ea_ws = scratch(embedding_alignment_workspace_size(ctx_, R));
    auto l3 = output({1}), g3 = output({R, D});
    embedding_alignment_options eo;
    eo.metric = embedding_metric::cosine;
    expect("embedding_alignment_forward_backward",
           embedding_alignment_forward_backward(ctx_, es.template cview<2>(), et.template cview<2>(), {}, {}, l3.template view<1>(),
                                                g3.template view<2>(), view_of(ea_ws), eo));
    keep("embedding_alignment/loss", l3), keep("embedding_alignment/grad", g3);

    const index_t Ncls = 4;
    auto classes = upload(normals(Ncls * D), {Ncls, D}), background = upload(normals(D), {D});
    const std::size_t tc_need = text_classifier_workspace_size(ctx_, R, Ncls, D);
    auto tc_ws = scratch(tc_need);
    auto logits = output({R, Ncls + 1});
    text_classifier_options to;
    to.temperature = 0.1;
    expect("text_classifier_forward",
           text_classifier_forward(ctx_, es.template cview<2>(), classes.template cview<2>(), background.template cview<1>(), {},
                                   logits.template view<2>(), view_of(tc_ws), to));
    keep("text_classifier/logits", logits);
    std::vector<std::int32_t> yl(R);
    for (index_t i = 0; i < R; ++i) yl[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % (Ncls + 1));
    auto labels = upload(yl, {R});
    auto l4 = output({1}), gr = output({R, D}), gb = output({D}), scratch_logits = output({R, Ncls + 1});
    text_classifier_cross_entropy_options ce;
    ce.temperature = 0.1;
    expect("text_classifier_cross_entropy_forward_backward",
           text_classifier_cross_entropy_forward_backward(ctx_, es.template cview<2>(), classes.template cview<2>(),
                                                          background.template cview<1>(), {}, labels.template cview<1>(), {},
                                                          l4.template view<1>(), gr.template view<2>(), gb.template view<1>(), {},
                                                          scratch_logits.template view<2>(), view_of(tc_ws), ce));
    keep("text_classifier_ce/loss", l4), keep("text_classifier_ce/grad_regions", gr), keep("text_classifier_ce/grad_background", gb);
    refuses_short_workspace("text_classifier_forward", tc_need, [&](auto w) {
      return text_classifier_forward(ctx_, es.template cview<2>(), classes.template cview<2>(), background.template cview<1>(), {},
                                     logits.template view<2>(), w, to);
    });
  }

  // ---- contrastive -----------------------------------------------------------------------
  void contrastive() {
    using namespace distill;
    const index_t M = 12, D = 8, K = 32;
    auto keys = output({K, D});
    sample_queue<float, Space> queue(keys.template view<2>());
    expect("sample_queue_init_random", sample_queue_init_random(ctx_, queue, 7));
    auto fresh = upload(normals(M * D), {M, D});
    expect("sample_queue_enqueue", sample_queue_enqueue(ctx_, queue, fresh.template cview<2>()));
    keep("sample_queue/keys", keys);

    auto z = upload(normals(M * D), {M, D}), y = upload(normals(M * D), {M, D});
    token_nce_options opt;
    opt.temperature = 0.2f;
    opt.in_batch_negatives = true;
    const std::size_t need = token_nce_queue_workspace_size<float>(ctx_, M, D, queue.capacity(), opt);
    auto ws = scratch(need);
    auto loss = output({1}), per_token = output({M}), gz = output({M, D}), gy = output({M, D});
    const token_nce_inputs<float, float, Space> in{z.template cview<2>(), y.template cview<2>()};
    expect("token_nce_queue_forward_backward",
           token_nce_queue_forward_backward(ctx_, in, queue,
                                            token_nce_outputs<float, float, Space>{loss.template view<1>(), per_token.template view<1>(),
                                                                                   gz.template view<2>(), gy.template view<2>()},
                                            view_of(ws), opt));
    keep("token_nce/loss", loss), keep("token_nce/per_token", per_token), keep("token_nce/grad_student", gz),
        keep("token_nce/grad_teacher", gy);
    refuses_short_workspace("token_nce_queue_forward", need, [&](auto w) {
      return token_nce_queue_forward(ctx_, in, queue, token_nce_outputs<float, float, Space>{.loss = loss.template view<1>()}, w, opt);
    });

    auto key_params = upload(normals(20), {20}), query_params = upload(normals(20), {20});
    expect("momentum_update",
           momentum_update(ctx_, key_params.template view<1>(), query_params.template cview<1>(), 0.9));
    keep("momentum_update/key", key_params);
  }

  // ---- relational ------------------------------------------------------------------------
  void relational() {
    using namespace distill;
    const index_t B = 2, N = 4, D = 3, Q = 2, H = 8;
    const int L = 2;
    auto objects = upload(normals(B * N * D), {B, N, D}), question = upload(normals(B * Q), {B, Q});
    std::vector<float> m(B * N * N);
    for (auto& v : m) v = g_.coin(0.6) ? static_cast<float>(g_.uniform()) : 0.0f;
    auto mask = upload(m, {B, N, N});
    auto params = upload(normals(relational_mlp_parameter_count(D, Q, H, L), 0.4), {relational_mlp_parameter_count(D, Q, H, L)});
    const auto mlp = relational_mlp_view<Space>(static_cast<const float*>(params.data()), D, Q, H, L);
    relational_pairing_options po;
    const std::size_t need = relational_pairing_workspace_size<float>(ctx_, B, N, D, Q, H, L, po);
    auto ws = scratch(need);
    const tensor_view<const std::uint8_t, 2, Space> no_object_mask;
    auto out = output({B, H});
    expect("relational_pairing_forward",
           relational_pairing_forward(ctx_, objects.template cview<3>(), question.template cview<2>(), mask.template cview<3>(),
                                      no_object_mask, mlp, out.template view<2>(), view_of(ws), po));
    keep("relational_pairing/out", out);
    auto dy = upload(normals(B * H), {B, H});
    auto gparams = output({relational_mlp_parameter_count(D, Q, H, L)});
    auto gobjects = output({B, N, D}), gquestion = output({B, Q});
    relational_pairing_grads<float, Space> grads;
    grads.objects = gobjects.template view<3>();
    grads.question = gquestion.template view<2>();
    grads.g = relational_mlp_view<Space>(gparams.data(), D, Q, H, L);
    expect("relational_pairing_backward",
           relational_pairing_backward(ctx_, objects.template cview<3>(), question.template cview<2>(), mask.template cview<3>(),
                                       no_object_mask, mlp, dy.template cview<2>(), grads, view_of(ws), po));
    keep("relational_pairing/grad_objects", gobjects), keep("relational_pairing/grad_g", gparams);
    refuses_short_workspace("relational_pairing_forward", need, [&](auto w) {
      return relational_pairing_forward(ctx_, objects.template cview<3>(), question.template cview<2>(), mask.template cview<3>(),
                                        no_object_mask, mlp, out.template view<2>(), w, po);
    });

    // pair scorer (mlp kind): scores and weights, their backward, the supervision loss
    const index_t Kh = 6;
    auto w1 = upload(normals((2 * D + Q) * Kh, 0.5), {2 * D + Q, Kh}), b1 = upload(normals(Kh), {Kh});
    auto w2 = upload(normals(Kh, 0.5), {Kh, 1}), b2 = upload(normals(1), {1});
    pair_scorer_weights<const float, Space> sw;
    sw.w1 = w1.template cview<2>(), sw.b1 = b1.template cview<1>(), sw.w2 = w2.template cview<2>(), sw.b2 = b2.template cview<1>();
    auto sc_ws = scratch(pair_scorer_workspace_size(ctx_, B, N, D, Q, Kh));
    auto scores = output({B, N, N}), weights = output({B, N, N});
    expect("pair_scorer_forward",
           pair_scorer_forward(ctx_, objects.template cview<3>(), question.template cview<2>(), no_object_mask, sw,
                               scores.template view<3>(), weights.template view<3>(), view_of(sc_ws), pair_scorer_options{}));
    keep("pair_scorer/weights", weights);
    auto dscores = output({B, N, N});
    auto loss = output({1});
    expect("pair_scorer_loss_forward_backward",
           pair_scorer_loss_forward_backward(ctx_, scores.template cview<3>(), mask.template cview<3>(), no_object_mask,
                                             loss.template view<1>(), dscores.template view<3>(), view_of(sc_ws), pair_scorer_options{}));
    keep("pair_scorer_loss/loss", loss), keep("pair_scorer_loss/grad", dscores);
    auto dweights = upload(normals(B * N * N), {B, N, N});
    auto gw1 = output({2 * D + Q, Kh}), gso = output({B, N, D});
    pair_scorer_grads<float, Space> sg;
    sg.weights.w1 = gw1.template view<2>();
    sg.objects = gso.template view<3>();
    expect("pair_scorer_backward",
           pair_scorer_backward(ctx_, objects.template cview<3>(), question.template cview<2>(), no_object_mask, sw,
                                weights.template cview<3>(), dweights.template cview<3>(), dscores.template cview<3>(), sg,
                                view_of(sc_ws), pair_scorer_options{}));
    keep("pair_scorer/grad_w1", gw1), keep("pair_scorer/grad_objects", gso);

    // box geometry
    const index_t P = 3;
    std::vector<float> sb, ob;
    for (index_t p = 0; p < P; ++p) {
      const float x = static_cast<float>(g_.uniform(0.0, 0.4)), yy = static_cast<float>(g_.uniform(0.0, 0.4));
      sb.insert(sb.end(), {x, yy, x + 0.3f, yy + 0.2f});
      ob.insert(ob.end(), {yy, x, yy + 0.25f, x + 0.35f});
    }
    auto sbox = upload(sb, {P, 4}), obox = upload(ob, {P, 4});
    const box_pairs<float, Space> boxes{sbox.template cview<2>(), obox.template cview<2>()};
    auto feats = output({P, box_pair_feature_count});
    expect("box_pair_features_forward", box_pair_features_forward(ctx_, boxes, feats.template view<2>()));
    keep("box_pair_features/features", feats);
    auto gf = upload(normals(P * box_pair_feature_count), {P, box_pair_feature_count});
    auto gs = output({P, 4}), go = output({P, 4});
    expect("box_pair_features_backward",
           box_pair_features_backward(ctx_, boxes, gf.template cview<2>(),
                                      box_pair_grads<float, Space>{gs.template view<2>(), go.template view<2>()}));
    keep("box_pair_features/grad_subject", gs), keep("box_pair_features/grad_object", go);
  }

  // ---- detection: boxes, RoI Align, the WSDDN head, smooth L1 --------------------------------
  void detection() {
    using namespace distill;
    const std::vector<float> a = {0, 0, 4, 4, 1, 2, 6, 7, 3, 3, 3.5f, 9}, b = {2, 1, 5, 5, 0, 0, 8, 8};
    auto boxes_a = upload(a, {3, 4}), boxes_b = upload(b, {2, 4});
    auto iou = output({3, 2});
    expect("box_iou", box_iou(ctx_, boxes_a.template cview<2>(), boxes_b.template cview<2>(), iou.template view<2>()));
    keep("box_iou/iou", iou);
    auto deltas = upload(normals(12, 0.5), {3, 4}), decoded = output({3, 4});
    expect("box_decode_forward", box_decode_forward(ctx_, boxes_a.template cview<2>(), deltas.template cview<2>(), decoded.template view<2>()));
    keep("box_decode/boxes", decoded);
    auto grad_boxes = upload(normals(12), {3, 4}), grad_deltas = output({3, 4});
    expect("box_decode_backward", box_decode_backward(ctx_, boxes_a.template cview<2>(), deltas.template cview<2>(),
                                                      grad_boxes.template cview<2>(), grad_deltas.template view<2>()));
    keep("box_decode/grad_deltas", grad_deltas);

    const index_t B = 2, C = 3, H = 7, W = 6, K = 3, P = 2;
    auto feature_map = upload(normals(B * C * H * W), {B, C, H, W});
    auto rois = upload(std::vector<float>{0, 0.5f, 1, 4, 5, 1, 2, 0, 5.5f, 6.5f, 1, 1, 1, 2.5f, 2}, {K, 5});
    auto pooled = output({K, C, P, P});
    expect("roi_align_forward", roi_align_forward(ctx_, feature_map.template cview<4>(), rois.template cview<2>(), pooled.template view<4>()));
    keep("roi_align/output", pooled);
    auto grad_pooled = upload(normals(K * C * P * P), {K, C, P, P}), grad_map = output({B, C, H, W});
    expect("roi_align_backward", roi_align_backward(ctx_, rois.template cview<2>(), grad_pooled.template cview<4>(), grad_map.template view<4>()));
    keep("roi_align/grad_input", grad_map);

    const index_t R = 5, Cw = 4;
    auto cls = upload(normals(B * R * Cw), {B, R, Cw}), det = upload(normals(B * R * Cw), {B, R, Cw});
    auto labels = upload(std::vector<std::uint8_t>{1, 0, 0, 1, 0, 1, 1, 0}, {B, Cw});
    auto scores = output({B, Cw}), loss = output({1}), grad_cls = output({B, R, Cw}), grad_det = output({B, R, Cw});
    auto ws = scratch(wsddn_workspace_size(ctx_, B, R, Cw));
    expect("wsddn_forward_backward",
           wsddn_forward_backward(ctx_, wsddn_streams<const float, Space>{cls.template cview<3>(), det.template cview<3>()},
                                  labels.template cview<2>(), scores.template view<2>(), loss.template view<1>(),
                                  wsddn_streams<float, Space>{grad_cls.template view<3>(), grad_det.template view<3>()}, view_of(ws)));
    keep("wsddn/image_scores", scores), keep("wsddn/loss", loss);
    keep("wsddn/grad_classification", grad_cls), keep("wsddn/grad_detection", grad_det);
    refuses_short_workspace("wsddn_forward_backward", wsddn_workspace_size(ctx_, B, R, Cw), [&](auto w) {
      return wsddn_forward_backward(ctx_, wsddn_streams<const float, Space>{cls.template cview<3>(), det.template cview<3>()},
                                    labels.template cview<2>(), scores.template view<2>(), loss.template view<1>(),
                                    wsddn_streams<float, Space>{grad_cls.template view<3>(), grad_det.template view<3>()}, w);
    });

    auto prediction = upload(normals(12, 0.3), {3, 4}), target = upload(normals(12, 0.3), {3, 4});
    auto l1_loss = output({1}), l1_grad = output({3, 4});
    auto l1_ws = scratch(smooth_l1_workspace_size(ctx_, 3, 4));
    expect("smooth_l1_forward_backward", smooth_l1_forward_backward(ctx_, prediction.template cview<2>(), target.template cview<2>(), {},
                                                                    l1_loss.template view<1>(), l1_grad.template view<2>(), view_of(l1_ws)));
    keep("smooth_l1/loss", l1_loss), keep("smooth_l1/grad", l1_grad);
    refuses_short_workspace("smooth_l1_forward_backward", smooth_l1_workspace_size(ctx_, 3, 4), [&](auto w) {
      return smooth_l1_forward_backward(ctx_, prediction.template cview<2>(), target.template cview<2>(), {}, l1_loss.template view<1>(),
                                        l1_grad.template view<2>(), w);
    });
  }

  // ---- nn (on the model context: distill::cpu or nn::cuda_blas) ------------------------------
  void nn() {
    using namespace distill;
    const index_t N = 4, I = 6, O = 5;
    auto x = upload(normals(N * I), {N, I}), w = upload(normals(O * I, 0.5), {O, I}), b = upload(normals(O), {O});
    auto y = output({N, O});
    expect("nn::linear_forward", nn::linear_forward(exec_, x.template cview<2>(), w.template cview<2>(), b.template cview<1>(),
                                                    y.template view<2>()));
    keep("nn_linear/y", y);
    std::vector<std::int32_t> yl = {0, 4, 2, 1};
    auto labels = upload(yl, {N});
    auto loss = output({1}), grad = output({N, O});
    expect("nn::softmax_cross_entropy_forward_backward",
           nn::softmax_cross_entropy_forward_backward(exec_, y.template cview<2>(), labels.template cview<1>(), loss.template view<1>(),
                                                      grad.template view<2>()));
    keep("nn_cross_entropy/loss", loss), keep("nn_cross_entropy/grad", grad);

    const index_t B = 2, Ci = 2, Co = 3, Hs = 5, k = 3;
    const nn::conv2d_params p{2, 2, 1, 1};
    const index_t Ho = nn::conv2d_output_extent(Hs, k, 2, 1);
    auto cx = upload(normals(B * Ci * Hs * Hs), {B, Ci, Hs, Hs}), cw = upload(normals(Co * Ci * k * k, 0.3), {Co, Ci, k, k});
    auto cb = upload(normals(Co), {Co});
    const std::size_t need = nn::conv2d_workspace_size<float>(exec_, B, Ci, Co, k, k, Ho, Ho);
    auto ws = scratch(need);
    auto cy = output({B, Co, Ho, Ho});
    expect("nn::conv2d_forward", nn::conv2d_forward(exec_, cx.template cview<4>(), cw.template cview<4>(), cb.template cview<1>(),
                                                    cy.template view<4>(), view_of(ws), p));
    keep("nn_conv2d/y", cy);
    auto dy = upload(normals(B * Co * Ho * Ho), {B, Co, Ho, Ho});
    auto dx = output({B, Ci, Hs, Hs}), dw = output({Co, Ci, k, k}), db = output({Co});
    expect("nn::conv2d_backward", nn::conv2d_backward(exec_, cx.template cview<4>(), cw.template cview<4>(), dy.template cview<4>(),
                                                      dx.template view<4>(), dw.template view<4>(), db.template view<1>(), view_of(ws), p));
    keep("nn_conv2d/dx", dx), keep("nn_conv2d/dw", dw), keep("nn_conv2d/db", db);

    // a layer object built from the others: seeded initialisation gives both backends the same weights
    const index_t Bt = 2, L = 5, D = 8;
    nn::transformer_encoder_layer<float, Space> encoder("generic.encoder", D, 2, 16);
    auto tx = upload(normals(Bt * L * D), {Bt, L, D}), tdy = upload(normals(Bt * L * D), {Bt, L, D});
    auto key_valid = upload(std::vector<std::uint8_t>{1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, {Bt, L});
    auto ty = output({Bt, L, D}), tdx = output({Bt, L, D});
    expect("nn::transformer_encoder_layer::forward",
           encoder.forward(exec_, tx.template cview<3>(), key_valid.template cview<2>(), ty.template view<3>()));
    expect("nn::transformer_encoder_layer::backward", encoder.backward(exec_, tx.template cview<3>(), key_valid.template cview<2>(),
                                                                       tdy.template cview<3>(), tdx.template view<3>()));
    keep("nn_transformer/y", ty), keep("nn_transformer/dx", tdx);
    keep("nn_transformer/grad_q_proj", encoder.attn.q_proj.weight.grad), keep("nn_transformer/grad_linear1", encoder.linear1.weight.grad);
  }

  const Ctx& ctx_;
  distill::nn::exec_t<Space> exec_;
  distill_test::rng g_{20261127};
  results r_;
};

template <class Ctx>
results run_program(const Ctx& ctx) {
  return program<Ctx>(ctx).run();
}

}  // namespace generic_test
