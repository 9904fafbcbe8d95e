// SPDX-License-Identifier: MIT
#pragma once
// The training loop shared by the teacher and the students: every member (a learner) of a run
// gets the same batches in the same order; the teacher's forward pass runs once per batch for
// all members that learn from it; after each epoch every deployed network is evaluated on the
// validation and test sets and each member is checkpointed (atomically, with a checksum), so
// --resume continues exactly where a run stopped. Data-parallel (common/replicas.hpp): every rank
// takes its B / P rows of each global batch, gradients are averaged before each step, the
// evaluation is split over the ranks, and rank 0 alone shows progress and writes checkpoints.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../common/fashion_mnist.hpp"
#include "../../common/progress.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "../../common/replicas.hpp"
#include "learner.hpp"
#include "report.hpp"

namespace fkd {

/// The images a run uses.
struct data_sets {
  examples::fashion_mnist d;
  std::vector<std::uint32_t> teacher_train, student_train, validation, test;
  examples::pixel_normalization norm;
};

/// A learner in a run, with its bookkeeping.
struct member {
  std::string key;  ///< method, or "teacher"
  std::unique_ptr<learner> model;
  bool uses_teacher = false;
  std::string checkpoint;
  int start_epoch = 0;              ///< epochs already done (from a checkpoint)
  double seconds = 0;               ///< training time so far (own steps + teacher forwards it used)
  std::vector<curve_point> curve;   ///< per evaluated network and epoch
};

/// Predicted classes of `net` (evaluation mode) on the images `ids`.
inline std::vector<std::int32_t> predict(const distill::cpu& ctx, staged_net& net, const examples::labelled_images& data,
                                         std::span<const std::uint32_t> ids, const examples::pixel_normalization& norm, int batch = 500) {
  std::vector<std::int32_t> out(ids.size());
  tensor x;
  std::vector<std::int64_t> y;
  net.set_training(false);
  for (std::size_t first = 0; first < ids.size(); first += static_cast<std::size_t>(batch)) {
    const std::size_t n = std::min(ids.size() - first, static_cast<std::size_t>(batch));
    distill::throw_if_error(x.resize({static_cast<index_t>(n), 1, 28, 28}));
    y.resize(n);
    examples::fill_batch(data, ids.subspan(first, n), norm, {}, 0, 0, std::span<float>(x.data(), n * 784), y);
    distill::throw_if_error(net.forward(ctx, x.cview<4>()));
    distill::throw_if_error(nn::argmax_rows(ctx, net.logits().cview<2>(), distill::make_view(out.data() + first, static_cast<index_t>(n))));
  }
  net.set_training(true);
  return out;
}

/// Accuracy of `net` on the images `ids`, each rank predicting its share of them.
inline double accuracy(const distill::cpu& ctx, const examples::replicas& world, staged_net& net, const examples::labelled_images& data,
                       std::span<const std::uint32_t> ids, const examples::pixel_normalization& norm) {
  if (ids.empty()) return 0;
  const std::size_t P = static_cast<std::size_t>(world.size), r = static_cast<std::size_t>(world.rank);
  const auto mine = ids.subspan(ids.size() * r / P, ids.size() * (r + 1) / P - ids.size() * r / P);
  const auto predicted = predict(ctx, net, data, mine, norm);
  double right = 0;
  for (std::size_t i = 0; i < mine.size(); ++i) right += predicted[i] == data.labels[mine[i]];
  world.total(std::span<double>(&right, 1));
  return right / static_cast<double>(ids.size());
}

struct train_plan {
  std::span<const std::uint32_t> train_ids;
  examples::augmentation augment;
  int batch = 128, epochs = 1;
  std::uint64_t seed = 1;
  std::string label;          ///< for the progress bar
  nlohmann::json fingerprint; ///< what must match for a checkpoint to be resumed
};

/// Restores a member from its checkpoint when it exists and matches; says why when it does not.
inline void try_resume(member& m, const train_plan& plan) {
  namespace fs = std::filesystem;
  if (!fs::exists(m.checkpoint)) return;
  nn::checkpoint ck;
  distill::status st = nn::checkpoint::load(m.checkpoint, ck);
  std::string meta, why;
  if (st.ok()) st = ck.get_string("meta", meta);
  if (!st.ok()) why = st.to_string();
  nlohmann::json j;
  if (why.empty()) {
    j = nlohmann::json::parse(meta, nullptr, false);
    if (j.is_discarded() || j.value("fingerprint", nlohmann::json()) != plan.fingerprint) why = "it was made with another configuration";
  }
  if (why.empty()) {
    try {
      m.model->load(ck);
    } catch (const std::exception& e) {
      why = e.what();
    }
  }
  if (!why.empty()) {
    std::cerr << "  not resuming " << m.key << " from " << m.checkpoint << ": " << why << "\n";
    return;
  }
  m.start_epoch = j.at("epoch").get<int>();
  m.seconds = j.at("seconds").get<double>();
  for (const auto& p : j.at("curve"))
    m.curve.push_back({p.at("row"), p.at("seed"), p.at("epoch"), p.at("val"), p.at("test"), p.at("train_seconds")});
  std::cerr << "  resumed " << m.key << " after epoch " << m.start_epoch << "\n";
}

inline void save_member(const member& m, int epochs_done, const train_plan& plan) {
  nn::checkpoint ck;
  m.model->save(ck);
  nlohmann::json j;
  j["fingerprint"] = plan.fingerprint, j["epoch"] = epochs_done, j["seconds"] = m.seconds;
  j["curve"] = nlohmann::json::array();
  for (const auto& p : m.curve)
    j["curve"].push_back({{"row", p.row}, {"seed", p.seed}, {"epoch", p.epoch}, {"val", p.val}, {"test", p.test}, {"train_seconds", p.train_seconds}});
  ck.put_string("meta", j.dump());
  if (const distill::status st = ck.save(m.checkpoint); !st.ok()) std::cerr << "  warning: checkpoint not saved: " << st.to_string() << "\n";
}

/// Trains every member for plan.epochs (from its own start epoch), evaluating after each epoch.
/// `teacher` (evaluation mode, frozen) runs once per batch when a member needs it. plan.batch is
/// the global batch: each rank of `world` trains on its plan.batch / P rows of it.
inline void train_members(const distill::cpu& ctx, const examples::replicas& world, std::vector<member>& members, const train_plan& plan,
                          staged_net* teacher, const data_sets& data) {
  using clock = std::chrono::steady_clock;
  const std::size_t N = plan.train_ids.size(), B = static_cast<std::size_t>(plan.batch);
  const index_t steps = static_cast<index_t>(N / B);
  if (steps == 0) throw std::runtime_error(plan.label + ": fewer training images (" + std::to_string(N) + ") than one batch (" + std::to_string(B) + ")");
  if (B % static_cast<std::size_t>(world.size) != 0)  // batch norm's statistics need equal shares
    throw std::invalid_argument(plan.label + ": the batch (" + std::to_string(B) + ") must be a multiple of the " + std::to_string(world.size) + " ranks");
  const nn::replica share = world.share(B);
  const std::size_t Bl = world.count_of(B), first_row = world.first_of(B);
  if (world.data_parallel())
    for (auto& m : members) m.model->set_replica(share);
  int first_epoch = plan.epochs;
  for (const auto& m : members) first_epoch = std::min(first_epoch, m.start_epoch);
  tensor x({static_cast<index_t>(Bl), 1, 28, 28});
  std::vector<std::int64_t> y(Bl);
  std::vector<std::uint32_t> ids(Bl);
  for (int epoch = first_epoch; epoch < plan.epochs; ++epoch) {
    const auto order = examples::shuffled_order(N, plan.seed, static_cast<std::uint64_t>(epoch));
    std::optional<examples::progress_bar> bar;
    if (world.root())
      bar.emplace(plan.label + " epoch " + std::to_string(epoch + 1) + "/" + std::to_string(plan.epochs),
                  static_cast<std::int64_t>(steps) * static_cast<std::int64_t>(B), examples::progress_options{.unit = "img", .clock = {}});
    bool need_teacher = false;
    for (const auto& m : members) need_teacher |= m.start_epoch <= epoch && m.uses_teacher;
    double teacher_seconds = 0;
    std::vector<double> own(members.size(), 0.0), loss_sum(members.size(), 0.0);
    for (index_t s = 0; s < steps; ++s) {
      for (std::size_t i = 0; i < Bl; ++i) ids[i] = plan.train_ids[order[static_cast<std::size_t>(s) * B + first_row + i]];
      examples::fill_batch(data.d.train, ids, data.norm, plan.augment, plan.seed, static_cast<std::uint64_t>(epoch), std::span<float>(x.data(), Bl * 784), y);
      const batch b{x.cview<4>(), y};
      if (need_teacher) {
        const auto t0 = clock::now();
        distill::throw_if_error(teacher->forward(ctx, b.images));
        teacher_seconds += std::chrono::duration<double>(clock::now() - t0).count();
      }
      for (std::size_t k = 0; k < members.size(); ++k) {
        if (members[k].start_epoch > epoch) continue;
        const auto t0 = clock::now();
        learner& l = *members[k].model;
        loss_sum[k] += l.compute_gradients(ctx, b, members[k].uses_teacher ? teacher : nullptr, {epoch, s, steps});
        if (world.combine_gradients) world.combine_gradients(l.parameters(), 1.0 / world.size);
        l.step(ctx);
        own[k] += std::chrono::duration<double>(clock::now() - t0).count();
      }
      if (bar) bar->advance(static_cast<std::int64_t>(B));
    }
    if (bar) bar->finish();
    world.total(loss_sum);  // the mean over ranks of the local mean losses = the global batch's
    for (std::size_t k = 0; k < members.size(); ++k) {
      member& m = members[k];
      if (m.start_epoch > epoch) continue;
      m.seconds += own[k] + (m.uses_teacher ? teacher_seconds : 0.0);
      std::string line = "  " + m.key + ": loss " + examples::table::fixed(loss_sum[k] / world.size / static_cast<double>(steps), 4);
      for (const auto& e : m.model->evaluated()) {
        const double val = accuracy(ctx, world, *e.net, data.d.train, data.validation, data.norm);
        const double test = accuracy(ctx, world, *e.net, data.d.test, data.test, data.norm);
        m.curve.push_back({e.name, plan.seed, epoch + 1, val, test, m.seconds});
        line += " | " + e.name + " val " + examples::table::fixed(100 * val, 2) + "% test " + examples::table::fixed(100 * test, 2) + "%";
      }
      if (world.root()) {
        std::cerr << line << " (" << examples::table::fixed(own[k] + (m.uses_teacher ? teacher_seconds : 0.0), 1) << " s)\n";
        save_member(m, epoch + 1, plan);
      }
      m.start_epoch = epoch + 1;
    }
  }
}

}  // namespace fkd
