// The flagship's models as a whole (model.hpp): the gradients that rn_model assembles from many
// distill calls (CNN, pair scorer, relational pairing, f, and every loss term with its weight)
// are checked against central finite differences of the training loss it reports, one parameter
// tensor at a time, for each of the five models, on state descriptions and on pixels.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/model.hpp"
#include "support/parameter_gradients.hpp"
#include "support/random.hpp"

namespace {

using host_model = vqa::rn_model<distill::host_space>;

vqa::model_spec small_spec(const std::string& name) {
  vqa::model_spec s;
  s.name = s.title = name;
  s.g_hidden = 16, s.g_layers = 2, s.f_hidden = {12}, s.scorer_hidden = 8;
  if (name == "teacher_logic") s.mask = vqa::mask_source::logic, s.is_teacher = true;
  if (name == "teacher_predicted") s.mask = vqa::mask_source::predicted, s.supervise_pairs = true;
  if (name == "student_logits") s.distill_logits = true, s.distill_features = true;
  if (name == "student_attention")
    s.mask = vqa::mask_source::predicted, s.distill_logits = true, s.distill_pairs = true, s.distill_features = true;
  return s;
}

vqa::train_config small_config(bool pixels) {
  vqa::train_config c;
  c.pixels = pixels, c.cnn_channels = 4, c.batch = 3, c.threads = 1, c.queue_size = 16;
  // weights away from 1 so that a term whose weight is dropped or applied twice shows
  c.alpha = 0.6, c.temperature = 2.5, c.pair_weight = 0.7, c.attention_weight = 1.3;
  c.at_weight = 50.0, c.adain_weight = 0.4, c.nce_weight = 3.0, c.nce_temperature = 0.2;
  return c;
}

/// A random batch: objects or images, questions, answers and a 0/1 logic mask with at least one
/// pair per question.
struct batch_data {
  std::vector<float> state, images, questions, mask;
  std::vector<std::int64_t> answers;
  vqa::host_batch view;

  batch_data(bool pixels, int B, distill_test::rng& r) {
    const int N = pixels ? 25 : 6;
    if (pixels) images = r.uniforms<float>(static_cast<std::size_t>(B) * 3 * 75 * 75);
    else state = r.uniforms<float>(static_cast<std::size_t>(B) * N * 10);
    questions.assign(static_cast<std::size_t>(B) * 11, 0.0f);
    mask.assign(static_cast<std::size_t>(B) * N * N, 0.0f);
    for (int i = 0; i < B; ++i) {
      questions[static_cast<std::size_t>(i * 11 + r.integer(0, 5))] = 1;
      questions[static_cast<std::size_t>(i * 11 + 6 + r.integer(0, 1))] = 1;
      questions[static_cast<std::size_t>(i * 11 + 8 + r.integer(0, 2))] = 1;
      answers.push_back(r.integer(0, 9));
      for (int k = 0; k < N * N; ++k) mask[static_cast<std::size_t>(i * N * N + k)] = r.coin(0.15) ? 1.0f : 0.0f;
      mask[static_cast<std::size_t>(i * N * N + r.integer(0, N * N - 1))] = 1.0f;
    }
    view.size = B, view.objects = N;
    view.state = pixels ? nullptr : state.data();
    view.images = pixels ? images.data() : nullptr;
    view.questions = questions.data(), view.answers = answers.data(), view.logic_mask = mask.data();
  }
};

double loss_of(host_model& m, const vqa::host_batch& b, vqa::model_runner* teacher) {
  double loss = 0;
  distill::throw_if_error(m.compute_gradients(b, teacher, loss));
  return loss;
}

/// Every trainable tensor's gradient against central differences of the model's loss.
void check_gradients(host_model& m, const vqa::host_batch& b, vqa::model_runner* teacher, distill_test::rng& r) {
  const int checked = distill_test::check_parameter_gradients(m.parameters(), [&] { return loss_of(m, b, teacher); }, r, m.spec().name);
  CHECK(checked >= 6);
}

}  // namespace

TEST_CASE("vqa model: every model's gradients match finite differences of its loss", "[vqa_example][model]") {
  const bool pixels = GENERATE(false, true);
  distill_test::rng r(pixels ? 71 : 70);
  const auto cfg = small_config(pixels);
  batch_data data(pixels, cfg.batch, r);

  host_model teacher(small_spec("teacher_logic"), cfg);
  double loss = 0;
  REQUIRE(teacher.train_step(data.view, nullptr, 1e-3, loss).ok());  // batch-norm statistics away from their start
  for (const std::string name : {"baseline", "teacher_logic", "teacher_predicted", "student_logits", "student_attention"}) {
    DYNAMIC_SECTION((pixels ? "pixels, " : "state, ") << name) {
      host_model m(small_spec(name), cfg);
      const bool student = name.rfind("student", 0) == 0;
      // one step first: Adam moves every weight, and pixels students fill the contrastive queue
      REQUIRE(m.train_step(data.view, student ? &teacher : nullptr, 1e-3, loss).ok());
      check_gradients(m, data.view, student ? &teacher : nullptr, r);
    }
  }
}

TEST_CASE("vqa model: the reported loss is the weighted sum of the terms", "[vqa_example][model]") {
  // student (b) on state descriptions: (1 - alpha) CE + alpha T^2 KL + attention_weight KL_pairs.
  // Scaling attention_weight changes the loss by exactly the change times the pair term, which is
  // positive (the predicted pair distribution is not the mask's).
  distill_test::rng r(72);
  auto cfg = small_config(false);
  batch_data data(false, cfg.batch, r);
  host_model teacher(small_spec("teacher_logic"), cfg);
  double l1 = 0, l2 = 0;
  cfg.attention_weight = 1.0;
  host_model a(small_spec("student_attention"), cfg);
  cfg.attention_weight = 3.0;
  host_model b(small_spec("student_attention"), cfg);  // same seed and name: the same initial weights
  REQUIRE(a.compute_gradients(data.view, &teacher, l1).ok());
  REQUIRE(b.compute_gradients(data.view, &teacher, l2).ok());
  CHECK(l2 - l1 > 0.01);
}
