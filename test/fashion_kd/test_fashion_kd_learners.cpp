// The fashion_kd methods as a whole (examples/fashion_kd/src): for every single-student method the
// gradients its learner assembles from many distill calls (the student CNN or MLP, the
// connector, every loss term with its weight, AdaIN-KD through the frozen teacher head) are
// checked against central finite differences of the loss it reports; FFSD's cohort learns a
// fixed batch; checkpoints resume exactly; the default students are at most a tenth of the teacher.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../../examples/fashion_kd/src/ffsd.hpp"
#include "../../examples/fashion_kd/src/learner.hpp"
#include "support/parameter_gradients.hpp"
#include "support/random.hpp"

using namespace fkd;

namespace {

run_config tiny_config() {
  run_config c;
  c.threads = 1;
  c.teacher = {{4, 6, 6}, {8}, 2};
  c.student = {{3, 4}, {5}, 2};
  c.mlp = {{}, {7}, 0};
  // weights away from 1 and from their defaults, so that a term whose weight is dropped or
  // applied twice shows
  c.loss.kd_alpha = 0.6, c.loss.kd_temperature = 2.5, c.loss.dkd_beta = 3.0, c.loss.dkd_alpha = 0.7, c.loss.dkd_temperature = 1.5;
  c.loss.at_beta = 30.0, c.loss.stats_weight = 0.7, c.loss.adain_weight = 1.7;
  return c;
}

struct batch_data {
  std::vector<float> images;
  std::vector<std::int64_t> labels;
  tensor x;
  batch_data(int B, distill_test::rng& r) : images(r.normals<float>(static_cast<std::size_t>(B) * 784)), x({B, 1, 28, 28}) {
    for (int i = 0; i < B; ++i) labels.push_back(r.integer(0, 9));
    std::copy(images.begin(), images.end(), x.data());
  }
  batch view() const { return {x.cview<4>(), labels}; }
};

/// Every trainable tensor's gradient against central differences of the learner's loss.
void check_gradients(learner& l, const batch& b, staged_net* teacher, distill_test::rng& r) {
  const distill::cpu ctx{1};
  const step_info at{1, 0, 1};
  const int checked = distill_test::check_parameter_gradients(l.parameters(), [&] { return l.compute_gradients(ctx, b, teacher, at); }, r, "learner");
  CHECK(checked >= 4);
}

}  // namespace

TEST_CASE("fashion_kd: every single-student method's gradients match finite differences of its loss", "[fashion_kd][model]") {
  distill_test::rng r(81);
  const auto cfg = tiny_config();
  batch_data data(4, r);
  const distill::cpu ctx{1};
  // a teacher moved away from its initialisation, then frozen in evaluation mode
  student_learner teacher_learner("ce", [&] {
    run_config t = cfg;
    t.student = cfg.teacher;
    return t;
  }(), 5, 10, nullptr, "teacher");
  for (int i = 0; i < 3; ++i) teacher_learner.train_step(ctx, data.view(), nullptr, {0, i, 3});
  staged_net& teacher = teacher_learner.net();
  teacher.set_training(false);
  nn::set_trainable(teacher.parameters(), false);
  REQUIRE(teacher.forward(ctx, data.view().images).ok());
  for (const std::string method : {"ce", "kd", "dkd", "at", "at_kd", "stats", "adain", "mlp_ce", "mlp_kd"}) {
    DYNAMIC_SECTION(method) {
      student_learner l(method, cfg, 3, 100, &teacher);
      l.train_step(ctx, data.view(), method_uses_teacher(method) ? &teacher : nullptr, {0, 0, 1});  // batch norm and weights moved
      check_gradients(l, data.view(), method_uses_teacher(method) ? &teacher : nullptr, r);
    }
  }
}

TEST_CASE("fashion_kd: the loss terms carry their weights", "[fashion_kd][model]") {
  // Same seed: the same initial student. Raising a distillation weight changes the reported loss
  // by the added multiple of that term (positive for these terms).
  distill_test::rng r(82);
  auto cfg = tiny_config();
  batch_data data(4, r);
  const distill::cpu ctx{1};
  run_config tcfg = cfg;
  tcfg.student = cfg.teacher;
  student_learner teacher_learner("ce", tcfg, 5, 10, nullptr, "teacher");
  staged_net& teacher = teacher_learner.net();
  teacher.set_training(false);
  REQUIRE(teacher.forward(ctx, data.view().images).ok());
  auto loss_with = [&](const std::string& method, run_config c) {
    student_learner l(method, c, 3, 100, &teacher);
    return l.compute_gradients(ctx, data.view(), &teacher, {1, 0, 1});
  };
  const double ce = loss_with("ce", cfg);
  for (const std::string method : {"at", "stats", "adain"}) {
    auto c2 = cfg;
    c2.loss.at_beta *= 2, c2.loss.stats_weight *= 2, c2.loss.adain_weight *= 2;
    const double l1 = loss_with(method, cfg), l2 = loss_with(method, c2);
    INFO(method << ": CE " << ce << ", loss " << l1 << ", with twice the weight " << l2);
    CHECK(l1 > ce);
    CHECK(l2 - ce == Approx(2 * (l1 - ce)).epsilon(1e-4));
  }
}

TEST_CASE("fashion_kd: FFSD's cohort learns a fixed batch", "[fashion_kd][ffsd]") {
  // 20 images: a fixed random template per class plus noise. (With 3-4 channels, mutual
  // learning at this learning rate can kill every ReLU of a student; 6-8 channels are robust.)
  distill_test::rng r(83);
  auto cfg = tiny_config();
  cfg.student = {{6, 8}, {16}, 2};
  cfg.student_opt.lr = 0.02;
  cfg.loss.ffsd_warmup_epochs = 0;  // full weights from the start
  batch_data data(20, r);
  const auto templates = r.normals<float>(10 * 784);
  for (int i = 0; i < 20; ++i) {
    data.labels[static_cast<std::size_t>(i)] = i % 10;
    for (int k = 0; k < 784; ++k)
      data.x.data()[i * 784 + k] = templates[static_cast<std::size_t>((i % 10) * 784 + k)] + 0.5f * data.images[static_cast<std::size_t>(i * 784 + k)];
  }
  const distill::cpu ctx{1};
  ffsd_learner f(cfg, 9, 80);
  REQUIRE(f.evaluated().size() == 3);  // leader and two common students
  std::vector<double> losses;
  for (int i = 0; i < 80; ++i) losses.push_back(f.train_step(ctx, data.view(), nullptr, {0, i, 80}));
  for (double l : losses) REQUIRE(std::isfinite(l));
  INFO("first " << losses.front() << ", last " << losses.back());  // the decoders' terms do not vanish
  CHECK(losses.back() < losses.front());
  // and every deployed network now fits the batch
  for (const auto& e : f.evaluated()) {
    e.net->set_training(false);
    REQUIRE(e.net->forward(ctx, data.view().images).ok());
    std::vector<std::int32_t> pred(20);
    REQUIRE(nn::argmax_rows(ctx, e.net->logits().cview<2>(), distill::make_view(pred.data(), 20)).ok());
    int right = 0;
    for (int i = 0; i < 20; ++i) right += pred[static_cast<std::size_t>(i)] == data.labels[static_cast<std::size_t>(i)];
    INFO(e.name);
    CHECK(right >= 18);
  }
}

TEST_CASE("fashion_kd: a learner restored from its checkpoint continues exactly", "[fashion_kd][checkpoint]") {
  distill_test::rng r(84);
  const auto cfg = tiny_config();
  batch_data data(4, r);
  const distill::cpu ctx{1};
  for (const std::string method : {"ce", "ce with dropout", "ffsd"}) {
    DYNAMIC_SECTION(method) {
      auto make = [&]() -> std::unique_ptr<learner> {
        if (method == "ffsd") return std::make_unique<ffsd_learner>(cfg, 4, 50);
        run_config c = cfg;
        if (method == "ce with dropout") c.student.dropout = 0.3;  // the mask counters must be restored too
        return std::make_unique<student_learner>("ce", c, 4, 50, nullptr);
      };
      auto a = make(), b = make();
      for (int i = 0; i < 3; ++i) a->train_step(ctx, data.view(), nullptr, {0, i, 10});
      nn::checkpoint ck;
      a->save(ck);
      b->load(ck);  // b: fresh weights replaced by a's, optimiser state and step counts too
      const double la = a->train_step(ctx, data.view(), nullptr, {0, 3, 10});
      const double lb = b->train_step(ctx, data.view(), nullptr, {0, 3, 10});
      CHECK(la == lb);
      const auto pa = a->parameters(), pb = b->parameters();
      REQUIRE(pa.size() == pb.size());
      bool same = true;
      for (std::size_t i = 0; i < pa.size(); ++i) same &= pa[i]->value.to_host() == pb[i]->value.to_host();
      CHECK(same);
    }
  }
}

TEST_CASE("fashion_kd: the default students have at most a tenth of the teacher's parameters", "[fashion_kd][model]") {
  const run_config c;
  staged_net teacher("teacher", c.teacher, 1), student("student", c.student, 1), mlp("mlp", c.mlp, 1);
  const auto t = count_learnt(teacher.parameters()), s = count_learnt(student.parameters()), m = count_learnt(mlp.parameters());
  INFO("teacher " << t << ", student " << s << ", MLP " << m);
  CHECK(t > 800000);
  CHECK(10 * s <= t);
  CHECK(10 * m <= t);
}
