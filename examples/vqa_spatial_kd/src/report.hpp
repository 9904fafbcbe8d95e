// SPDX-License-Identifier: MIT
#pragma once
// Results of the Sort-of-CLEVR runs: accuracy per question type, the final table, results.json,
// curves.csv and a PNG plot of test accuracy per epoch (gnuplot).
//
// Metrics (9, in this order): the accuracy on each question type (shape, left, top, closest,
// furthest, count), then on all non-relational questions, all relational questions, and all
// questions. The kind accuracies are pooled over that kind's questions (correct / asked), as
// Santoro et al. report them; with the generator's balanced mix (4/3/3 subtypes per image) they
// are within a hair of the mean of the three subtype accuracies. Accuracies are fractions in
// [0, 1] in the code, results.json and curves.csv, and percentages in the printed table.
//
// Over seeds: mean and sample standard deviation (n − 1 in the denominator); with one seed the
// standard deviation is undefined: NaN in the code, null in results.json, omitted in the table.
// NaN values (a question type a test set did not ask) are left out of the mean.
//
// Files
//   results.json  {"config": <as given>, "accuracy_unit": ..., "std_definition": ..., "metrics": [9 names],
//                  "models": [{"name", "test_accuracy": {metric: {"mean", "std", "n"}},
//                              "train_seconds": {"mean", "std", "n"},
//                              "seeds": [{"seed", "test_accuracy": {metric: value}, "train_seconds"}]}]}
//   curves.csv    model,seed,epoch,train_loss,test_overall,test_non_relational,test_relational,seconds
//                 (one row per model, seed and epoch; train_loss = the epoch's mean training loss,
//                 written with 17 significant digits so that it identifies the run exactly;
//                 seconds = training time so far)
//   Both are written atomically (distill::write_file_atomically): a crash leaves the previous
//   file or the new one, never a truncated one.
//   curves.png    test accuracy per epoch (overall, non-relational, relational), mean over seeds,
//                 one line per model, drawn by gnuplot (pngcairo when gnuplot has it, else png);
//                 the script is kept beside it as curves.gp. Without gnuplot the plot is skipped
//                 with a message; everything else is still written.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../common/results.hpp"
#include "sort_of_clevr.hpp"

namespace vqa {

inline constexpr int metric_count = question_type_count + 3;
inline constexpr int metric_non_relational = question_type_count;  // index 6
inline constexpr int metric_relational = question_type_count + 1;  // index 7
inline constexpr int metric_overall = question_type_count + 2;     // index 8
inline constexpr std::array<std::string_view, metric_count> metric_keys = {
    "shape", "left", "top", "closest", "furthest", "count", "non_relational", "relational", "overall"};
inline constexpr std::array<std::string_view, metric_count> metric_titles = {
    "shape", "left", "top", "closest", "furthest", "count", "non-rel", "relational", "overall"};

using accuracy_metrics = std::array<double, metric_count>;

/// Counts right answers per question type.
struct accuracy_counter {
  std::array<std::int64_t, question_type_count> correct{}, asked{};

  void add(question_type t, bool right) {
    ++asked[static_cast<int>(t)];
    correct[static_cast<int>(t)] += right ? 1 : 0;
  }
  void add(const question& q, int predicted_answer) { add(q.type, predicted_answer == q.answer); }
  void merge(const accuracy_counter& o) {
    for (int t = 0; t < question_type_count; ++t) correct[t] += o.correct[t], asked[t] += o.asked[t];
  }
  /// Accuracy over the types [first, last); NaN when none was asked.
  double accuracy_over(int first, int last) const {
    std::int64_t c = 0, n = 0;
    for (int t = first; t < last; ++t) c += correct[t], n += asked[t];
    return n > 0 ? static_cast<double>(c) / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  }
  double accuracy(question_type t) const { return accuracy_over(static_cast<int>(t), static_cast<int>(t) + 1); }
  double non_relational() const { return accuracy_over(0, subtypes_per_kind); }
  double relational() const { return accuracy_over(subtypes_per_kind, question_type_count); }
  double overall() const { return accuracy_over(0, question_type_count); }
  accuracy_metrics metrics() const {
    accuracy_metrics m{};
    for (int t = 0; t < question_type_count; ++t) m[t] = accuracy(static_cast<question_type>(t));
    m[metric_non_relational] = non_relational();
    m[metric_relational] = relational();
    m[metric_overall] = overall();
    return m;
  }
};

struct seed_result {
  std::uint64_t seed = 0;
  accuracy_metrics test{};  // final test accuracies
  double train_seconds = 0;
};

/// One model's runs, one per seed.
struct model_result {
  std::string name;
  std::vector<seed_result> seeds;
};

using examples::mean_std;
using examples::summarize;

/// Mean ± std over a model's seeds of each metric.
inline std::array<mean_std, metric_count> summarize_accuracy(const model_result& m) {
  std::array<mean_std, metric_count> out;
  for (int k = 0; k < metric_count; ++k) {
    std::vector<double> v;
    for (const auto& s : m.seeds) v.push_back(s.test[k]);
    out[k] = summarize(v);
  }
  return out;
}

inline mean_std summarize_train_seconds(const model_result& m) {
  std::vector<double> v;
  for (const auto& s : m.seeds) v.push_back(s.train_seconds);
  return summarize(v);
}

// ---- the printed table ------------------------------------------------------------------------

namespace report_detail {
using namespace examples::table;
}  // namespace report_detail

/// The final table: test accuracy (%) per question type, the two kinds and overall, mean ± std
/// over seeds, and training time per seed, one row per model. Plain aligned text (UTF-8 "±").
inline std::string format_results_table(std::span<const model_result> models) {
  using namespace report_detail;
  std::size_t seeds = 0, name_w = 5;
  for (const auto& m : models) seeds = std::max(seeds, m.seeds.size()), name_w = std::max(name_w, display_width(m.name));
  name_w += 2;
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : models) {
    const auto acc = summarize_accuracy(m);
    std::vector<std::string> r;
    for (int k = 0; k < metric_count; ++k) r.push_back(percent_cell(acc[k]));
    r.push_back(seconds_cell(summarize_train_seconds(m)));
    rows.push_back(std::move(r));
  }
  std::vector<std::string> titles(metric_titles.begin(), metric_titles.end());
  titles.push_back("train time");
  std::vector<std::size_t> w(titles.size());
  for (std::size_t k = 0; k < titles.size(); ++k) {
    w[k] = display_width(titles[k]);
    for (const auto& r : rows) w[k] = std::max(w[k], display_width(r[k]));
  }
  // Groups: the three non-relational types | the three relational types | kinds and overall | time.
  auto sep = [](std::size_t k) { return (k == 3 || k == 6 || k == 9) ? " | " : "  "; };
  std::ostringstream os;
  os << "Test accuracy (%) by question type, mean ± std over " << seeds << (seeds == 1 ? " seed" : " seeds")
     << "; train time per seed\n";
  std::string group = pad_right("", name_w) + pad_right("non-relational", w[0] + w[1] + w[2] + 4) + " | " +
                      pad_right("relational", w[3] + w[4] + w[5] + 4) + " | " + pad_right("all", w[6] + w[7] + w[8] + 4) + " |";
  os << group << "\n";
  std::string head = pad_right("model", name_w);
  for (std::size_t k = 0; k < titles.size(); ++k) head += (k ? sep(k) : "") + pad_left(titles[k], w[k]);
  os << head << "\n" << std::string(display_width(head), '-') << "\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::string line = pad_right(models[i].name, name_w);
    for (std::size_t k = 0; k < rows[i].size(); ++k) line += (k ? sep(k) : "") + pad_left(rows[i][k], w[k]);
    os << line << "\n";
  }
  return os.str();
}

// ---- results.json -----------------------------------------------------------------------------

using examples::number_or_null;
using examples::results_json_t;
using examples::to_json;

/// results.json's contents: the configuration as given (a nlohmann::json or ordered_json), then
/// per model the summaries over seeds and each seed's numbers.
inline results_json_t results_json(const results_json_t& config, std::span<const model_result> models) {
  results_json_t j;
  j["config"] = config;
  j["accuracy_unit"] = "fraction of test questions answered correctly, in [0, 1]";
  j["std_definition"] = "sample standard deviation over seeds (n - 1); null with one seed";
  j["metrics"] = results_json_t::array();
  for (auto k : metric_keys) j["metrics"].push_back(std::string(k));
  j["models"] = results_json_t::array();
  for (const auto& m : models) {
    results_json_t jm;
    jm["name"] = m.name;
    const auto acc = summarize_accuracy(m);
    for (int k = 0; k < metric_count; ++k) jm["test_accuracy"][std::string(metric_keys[k])] = to_json(acc[k]);
    jm["train_seconds"] = to_json(summarize_train_seconds(m));
    jm["seeds"] = results_json_t::array();
    for (const auto& s : m.seeds) {
      results_json_t js;
      js["seed"] = s.seed;
      for (int k = 0; k < metric_count; ++k) js["test_accuracy"][std::string(metric_keys[k])] = number_or_null(s.test[k]);
      js["train_seconds"] = s.train_seconds;
      jm["seeds"].push_back(js);
    }
    j["models"].push_back(jm);
  }
  return j;
}

using examples::write_text_file;

inline void write_results_json(const std::filesystem::path& path, const results_json_t& config, std::span<const model_result> models) {
  write_text_file(path, results_json(config, models).dump(2) + "\n");
}

// ---- curves.csv -------------------------------------------------------------------------------

/// One evaluation on the test set after an epoch.
struct curve_point {
  std::string model;
  std::uint64_t seed = 0;
  int epoch = 0;  // 1-based
  double train_loss = 0;  // mean training loss of the epoch
  double overall = 0, non_relational = 0, relational = 0;
  double seconds = 0;  // training time so far
};

inline curve_point make_curve_point(std::string model, std::uint64_t seed, int epoch, double train_loss, const accuracy_metrics& m,
                                    double seconds) {
  return {std::move(model), seed, epoch, train_loss, m[metric_overall], m[metric_non_relational], m[metric_relational], seconds};
}

using examples::csv_field;

inline std::string curves_csv(std::span<const curve_point> points) {
  std::string out = "model,seed,epoch,train_loss,test_overall,test_non_relational,test_relational,seconds\n";
  char buf[200];
  for (const auto& p : points) {
    std::snprintf(buf, sizeof buf, ",%llu,%d,%.17g,%.6g,%.6g,%.6g,%.3f\n", static_cast<unsigned long long>(p.seed), p.epoch, p.train_loss,
                  p.overall, p.non_relational, p.relational, p.seconds);
    out += csv_field(p.model) + buf;
  }
  return out;
}

inline void write_curves_csv(const std::filesystem::path& path, std::span<const curve_point> points) {
  write_text_file(path, curves_csv(points));
}

// ---- the plot (gnuplot) -----------------------------------------------------------------------

/// Mean over seeds of each model's curve: model → (epoch → {overall, non-rel, rel}), models in
/// order of first appearance.
struct mean_curve {
  std::string model;
  std::map<int, std::array<double, 3>> by_epoch;
};

inline std::vector<mean_curve> mean_curves(std::span<const curve_point> points) {
  std::vector<mean_curve> out;
  std::vector<std::map<int, std::array<double, 4>>> sums;  // overall, non-rel, rel, count
  for (const auto& p : points) {
    auto it = std::find_if(out.begin(), out.end(), [&](const mean_curve& c) { return c.model == p.model; });
    if (it == out.end()) {
      out.push_back({p.model, {}});
      sums.emplace_back();
      it = out.end() - 1;
    }
    auto& s = sums[static_cast<std::size_t>(it - out.begin())][p.epoch];
    s[0] += p.overall, s[1] += p.non_relational, s[2] += p.relational, s[3] += 1;
  }
  for (std::size_t i = 0; i < out.size(); ++i)
    for (const auto& [epoch, s] : sums[i]) out[i].by_epoch[epoch] = {s[0] / s[3], s[1] / s[3], s[2] / s[3]};
  return out;
}


/// The gnuplot script that draws the mean curves into `png` (a self-contained file: the data are
/// inline datablocks). pngcairo is used when this gnuplot has it, the libgd png terminal otherwise.
inline std::string gnuplot_script(std::span<const curve_point> points, const std::filesystem::path& png) {
  const auto curves = mean_curves(points);
  std::ostringstream os;
  os << "# Sort-of-CLEVR test accuracy per epoch, mean over seeds (written by vqa_spatial_kd; rerun: gnuplot <this file>)\n"
     << examples::gnuplot::png_terminal(1500, 480, png);
  char buf[128];
  for (std::size_t i = 0; i < curves.size(); ++i) {
    os << "$m" << i << " << EOD\n";
    for (const auto& [epoch, v] : curves[i].by_epoch) {
      std::snprintf(buf, sizeof buf, "%d %.6g %.6g %.6g\n", epoch, v[0], v[1], v[2]);
      os << buf;
    }
    os << "EOD\n";
  }
  os << "set multiplot layout 1,3 title \"Sort-of-CLEVR: test accuracy per epoch (mean over seeds)\"\n"
     << "set xlabel \"epoch\"\nset ylabel \"accuracy (%)\"\nset yrange [0:100]\nset grid\nset key bottom right\n";
  const char* titles[3] = {"all questions", "non-relational", "relational"};
  for (int panel = 0; panel < 3; ++panel) {
    os << "set title \"" << titles[panel] << "\"\nplot ";
    if (curves.empty()) os << "NaN notitle";
    for (std::size_t i = 0; i < curves.size(); ++i)
      os << (i ? ", \\\n     " : "") << "$m" << i << " using 1:(100*$" << panel + 2 << ") with linespoints lw 2 title "
         << examples::gnuplot::double_quoted(curves[i].model);
    os << "\n";
  }
  os << "unset multiplot\nset output\n";
  return os.str();
}

using examples::plot_result;

/// Draws the mean test-accuracy curves into `png` with gnuplot, keeping the script beside it
/// (same name, .gp). Without gnuplot (or when it fails) nothing is thrown: the result says why.
inline plot_result plot_curves(std::span<const curve_point> points, const std::filesystem::path& png,
                               const std::string& gnuplot = "gnuplot") {
  return examples::run_gnuplot(gnuplot_script(points, png), png, gnuplot, "curves.csv");
}

}  // namespace vqa
