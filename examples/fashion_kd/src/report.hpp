// SPDX-License-Identifier: MIT
#pragma once
// The results of a run: the printed table (the PyTorch peer prints the same layout), the paired
// comparisons the README discusses, results.json, curves.csv, the accuracy plot (gnuplot), the
// confusion matrices and the grid of misclassified test images (PNG).
//
// Accuracies are fractions in [0, 1] in the code, results.json and curves.csv, and percentages
// in the table and pictures. Over seeds: mean ± sample standard deviation (examples::summarize).
// "Paired" differences: every method of a seed starts from the same student initialisation and
// sees the same batches, so method A − method B is computed per seed, then summarised.

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "../../common/fashion_mnist.hpp"
#include "../../common/image.hpp"
#include "../../common/results.hpp"

namespace fkd {

using examples::mean_std;
using examples::results_json_t;

/// One training run of one table row (a method, or a part of FFSD) for one seed.
struct seed_run {
  std::uint64_t seed = 0;
  double val = 0, test = 0;           ///< accuracy after the last epoch
  double train_seconds = 0;           ///< training steps (+ the teacher's forward passes it needed)
  int epochs = 0;
  std::int64_t images_per_epoch = 0;
  double seconds_per_epoch() const { return epochs ? train_seconds / epochs : 0; }
  double images_per_second() const { return train_seconds > 0 ? static_cast<double>(images_per_epoch) * epochs / train_seconds : 0; }
};

/// A row of the table.
struct row_result {
  std::string key, title;
  std::int64_t parameters = 0;  ///< of the deployed network
  std::vector<seed_run> runs;
};

/// One evaluation after an epoch.
struct curve_point {
  std::string row;
  std::uint64_t seed = 0;
  int epoch = 0;  // 1-based
  double val = 0, test = 0, train_seconds = 0;
};

template <class F>
mean_std summarize_runs(const row_result& r, F f) {
  std::vector<double> v;
  for (const auto& s : r.runs) v.push_back(f(s));
  return examples::summarize(v);
}

/// "862,346"
inline std::string thousands(std::int64_t n) {
  std::string s = std::to_string(n), out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

/// The results table. `heading` names the device and threads.
inline std::string format_table(std::span<const row_result> rows, const std::string& heading) {
  using namespace examples::table;
  std::size_t seeds = 0;
  for (const auto& r : rows) seeds = std::max(seeds, r.runs.size());
  const std::vector<std::string> titles = {"method", "params", "val acc (%)", "test acc (%)", "s/epoch", "img/s"};
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    const auto ips = summarize_runs(r, [](const seed_run& s) { return s.images_per_second(); });
    const auto spe = summarize_runs(r, [](const seed_run& s) { return s.seconds_per_epoch(); });
    std::string spe_cell = spe.n ? fixed(spe.mean, spe.mean >= 100 ? 0 : 1) + (std::isnan(spe.stddev) ? "" : " ± " + fixed(spe.stddev, spe.mean >= 100 ? 0 : 1)) : "n/a";
    cells.push_back({r.title, thousands(r.parameters), percent_cell(summarize_runs(r, [](const seed_run& s) { return s.val; }), 2),
                     percent_cell(summarize_runs(r, [](const seed_run& s) { return s.test; }), 2), spe_cell, ips.n ? fixed(ips.mean, 0) : "n/a"});
  }
  std::vector<std::size_t> w(titles.size());
  for (std::size_t k = 0; k < titles.size(); ++k) {
    w[k] = display_width(titles[k]);
    for (const auto& c : cells) w[k] = std::max(w[k], display_width(c[k]));
  }
  std::ostringstream os;
  os << "Fashion-MNIST accuracy, mean ± std over " << seeds << (seeds == 1 ? " seed" : " seeds") << "; " << heading << "\n";
  std::string head = pad_right(titles[0], w[0]);
  for (std::size_t k = 1; k < titles.size(); ++k) head += "  " + pad_left(titles[k], w[k]);
  os << head << "\n" << std::string(display_width(head), '-') << "\n";
  for (const auto& c : cells) {
    std::string line = pad_right(c[0], w[0]);
    for (std::size_t k = 1; k < c.size(); ++k) line += "  " + pad_left(c[k], w[k]);
    os << line << "\n";
  }
  return os.str();
}

/// Per-seed differences of test accuracy a − b (seeds matched), summarised.
inline mean_std paired_difference(const row_result& a, const row_result& b) {
  std::vector<double> d;
  for (const auto& ra : a.runs)
    for (const auto& rb : b.runs)
      if (ra.seed == rb.seed) d.push_back(ra.test - rb.test);
  return examples::summarize(d);
}

inline const row_result* find_row(std::span<const row_result> rows, const std::string& key) {
  for (const auto& r : rows)
    if (r.key == key) return &r;
  return nullptr;
}

/// The comparisons the README reports, as text lines (only those whose rows were run).
inline std::string format_comparisons(std::span<const row_result> rows) {
  using examples::table::fixed;
  const std::pair<const char*, const char*> pairs[] = {{"kd", "ce"},       {"dkd", "ce"},    {"at", "ce"},          {"at_kd", "kd"},
                                                       {"stats", "ce"},    {"adain", "ce"},  {"adain", "stats"},    {"adain", "kd"},
                                                       {"ffsd_leader", "ce"}, {"ffsd_leader", "ffsd_students"}, {"mlp_kd", "mlp_ce"}};
  std::ostringstream os;
  os << "Paired test-accuracy differences (same seed: same initialisation and batches), mean ± std over seeds, in points:\n";
  for (const auto& [a, b] : pairs) {
    const row_result *ra = find_row(rows, a), *rb = find_row(rows, b);
    if (!ra || !rb) continue;
    const mean_std d = paired_difference(*ra, *rb);
    const mean_std sa = summarize_runs(*ra, [](const seed_run& s) { return s.test; });
    const mean_std sb = summarize_runs(*rb, [](const seed_run& s) { return s.test; });
    const double spread = std::max(std::isnan(sa.stddev) ? 0.0 : sa.stddev, std::isnan(sb.stddev) ? 0.0 : sb.stddev);
    os << "  " << ra->title << " - " << rb->title << ": " << (d.mean >= 0 ? "+" : "") << fixed(100 * d.mean, 2);
    if (!std::isnan(d.stddev)) os << " ± " << fixed(100 * d.stddev, 2);
    if (d.n > 1) os << (std::fabs(d.mean) > spread ? "  (larger than the seeds' spread, " : "  (within the seeds' spread, ") << fixed(100 * spread, 2) << ")";
    os << "\n";
  }
  return os.str();
}

// ---- files -----------------------------------------------------------------------------------------

inline results_json_t to_json(const row_result& r) {
  results_json_t j;
  j["key"] = r.key, j["title"] = r.title, j["parameters"] = r.parameters;
  j["val_accuracy"] = examples::to_json(summarize_runs(r, [](const seed_run& s) { return s.val; }));
  j["test_accuracy"] = examples::to_json(summarize_runs(r, [](const seed_run& s) { return s.test; }));
  j["seconds_per_epoch"] = examples::to_json(summarize_runs(r, [](const seed_run& s) { return s.seconds_per_epoch(); }));
  j["images_per_second"] = examples::to_json(summarize_runs(r, [](const seed_run& s) { return s.images_per_second(); }));
  j["seeds"] = results_json_t::array();
  for (const auto& s : r.runs)
    j["seeds"].push_back({{"seed", s.seed}, {"val_accuracy", s.val}, {"test_accuracy", s.test}, {"train_seconds", s.train_seconds},
                          {"epochs", s.epochs}, {"seconds_per_epoch", s.seconds_per_epoch()}, {"images_per_second", s.images_per_second()}});
  return j;
}

inline void write_results_json(const std::filesystem::path& path, const results_json_t& config, const std::string& device, const row_result& teacher,
                               std::span<const row_result> rows) {
  results_json_t j;
  j["config"] = config;
  j["device"] = device;
  j["accuracy_unit"] = "fraction of images classified correctly, in [0, 1]";
  j["std_definition"] = "sample standard deviation over seeds (n - 1); null with one seed";
  j["timing"] = "train_seconds: the method's own training steps plus, for methods with a teacher, the teacher's forward passes on the same "
                "batches (computed once per batch and shared by the methods of a seed); evaluation excluded";
  j["teacher"] = to_json(teacher);
  j["rows"] = results_json_t::array();
  for (const auto& r : rows) j["rows"].push_back(to_json(r));
  examples::write_text_file(path, j.dump(2) + "\n");
}

inline void write_curves_csv(const std::filesystem::path& path, std::span<const curve_point> points) {
  std::string out = "row,seed,epoch,val_accuracy,test_accuracy,train_seconds\n";
  char buf[160];
  for (const auto& p : points) {
    std::snprintf(buf, sizeof buf, ",%llu,%d,%.6g,%.6g,%.3f\n", static_cast<unsigned long long>(p.seed), p.epoch, p.val, p.test, p.train_seconds);
    out += examples::csv_field(p.row) + buf;
  }
  examples::write_text_file(path, out);
}

/// Test accuracy per epoch, mean over seeds, one line per row (gnuplot; script kept as curves.gp).
inline examples::plot_result plot_curves(std::span<const curve_point> points, std::span<const row_result> rows, const std::filesystem::path& png) {
  std::ostringstream os;
  os << "# Fashion-MNIST test accuracy per epoch, mean over seeds (written by fashion_kd; rerun: gnuplot <this file>)\n"
     << examples::gnuplot::png_terminal(1100, 640, png);
  std::vector<std::string> titles;
  int block = 0;
  double lo = 1.0;
  for (const auto& p : points) lo = std::min(lo, p.test);
  std::vector<std::string> keys;
  for (const auto& p : points)
    if (std::find(keys.begin(), keys.end(), p.row) == keys.end()) keys.push_back(p.row);
  for (const auto& key : keys) {
    std::map<int, std::pair<double, int>> by_epoch;
    for (const auto& p : points)
      if (p.row == key) by_epoch[p.epoch].first += p.test, by_epoch[p.epoch].second += 1;
    os << "$m" << block++ << " << EOD\n";
    for (const auto& [e, s] : by_epoch) os << e << " " << 100 * s.first / s.second << "\n";
    os << "EOD\n";
    const row_result* r = find_row(rows, key);
    titles.push_back(r ? r->title : key);
  }
  os << "set title \"Fashion-MNIST: test accuracy per epoch (mean over seeds)\"\nset xlabel \"epoch\"\nset ylabel \"test accuracy (%)\"\n"
     << "set grid\nset key outside right\nset yrange [" << std::max(0.0, std::floor(100 * lo) - 1) << ":100]\nplot ";
  if (keys.empty()) os << "NaN notitle";
  for (std::size_t i = 0; i < keys.size(); ++i)
    os << (i ? ", \\\n     " : "") << "$m" << i << " using 1:2 with linespoints lw 2 title " << examples::gnuplot::double_quoted(titles[i]);
  os << "\nset output\n";
  return examples::run_gnuplot(os.str(), png, "gnuplot", "curves.csv");
}

// ---- pictures --------------------------------------------------------------------------------------

using confusion = std::array<std::array<std::int64_t, examples::fashion_classes>, examples::fashion_classes>;  // [truth][prediction]

inline confusion confusion_of(std::span<const std::uint8_t> truth, std::span<const std::int32_t> predicted) {
  confusion m{};
  for (std::size_t i = 0; i < truth.size(); ++i) ++m[truth[i]][static_cast<std::size_t>(predicted[i])];
  return m;
}

/// A confusion matrix: rows = true class, columns = predicted class; each cell shows its count
/// (blank for 0),
/// shaded by the share of its row (blue on the diagonal, red elsewhere, stretched x4: errors are
/// rare).
inline examples::canvas render_confusion(const confusion& m, const std::string& title) {
  using namespace examples;
  constexpr int n = fashion_classes, cell = 58, label_w = 84;
  const int lh = text_line_height(1), top = 2 * text_line_height(2) + 4 * lh + 8, left = label_w + 8;
  const int width = std::max(left + n * cell + 16, text_width(title, 2) + 16);
  canvas img(width, top + n * cell + 16, white_rgb);
  draw_text(img, 8, 6, title, text_rgb, 2);
  draw_text(img, 8, 6 + text_line_height(2) + 4, "columns: predicted class, rows: true class", text_rgb, 1);
  auto name = [](int k) {  // break "T-shirt/top" after the slash so it wraps
    std::string s(fashion_class_names[static_cast<std::size_t>(k)]);
    if (const auto p = s.find('/'); p != std::string::npos) s.insert(p + 1, " ");
    return s;
  };
  for (int c = 0; c < n; ++c) {
    int y = top - 3 * lh - 4;
    for (auto& word : wrap_text(name(c), cell - 4, 1)) draw_text(img, left + c * cell + 2, y, word, text_rgb, 1), y += lh;
  }
  for (int r = 0; r < n; ++r) {
    draw_text(img, 6, top + r * cell + cell / 2 - lh / 2, std::string(fashion_class_names[static_cast<std::size_t>(r)]), text_rgb, 1);
    std::int64_t total = 0;
    for (int c = 0; c < n; ++c) total += m[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)];
    for (int c = 0; c < n; ++c) {
      const std::int64_t v = m[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)];
      const float share = total ? static_cast<float>(v) / static_cast<float>(total) : 0.0f;
      const float a = r == c ? share : std::min(1.0f, 4 * share);
      const rgb8 base = r == c ? rgb8{40, 90, 200} : rgb8{210, 40, 40};
      const rgb8 fill{static_cast<std::uint8_t>(255 + a * (base.r - 255)), static_cast<std::uint8_t>(255 + a * (base.g - 255)),
                      static_cast<std::uint8_t>(255 + a * (base.b - 255))};
      img.fill_rect(left + c * cell, top + r * cell, cell - 1, cell - 1, fill);
      if (v == 0) continue;  // blank: easier to read than a column of zeros
      const std::string t = std::to_string(v);
      draw_text(img, left + c * cell + (cell - text_width(t, 2)) / 2, top + r * cell + cell / 2 - text_line_height(2) / 2, t,
                a > 0.6f ? white_rgb : text_rgb, 2);
    }
  }
  return img;
}

/// One misclassified test image: the picture (x4), the truth and both models' answers.
struct error_panel {
  std::span<const std::uint8_t> pixels;  // 28 x 28 grey
  int truth = 0, student = 0, teacher = 0;
};

/// A titled grid of misclassified test images with the truth, the student's answer and the
/// teacher's (green when right, red when wrong).
inline examples::canvas render_errors(std::span<const error_panel> panels, const std::string& title, int columns) {
  using namespace examples;
  std::vector<canvas> parts;
  auto name = [](int k) { return std::string(fashion_class_names[static_cast<std::size_t>(k)]); };
  for (const auto& p : panels) {
    const int scale = 4, side = fashion_side * scale, lh = text_line_height(1);
    canvas c(side + 16, side + 12 + 3 * lh + 8, white_rgb);
    std::vector<std::uint8_t> rgb(static_cast<std::size_t>(fashion_pixels) * 3);
    for (std::size_t i = 0; i < static_cast<std::size_t>(fashion_pixels); ++i) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = p.pixels[i];
    c.draw_image(8, 8, rgb, fashion_side, fashion_side, scale);
    int y = side + 12;
    draw_text(c, 8, y, "true: " + name(p.truth), text_rgb, 1), y += lh;
    draw_text(c, 8, y, "student: " + name(p.student), wrong_rgb, 1), y += lh;
    draw_text(c, 8, y, "teacher: " + name(p.teacher), p.teacher == p.truth ? right_rgb : wrong_rgb, 1);
    parts.push_back(std::move(c));
  }
  if (parts.empty()) {
    canvas c(300, 40, white_rgb);
    draw_text(c, 8, 12, "no misclassified test image", text_rgb, 1);
    parts.push_back(std::move(c));
  }
  const canvas grid = tile(parts, columns);
  canvas img(std::max(grid.width(), text_width(title, 2) + 16), grid.height() + text_line_height(2) + 16, white_rgb);
  draw_text(img, 8, 8, title, text_rgb, 2);
  img.paste(grid, 0, text_line_height(2) + 16);
  return img;
}

}  // namespace fkd
