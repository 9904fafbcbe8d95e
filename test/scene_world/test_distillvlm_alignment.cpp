// SPDX-License-Identifier: MIT
// distillvlm's token alignment (examples/distillvlm/src/data.hpp): a teacher that read its own
// detector's regions is mapped onto the student's tokens, each student region to the teacher
// region of the same scene with the best IoU (align_tokens), and its last-layer attention and
// output rows are gathered onto the student's positions (gather_teacher). Checked against a
// naive double-precision IoU (test/reference/detection_ref.hpp) on random batches.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "../../examples/distillvlm/src/data.hpp"
#include "reference/detection_ref.hpp"
#include "support/random.hpp"

namespace {

using dvlm::index_t;

/// A batch layout of S scenes with Q questions each and K region slots; boxes random in a
/// 96-pixel canvas, some region slots padding, questions of random length.
dvlm::vqa_batch random_batch(distill_test::rng& g, index_t S, index_t Q, index_t K, const std::vector<int>& question_lengths) {
  dvlm::vqa_batch b;
  b.scenes = S, b.questions = S * Q, b.K = K, b.L = dvlm::sequence_length(static_cast<int>(K));
  const index_t L = b.L;
  REQUIRE(b.rois.resize({S * K, 5}).ok());
  b.region_valid.assign(static_cast<std::size_t>(S * K), 0);
  for (index_t r = 0; r < S * K; ++r) {
    const double x = g.uniform(0, 70), y = g.uniform(0, 70);
    float* roi = b.rois.data() + r * 5;
    roi[0] = static_cast<float>(r / K), roi[1] = static_cast<float>(x), roi[2] = static_cast<float>(y);
    roi[3] = static_cast<float>(x + g.uniform(8, 26)), roi[4] = static_cast<float>(y + g.uniform(8, 26));
    b.region_valid[static_cast<std::size_t>(r)] = g.coin(0.8) ? 1 : 0;
  }
  b.region_row.resize(static_cast<std::size_t>(b.questions * K));
  b.key_valid.assign(static_cast<std::size_t>(b.questions * L), 0);
  for (index_t q = 0; q < b.questions; ++q) {
    b.key_valid[static_cast<std::size_t>(q * L)] = 1;
    for (index_t k = 0; k < K; ++k) {
      b.region_row[static_cast<std::size_t>(q * K + k)] = (q / Q) * K + k;
      b.key_valid[static_cast<std::size_t>(q * L + 1 + k)] = b.region_valid[static_cast<std::size_t>((q / Q) * K + k)];
    }
    for (index_t t = 0; t < L - 1 - K; ++t) b.key_valid[static_cast<std::size_t>(q * L + 1 + K + t)] = t < question_lengths[static_cast<std::size_t>(q)] ? 1 : 0;
  }
  return b;
}

distill_ref::box roi_box(const dvlm::vqa_batch& b, index_t r) {
  const float* p = b.rois.data() + r * 5 + 1;
  return {p[0], p[1], p[2], p[3]};
}

}  // namespace

TEST_CASE("distillvlm: student region tokens map to the teacher region of best IoU", "[scene_world][distillvlm]") {
  distill_test::rng g(0xA11C);
  const index_t S = 4, Q = 3, K = 5;
  std::vector<int> lengths;
  for (index_t q = 0; q < S * Q; ++q) lengths.push_back(static_cast<int>(g.integer(1, 8)));
  for (int trial = 0; trial < 20; ++trial) {
    dvlm::vqa_batch student = random_batch(g, S, Q, K, lengths), teacher = random_batch(g, S, Q, K, lengths);
    // one real student region far from every teacher region: it must stay unmatched
    float* lonely = student.rois.data() + (2 * K + 1) * 5;
    lonely[1] = 200, lonely[2] = 200, lonely[3] = 210, lonely[4] = 210;
    student.region_valid[static_cast<std::size_t>(2 * K + 1)] = 1;
    for (index_t q = 2 * Q; q < 3 * Q; ++q) student.key_valid[static_cast<std::size_t>(q * student.L + 2)] = 1;

    const auto pi = dvlm::align_tokens(student, teacher);
    const index_t L = student.L;
    REQUIRE(pi.size() == static_cast<std::size_t>(S * Q * L));
    int matched_regions = 0;
    for (index_t q = 0; q < S * Q; ++q)
      for (index_t i = 0; i < L; ++i) {
        std::int64_t want = i;
        if (!student.key_valid[static_cast<std::size_t>(q * L + i)]) {
          want = -1;
        } else if (i >= 1 && i <= K) {
          const index_t s = q / Q;
          double best = 0;
          want = -1;
          for (index_t k = 0; k < K; ++k) {
            if (!teacher.region_valid[static_cast<std::size_t>(s * K + k)]) continue;
            const double iou = distill_ref::iou_ref(roi_box(student, s * K + i - 1), roi_box(teacher, s * K + k));
            if (iou > best) best = iou, want = 1 + k;
          }
          matched_regions += want >= 0;
        }
        INFO("trial " << trial << ", question " << q << ", token " << i);
        CHECK(pi[static_cast<std::size_t>(q * L + i)] == want);
      }
    CHECK(pi[static_cast<std::size_t>(2 * Q * L + 2)] == -1);
    CHECK(matched_regions > 0);
  }
  // batches of other scenes or layouts are refused
  dvlm::vqa_batch a = random_batch(g, S, Q, K, lengths), b = random_batch(g, S - 1, Q, K, std::vector<int>(lengths.begin(), lengths.end() - Q));
  CHECK_THROWS_AS(dvlm::align_tokens(a, b), std::logic_error);
}

TEST_CASE("distillvlm: the teacher's attention and rows gathered onto the student's tokens", "[scene_world][distillvlm]") {
  distill_test::rng g(0x6A7);
  const index_t B = 3, H = 2, L = 6, W = 4;
  dvlm::tensor att, rows, att_out, rows_out;
  REQUIRE(att.resize({B, H, L, L}).ok());
  REQUIRE(rows.resize({B * L, W}).ok());
  for (index_t i = 0; i < att.size(); ++i) att.data()[i] = static_cast<float>(g.uniform());
  for (index_t i = 0; i < rows.size(); ++i) rows.data()[i] = static_cast<float>(g.normal());
  std::vector<std::int64_t> pi(static_cast<std::size_t>(B * L));
  for (auto& p : pi) p = g.coin(0.25) ? -1 : g.integer(0, L - 1);
  dvlm::gather_teacher(att.cview<4>(), rows.cview<2>(), pi, att_out, rows_out);
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < L; ++i) {
      const std::int64_t pii = pi[static_cast<std::size_t>(b * L + i)];
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < L; ++j) {
          const std::int64_t pj = pi[static_cast<std::size_t>(b * L + j)];
          const float want = pii < 0 || pj < 0 ? 0.0f : att.data()[((b * H + h) * L + pii) * L + pj];
          CHECK(att_out.data()[((b * H + h) * L + i) * L + j] == want);
        }
      for (index_t c = 0; c < W; ++c) CHECK(rows_out.data()[(b * L + i) * W + c] == (pii < 0 ? 0.0f : rows.data()[(b * L + pii) * W + c]));
    }
}
