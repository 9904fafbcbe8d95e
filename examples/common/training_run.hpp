// SPDX-License-Identifier: MIT
#pragma once
// One training run of an example (a network, a seed, a method): AdamW with a per-step cosine
// schedule, a progress bar, a validation number after every epoch, and a checkpoint after every
// epoch (parameters, batch-norm statistics, optimiser state, the run's log and any extra state
// such as a queue of keys, written atomically with a checksum by nn::checkpoint). With --resume a
// run whose checkpoint matches its fingerprint continues after its last epoch (a finished run is
// not retrained); when batches and everything random depend only on (seed, epoch, index), the
// result is the same as without the interruption. Shared by scene_kd and distillvlm.

#include <chrono>
#include <filesystem>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/core/context.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/schedule.hpp"
#include "progress.hpp"
#include "results.hpp"

namespace examples {

struct epoch_record {
  int epoch = 0;
  double train_loss = 0, validation = 0, seconds = 0;  ///< seconds: training time so far
};

/// A run's identity and log.
struct run_log {
  std::string name;       ///< e.g. "context-seed1"
  std::string metric;     ///< what `validation` measures, e.g. "top-1"
  bool percent = true;    ///< print `validation` as a percentage
  int epochs_done = 0;
  double seconds = 0;     ///< training time (evaluations excluded)
  std::vector<epoch_record> curve;
};

class training_run {
 public:
  using json = nlohmann::ordered_json;
  using param_list = distill::nn::parameter_list<float, distill::host_space>;

  /// `fingerprint`: everything that decides the run's result (a checkpoint is resumed only when it
  /// matches); `o`: the example's optimiser settings (`lr`, `weight_decay`, `epochs`).
  template <class OptimiserConfig>
  training_run(std::string name, std::string metric, const std::filesystem::path& checkpoint, json fingerprint, param_list params,
               const OptimiserConfig& o, distill::index_t steps_per_epoch, bool percent = true)
      : checkpoint_(checkpoint),
        fingerprint_(std::move(fingerprint)),
        params_(std::move(params)),
        opt_(params_, distill::nn::adam_options{o.lr, 0.9, 0.999, 1e-8, o.weight_decay, true, 0.0}),
        schedule_(distill::nn::lr_schedule::cosine(o.lr, steps_per_epoch * o.epochs)),
        epochs_(o.epochs),
        steps_(steps_per_epoch) {
    log_.name = std::move(name);
    log_.metric = std::move(metric);
    log_.percent = percent;
    if (steps_ <= 0) throw std::runtime_error(log_.name + ": fewer training examples than one step");
  }

  /// Extra state saved in and restored from the checkpoint (e.g. a queue of keys); may be empty.
  std::function<void(distill::nn::checkpoint&)> save_extra;
  std::function<distill::status(const distill::nn::checkpoint&)> restore_extra;

  const run_log& log() const { return log_; }
  bool finished() const { return log_.epochs_done >= epochs_; }

  /// Restores the run from its checkpoint when it exists and matches; says why when it does not.
  void try_resume() {
    namespace fs = std::filesystem;
    if (!fs::exists(checkpoint_)) return;
    distill::nn::checkpoint ck;
    std::string meta, why;
    distill::status st = distill::nn::checkpoint::load(checkpoint_.string(), ck);
    if (st.ok()) st = ck.get_string("meta", meta);
    if (!st.ok()) why = st.to_string();
    json j;
    if (why.empty()) {
      j = json::parse(meta, nullptr, false);
      if (j.is_discarded() || j.value("fingerprint", json()) != fingerprint_) why = "it was made with another configuration";
    }
    if (why.empty()) st = ck.restore_parameters(params_);
    if (why.empty() && st.ok()) st = ck.restore_optimizer(opt_);
    if (why.empty() && st.ok() && restore_extra) st = restore_extra(ck);
    if (why.empty() && !st.ok()) why = st.to_string();
    if (!why.empty()) {
      std::cerr << "  not resuming " << log_.name << " from " << checkpoint_.string() << ": " << why << "\n";
      return;
    }
    log_.epochs_done = j.at("epochs_done").get<int>();
    log_.seconds = j.at("seconds").get<double>();
    for (const auto& e : j.at("curve"))
      log_.curve.push_back({e.at("epoch").get<int>(), e.at("train_loss").get<double>(), e.at("validation").get<double>(), e.at("seconds").get<double>()});
    std::cerr << "  resumed " << log_.name << " after epoch " << log_.epochs_done << (finished() ? " (finished)" : "") << "\n";
  }

  /// Trains the remaining epochs. step(epoch, step) runs one batch's forward and backward
  /// (gradients accumulate into the zeroed parameters) and returns its loss; validate() returns
  /// the validation number after an epoch.
  void run(const distill::cpu& ctx, const std::function<double(int, distill::index_t)>& step, const std::function<double()>& validate,
           const std::function<void(bool)>& set_training) {
    using clock = std::chrono::steady_clock;
    for (int epoch = log_.epochs_done; epoch < epochs_; ++epoch) {
      progress_options bar_options;
      bar_options.unit = "step";
      progress_bar bar(log_.name + " epoch " + std::to_string(epoch + 1) + "/" + std::to_string(epochs_), steps_, bar_options);
      const auto t0 = clock::now();
      double loss = 0;
      set_training(true);
      for (distill::index_t s = 0; s < steps_; ++s) {
        distill::throw_if_error(distill::nn::zero_grad(ctx, params_));
        loss += step(epoch, s);
        opt_.options.lr = schedule_(static_cast<distill::index_t>(epoch) * steps_ + s);
        distill::throw_if_error(opt_.step(ctx));
        bar.advance();
        bar.set_suffix("loss " + table::fixed(loss / static_cast<double>(s + 1), 4));
      }
      bar.finish();
      log_.seconds += std::chrono::duration<double>(clock::now() - t0).count();
      set_training(false);
      const double val = validate();
      log_.curve.push_back({epoch + 1, loss / static_cast<double>(steps_), val, log_.seconds});
      log_.epochs_done = epoch + 1;
      std::cerr << "  " << log_.name << ": epoch " << epoch + 1 << " loss " << table::fixed(loss / static_cast<double>(steps_), 4)
                << ", validation " << log_.metric << " " << (log_.percent ? table::fixed(100 * val, 2) + "%" : table::fixed(val, 4)) << " ("
                << table::fixed(log_.seconds, 1)
                << " s)\n";
      save();
    }
    set_training(false);
  }

 private:
  void save() const {
    distill::nn::checkpoint ck;
    distill::throw_if_error(ck.add_parameters(params_));
    distill::throw_if_error(ck.add_optimizer(const_cast<distill::nn::adamw<float>&>(opt_)));
    json j;
    j["fingerprint"] = fingerprint_, j["epochs_done"] = log_.epochs_done, j["seconds"] = log_.seconds;
    j["curve"] = json::array();
    for (const auto& e : log_.curve)
      j["curve"].push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss}, {"validation", e.validation}, {"seconds", e.seconds}});
    ck.put_string("meta", j.dump());
    if (save_extra) save_extra(ck);
    if (const distill::status st = ck.save(checkpoint_.string()); !st.ok()) std::cerr << "  warning: checkpoint not saved: " << st.to_string() << "\n";
  }

  std::filesystem::path checkpoint_;
  json fingerprint_;
  param_list params_;
  distill::nn::adamw<float> opt_;
  distill::nn::lr_schedule schedule_;
  int epochs_;
  distill::index_t steps_;
  run_log log_;
};

}  // namespace examples
