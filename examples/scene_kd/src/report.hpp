// SPDX-License-Identifier: MIT
#pragma once
// What scene_kd prints and writes: the tables (mean ± std over seeds, paired differences),
// results.json, curves.csv, gnuplot plots (top-k curves, per-class AP bars) and PNG pictures of
// scenes (the world, masked test scenes with the context model's guesses, degraded items, the
// teacher's boxes with the students' answers).

#include <array>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "../../common/image.hpp"
#include "../../common/results.hpp"
#include "../../common/scene_render.hpp"
#include "context_system.hpp"
#include "wsd_system.hpp"

namespace skd {

using examples::mean_std;
using examples::summarize;
namespace table = examples::table;

template <class R, class F>
mean_std over_seeds(const std::vector<R>& runs, F&& f) {
  std::vector<double> v;
  for (const auto& r : runs) v.push_back(f(r));
  return summarize(v);
}

/// An aligned text table: a header row and rows of cells (first column left-aligned).
inline std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w(header.size(), 0);
  for (std::size_t c = 0; c < header.size(); ++c) w[c] = table::display_width(header[c]);
  for (const auto& r : rows)
    for (std::size_t c = 0; c < r.size(); ++c) w[c] = std::max(w[c], table::display_width(r[c]));
  std::ostringstream os;
  auto line = [&](const std::vector<std::string>& r) {
    os << "| ";
    for (std::size_t c = 0; c < header.size(); ++c) os << (c == 0 ? table::pad_right(r[c], w[c]) : table::pad_left(r[c], w[c])) << " | ";
    os.seekp(-1, std::ios::cur);
    os << "\n";
  };
  line(header);
  os << "|";
  for (std::size_t c = 0; c < header.size(); ++c) os << (c == 0 ? ":" : "") << std::string(w[c] + (c == 0 ? 1 : 1), '-') << (c == 0 ? "" : ":") << "|";
  os << "\n";
  for (const auto& r : rows) line(r);
  return os.str();
}

inline std::string points_cell(const mean_std& m, int decimals = 1) {  // a difference in percentage points, with its sign
  if (m.n == 0) return "n/a";
  std::string s = (m.mean >= 0 ? "+" : "") + table::fixed(100 * m.mean, decimals);
  if (!std::isnan(m.stddev)) s += " ± " + table::fixed(100 * m.stddev, decimals);
  return s;
}

// ---- system A ---------------------------------------------------------------------------------

inline std::string context_topk_table(const std::vector<context_seed_result>& runs, const prior_baselines& priors) {
  std::vector<std::vector<std::string>> rows;
  for (int shape = 0; shape < 2; ++shape)
    for (int ooc = 0; ooc < 2; ++ooc) {
      const auto s = static_cast<std::size_t>(shape), o = static_cast<std::size_t>(ooc);
      const std::string what = std::string(examples::mask_shape_names[s]) + (ooc ? ", out of context" : ", in context");
      std::vector<std::string> r = {"context model: " + what, std::to_string(runs.front().topk[s][o].n)};
      for (int k = 0; k < topk_max; ++k) r.push_back(table::percent_cell(over_seeds(runs, [&](const context_seed_result& x) { return x.topk[s][o].acc[static_cast<std::size_t>(k)]; })));
      rows.push_back(r);
    }
  for (int ooc = 0; ooc < 2; ++ooc)
    for (int which = 0; which < 2; ++which) {
      const auto& t = which == 0 ? priors.class_prior : priors.slot_prior;
      std::vector<std::string> r = {std::string(which == 0 ? "class prior" : "slot prior (knows the slot)") + (ooc ? ", out of context" : ", in context"),
                                    std::to_string(t[0][static_cast<std::size_t>(ooc)].n)};
      for (int k = 0; k < topk_max; ++k) r.push_back(table::fixed(100 * t[0][static_cast<std::size_t>(ooc)].acc[static_cast<std::size_t>(k)], 1));
      rows.push_back(r);
    }
  return format_table({"masked item (test scenes)", "items", "top-1 %", "top-2 %", "top-3 %", "top-4 %", "top-5 %"}, rows);
}

inline std::string context_gap_lines(const std::vector<context_seed_result>& runs) {
  std::ostringstream os;
  for (int shape = 0; shape < 2; ++shape) {
    const auto s = static_cast<std::size_t>(shape);
    const auto gap1 = over_seeds(runs, [&](const context_seed_result& x) { return x.topk[s][1].acc[0] - x.topk[s][0].acc[0]; });
    const auto gap3 = over_seeds(runs, [&](const context_seed_result& x) { return x.topk[s][1].acc[2] - x.topk[s][0].acc[2]; });
    os << "out of context vs in context, " << examples::mask_shape_names[s] << " masks: top-1 " << points_cell(gap1) << " points, top-3 " << points_cell(gap3)
       << " points\n";
  }
  return os.str();
}

inline std::string recogniser_table(const std::vector<context_seed_result>& runs) {
  std::vector<std::vector<std::string>> rows;
  auto row_of = [&](const std::string& title, const std::function<const recogniser_result&(const context_seed_result&)>& get) {
    std::vector<std::string> r = {title, table::percent_cell(over_seeds(runs, [&](const auto& x) { return get(x).clean_in.acc; })),
                                  table::percent_cell(over_seeds(runs, [&](const auto& x) { return get(x).clean_out.acc; }))};
    for (std::size_t d = 0; d < degradations.size(); ++d) r.push_back(table::percent_cell(over_seeds(runs, [&](const auto& x) { return get(x).degraded_in[d].acc; })));
    r.push_back(table::percent_cell(over_seeds(runs, [&](const auto& x) {
      double s = 0;
      for (const auto& c : get(x).degraded_in) s += c.acc;
      return s / 3;
    })));
    r.push_back(table::percent_cell(over_seeds(runs, [&](const auto& x) {
      double right = 0, n = 0;
      for (const auto& c : get(x).degraded_out) right += c.acc * static_cast<double>(c.n), n += static_cast<double>(c.n);
      return n > 0 ? right / n : std::nan("");
    })));
    rows.push_back(r);
  };
  row_of("recogniser (labels only)", [](const context_seed_result& x) -> const recogniser_result& { return x.plain; });
  row_of("recogniser + context teacher", [](const context_seed_result& x) -> const recogniser_result& { return x.distilled; });
  // paired differences, seed by seed
  std::vector<std::string> d = {"difference (paired)", points_cell(over_seeds(runs, [](const auto& x) { return x.distilled.clean_in.acc - x.plain.clean_in.acc; })),
                                points_cell(over_seeds(runs, [](const auto& x) { return x.distilled.clean_out.acc - x.plain.clean_out.acc; }))};
  for (std::size_t k = 0; k < degradations.size(); ++k)
    d.push_back(points_cell(over_seeds(runs, [&](const auto& x) { return x.distilled.degraded_in[k].acc - x.plain.degraded_in[k].acc; })));
  d.push_back(points_cell(over_seeds(runs, [](const auto& x) {
    double s = 0;
    for (std::size_t k = 0; k < 3; ++k) s += x.distilled.degraded_in[k].acc - x.plain.degraded_in[k].acc;
    return s / 3;
  })));
  d.push_back(points_cell(over_seeds(runs, [](const auto& x) {
    double s = 0, n = 0;
    for (std::size_t k = 0; k < 3; ++k) s += (x.distilled.degraded_out[k].acc - x.plain.degraded_out[k].acc) * double(x.plain.degraded_out[k].n), n += double(x.plain.degraded_out[k].n);
    return n > 0 ? s / n : std::nan("");
  })));
  rows.push_back(d);
  const auto& f = runs.front().plain;
  return format_table({"test items (accuracy %)", "clean, in ctx (" + std::to_string(f.clean_in.n) + ")", "clean, out of ctx (" + std::to_string(f.clean_out.n) + ")",
                       "noise (" + std::to_string(f.degraded_in[0].n) + ")", "blur (" + std::to_string(f.degraded_in[1].n) + ")",
                       "occlusion (" + std::to_string(f.degraded_in[2].n) + ")", "degraded mean", "degraded, out of ctx"},
                      rows);
}

// ---- system B ---------------------------------------------------------------------------------

/// Where the teacher's top box of each present test class lies.
inline std::string top_box_line(const std::vector<wsd_seed_result>& runs) {
  std::string s = "The teacher's mAP on the students' training scenes: " + table::percent_cell(over_seeds(runs, [](const auto& x) { return x.teacher_train_map; })) +
                  "%.\nThe teacher's top box of each present class (test scenes):";
  for (int k = 0; k < top_box_kinds; ++k)
    s += std::string(k ? "," : "") + " " + top_box_kind_names[static_cast<std::size_t>(k)] + " " +
         table::percent_cell(over_seeds(runs, [&](const auto& x) { return x.teacher_top_boxes[static_cast<std::size_t>(k)]; })) + "%";
  return s + "\n";
}

inline std::string wsd_table(const std::vector<wsd_seed_result>& runs, double recall) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"WSDDN teacher", table::percent_cell(over_seeds(runs, [](const auto& x) { return x.teacher_map; })),
                  table::percent_cell(over_seeds(runs, [](const auto& x) { return x.teacher_validation; })), "",
                  table::percent_cell(over_seeds(runs, [](const auto& x) { return x.teacher_corloc; })),
                  table::percent_cell(over_seeds(runs, [](const auto& x) { return x.teacher_validation_corloc; })),
                  table::percent_cell(over_seeds(runs, [](const auto& x) { return x.teacher_ap50; }))});
  for (std::size_t a = 0; a < student_arms.size(); ++a)
    rows.push_back({arm_title(a), table::percent_cell(over_seeds(runs, [&](const auto& x) { return x.students[a].map; })),
                    table::percent_cell(over_seeds(runs, [&](const auto& x) { return x.students[a].validation; })),
                    a == 0 ? "" : points_cell(over_seeds(runs, [&](const auto& x) { return x.students[a].map - x.students[0].map; })), "", "", ""});
  return format_table({"image-level labels only", "test mAP %", "validation mAP %", "vs alone (paired)", "CorLoc %", "validation CorLoc %", "AP50 %"}, rows) +
         "CorLoc is bounded by the proposals: " + table::fixed(100 * recall, 1) + "% of the test items have a sliding window with IoU >= 0.5.\n" +
         top_box_line(runs);
}

// ---- files ------------------------------------------------------------------------------------

inline json log_json(const run_log& l) {
  json j = {{"name", l.name}, {"metric", l.metric}, {"epochs", l.epochs_done}, {"train_seconds", l.seconds}};
  j["curve"] = json::array();
  for (const auto& e : l.curve) j["curve"].push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss}, {"validation", e.validation}, {"seconds", e.seconds}});
  return j;
}

inline json context_json(const std::vector<context_seed_result>& runs, const prior_baselines& priors) {
  json j;
  auto topk_json = [](const std::array<std::array<topk_row, 2>, 2>& t) {
    json o;
    for (int s = 0; s < 2; ++s)
      for (int c = 0; c < 2; ++c)
        o[std::string(examples::mask_shape_names[static_cast<std::size_t>(s)]) + (c ? "_out_of_context" : "_in_context")] = {
            {"n", t[static_cast<std::size_t>(s)][static_cast<std::size_t>(c)].n}, {"topk", t[static_cast<std::size_t>(s)][static_cast<std::size_t>(c)].acc}};
    return o;
  };
  j["class_prior"] = topk_json(priors.class_prior);
  j["slot_prior"] = topk_json(priors.slot_prior);
  auto rec_json = [](const recogniser_result& r) {
    json o = {{"clean_in_context", {{"accuracy", r.clean_in.acc}, {"n", r.clean_in.n}}}, {"clean_out_of_context", {{"accuracy", r.clean_out.acc}, {"n", r.clean_out.n}}},
              {"validation_accuracy", r.validation}, {"training", log_json(r.log)}};
    for (std::size_t d = 0; d < degradations.size(); ++d) {
      const std::string n(examples::degradation_names[static_cast<std::size_t>(degradations[d])]);
      o[n + "_in_context"] = {{"accuracy", r.degraded_in[d].acc}, {"n", r.degraded_in[d].n}};
      o[n + "_out_of_context"] = {{"accuracy", r.degraded_out[d].acc}, {"n", r.degraded_out[d].n}};
    }
    return o;
  };
  j["seeds"] = json::array();
  for (const auto& r : runs)
    j["seeds"].push_back({{"seed", r.seed}, {"context_model", {{"topk", topk_json(r.topk)}, {"validation_top1", r.validation_top1}, {"training", log_json(r.context_log)}}},
                          {"teacher_coverage", r.teacher_coverage}, {"teacher_top1_on_recogniser_scenes", r.teacher_train_top1},
                          {"recogniser_plain", rec_json(r.plain)}, {"recogniser_context_kd", rec_json(r.distilled)}});
  json summary;
  for (int s = 0; s < 2; ++s)
    for (int c = 0; c < 2; ++c) {
      json ks = json::array();
      for (int k = 0; k < topk_max; ++k)
        ks.push_back(examples::to_json(over_seeds(runs, [&](const auto& x) { return x.topk[static_cast<std::size_t>(s)][static_cast<std::size_t>(c)].acc[static_cast<std::size_t>(k)]; })));
      summary["context_topk"][std::string(examples::mask_shape_names[static_cast<std::size_t>(s)]) + (c ? "_out_of_context" : "_in_context")] = ks;
    }
  for (int arm = 0; arm < 2; ++arm) {
    auto get = [arm](const context_seed_result& x) -> const recogniser_result& { return arm ? x.distilled : x.plain; };
    json o;
    o["clean_in_context"] = examples::to_json(over_seeds(runs, [&](const auto& x) { return get(x).clean_in.acc; }));
    o["clean_out_of_context"] = examples::to_json(over_seeds(runs, [&](const auto& x) { return get(x).clean_out.acc; }));
    for (std::size_t d = 0; d < degradations.size(); ++d)
      o[std::string(examples::degradation_names[static_cast<std::size_t>(degradations[d])]) + "_in_context"] =
          examples::to_json(over_seeds(runs, [&](const auto& x) { return get(x).degraded_in[d].acc; }));
    summary[arm ? "recogniser_context_kd" : "recogniser_plain"] = o;
  }
  j["summary"] = summary;
  return j;
}

inline json wsd_json(const std::vector<wsd_seed_result>& runs, double recall, index_t proposals) {
  json j = {{"proposals", proposals}, {"proposal_recall_iou50", recall}};
  j["seeds"] = json::array();
  for (const auto& r : runs) {
    json s = {{"seed", r.seed},
              {"teacher", {{"map", r.teacher_map}, {"ap_per_class", r.teacher_ap_per_class}, {"corloc", r.teacher_corloc}, {"corloc_per_class", r.teacher_corloc_per_class},
                           {"validation_corloc", r.teacher_validation_corloc}, {"train_map", r.teacher_train_map}, {"top_box_breakdown", r.teacher_top_boxes},
                           {"ap50", r.teacher_ap50}, {"validation_map", r.teacher_validation}, {"training", log_json(r.teacher_log)}}},
              {"student_stage1_training", log_json(r.stage1_log)}};
    for (std::size_t a = 0; a < student_arms.size(); ++a)
      s[std::string("student_") + student_arms[a]] = {{"map", r.students[a].map}, {"ap_per_class", r.students[a].ap_per_class},
                                                      {"validation_map", r.students[a].validation}, {"training", log_json(r.students[a].log)}};
    j["seeds"].push_back(s);
  }
  json summary = {{"teacher_map", examples::to_json(over_seeds(runs, [](const auto& x) { return x.teacher_map; }))},
                  {"teacher_corloc", examples::to_json(over_seeds(runs, [](const auto& x) { return x.teacher_corloc; }))},
                  {"teacher_ap50", examples::to_json(over_seeds(runs, [](const auto& x) { return x.teacher_ap50; }))}};
  for (std::size_t a = 0; a < student_arms.size(); ++a) {
    summary[std::string("student_") + student_arms[a] + "_map"] = examples::to_json(over_seeds(runs, [&](const auto& x) { return x.students[a].map; }));
    if (a) summary[std::string("student_") + student_arms[a] + "_minus_alone"] = examples::to_json(over_seeds(runs, [&](const auto& x) { return x.students[a].map - x.students[0].map; }));
  }
  j["summary"] = summary;
  return j;
}

/// curves.csv: one line per run and epoch.
inline void write_curves(const std::filesystem::path& path, const std::vector<const run_log*>& logs) {
  std::string s = "run,metric,epoch,train_loss,validation,train_seconds\n";
  for (const auto* l : logs)
    for (const auto& e : l->curve)
      s += examples::csv_field(l->name) + "," + l->metric + "," + std::to_string(e.epoch) + "," + table::fixed(e.train_loss, 6) + "," + table::fixed(e.validation, 6) +
           "," + table::fixed(e.seconds, 2) + "\n";
  examples::write_text_file(path, s);
}

// ---- plots (gnuplot) ----------------------------------------------------------------------------

inline examples::plot_result plot_topk(const std::vector<context_seed_result>& runs, const prior_baselines& priors, const std::filesystem::path& png) {
  using examples::gnuplot::double_quoted;
  std::ostringstream gp;
  gp << examples::gnuplot::png_terminal(900, 560, png);
  gp << "set title 'Masked-item top-k accuracy on test scenes (context model: mean and std over " << runs.size() << " seeds)'\n"
     << "set xlabel 'k'\nset ylabel 'accuracy (%)'\nset xrange [0.8:5.2]\nset yrange [0:100]\nset xtics 1\nset key bottom right\nset grid\n";
  std::vector<std::string> titles;
  for (int s = 0; s < 2; ++s)
    for (int c = 0; c < 2; ++c) {
      gp << "$ctx" << s << c << " << EOD\n";
      for (int k = 0; k < topk_max; ++k) {
        const auto m = over_seeds(runs, [&](const auto& x) { return x.topk[static_cast<std::size_t>(s)][static_cast<std::size_t>(c)].acc[static_cast<std::size_t>(k)]; });
        gp << k + 1 << " " << 100 * m.mean << " " << (std::isnan(m.stddev) ? 0.0 : 100 * m.stddev) << "\n";
      }
      gp << "EOD\n";
    }
  for (int which = 0; which < 2; ++which) {
    gp << "$prior" << which << " << EOD\n";
    const auto& t = which ? priors.slot_prior : priors.class_prior;
    for (int k = 0; k < topk_max; ++k) gp << k + 1 << " " << 100 * t[0][0].acc[static_cast<std::size_t>(k)] << "\n";
    gp << "EOD\n";
  }
  gp << "plot $ctx00 using 1:2:3 with yerrorlines lw 2 lc rgb '#1f77b4' title 'context model, square, in context', \\\n"
     << "     $ctx01 using 1:2:3 with yerrorlines lw 2 dt 2 lc rgb '#1f77b4' title 'context model, square, out of context', \\\n"
     << "     $ctx10 using 1:2:3 with yerrorlines lw 2 lc rgb '#d62728' title 'context model, circle, in context', \\\n"
     << "     $ctx11 using 1:2:3 with yerrorlines lw 2 dt 2 lc rgb '#d62728' title 'context model, circle, out of context', \\\n"
     << "     $prior1 using 1:2 with linespoints lw 1 lc rgb '#2ca02c' title 'slot prior (in context)', \\\n"
     << "     $prior0 using 1:2 with linespoints lw 1 lc rgb '#7f7f7f' title 'class prior (in context)'\n";
  return examples::run_gnuplot(gp.str(), png, "gnuplot", "results.json");
}

inline examples::plot_result plot_ap_per_class(const std::vector<wsd_seed_result>& runs, const std::filesystem::path& png) {
  std::ostringstream gp;
  gp << examples::gnuplot::png_terminal(1100, 560, png);
  gp << "set title 'Per-class AP on test scenes (mean over " << runs.size() << " seeds)'\nset ylabel 'AP (%)'\nset yrange [0:105]\nset style data histogram\n"
     << "set style histogram cluster gap 1\nset style fill solid 0.85 border -1\nset boxwidth 0.9\nset xtics rotate by -30\nset key top left horizontal\nset grid ytics\n";
  gp << "$ap << EOD\nclass teacher alone stage1 stage2 both\n";
  for (int k = 0; k < classes; ++k) {
    std::string name(examples::fashion_short_names[static_cast<std::size_t>(k)]);
    gp << '"' << name << '"' << " " << 100 * over_seeds(runs, [&](const auto& x) { return x.teacher_ap_per_class[static_cast<std::size_t>(k)]; }).mean;
    for (std::size_t a = 0; a < student_arms.size(); ++a) gp << " " << 100 * over_seeds(runs, [&](const auto& x) { return x.students[a].ap_per_class[static_cast<std::size_t>(k)]; }).mean;
    gp << "\n";
  }
  gp << "EOD\n"
     << "plot $ap using 2:xtic(1) title 'WSDDN teacher', '' using 3 title 'student alone', '' using 4 title '+ stage 1', '' using 5 title '+ stage 2', "
        "'' using 6 title '+ both'\n";
  return examples::run_gnuplot(gp.str(), png, "gnuplot", "results.json");
}

// ---- pictures -------------------------------------------------------------------------------

inline std::string percent_text(double p) { return std::to_string(static_cast<int>(std::lround(100 * p))) + "%"; }

/// Train scenes with their boxes, classes and templates.
inline examples::canvas picture_world(const world& w, std::size_t n = 8) {
  std::vector<examples::canvas> parts;
  for (std::size_t k = 0; k < std::min(n, w.train.size()); ++k) {
    examples::scene_picture_options o;
    o.caption = {std::string("template: ") + std::string(examples::outfit_templates[w.train.scenes[k].outfit].name)};
    parts.push_back(examples::render_scene(w.train, k, o));
  }
  return examples::tile(parts, 4);
}

/// Masked test items with the context model's three best guesses (first seed).
inline examples::canvas picture_context(const world& w, const context_seed_result& r, std::size_t n = 8) {
  std::vector<examples::canvas> parts;
  std::size_t ooc_shown = 0;
  for (std::size_t i = 0; i < r.test_examples.size() && parts.size() < n; ++i) {
    const masked_example& e = r.test_examples[i];
    const auto& it = w.test.scenes[e.scene].items[e.item];
    if (i % 17 != 0 && !(it.out_of_context && ooc_shown < n / 4)) continue;  // a spread of scenes, some out of context
    ooc_shown += it.out_of_context;
    const float* p = &r.test_probabilities[i * classes];
    std::array<int, classes> order{};
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    examples::scene_picture_options o;
    o.item_labels = false;
    o.mask = examples::mask_for(it, e.shape);
    // what the model sees: the masked pixels at the mean grey (shaded red here)
    std::vector<std::uint8_t> px(w.test.image(e.scene).begin(), w.test.image(e.scene).end());
    examples::apply_mask<std::uint8_t>(px, w.side, *o.mask, static_cast<std::uint8_t>(std::lround(255 * w.mean)));
    o.caption = {std::string("hidden: ") + std::string(examples::fashion_short_names[it.cls]) + (it.out_of_context ? " (out of context)" : ""), "guesses:"};
    for (int j = 0; j < 3; ++j) o.caption.back() += " " + std::string(examples::fashion_short_names[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])]) + " " + percent_text(p[order[static_cast<std::size_t>(j)]]);
    parts.push_back(examples::render_scene(px, w.side, w.test.scenes[e.scene], o));
  }
  return examples::tile(parts, 4);
}

/// One test item per scene under each degradation (the evaluation's own choice of item).
inline examples::canvas picture_degradations(const world& w, std::size_t scenes = 3) {
  std::vector<examples::canvas> parts;
  for (std::uint32_t s = 0; s < std::min<std::size_t>(scenes, w.test.size()); ++s)
    for (int d = 0; d < 4; ++d) {
      const auto deg = static_cast<examples::degradation>(d);
      const std::uint16_t item = d == 0 ? degraded_item(w.test, s, examples::degradation::noise) : degraded_item(w.test, s, deg);
      std::vector<std::uint8_t> px(w.test.image(s).begin(), w.test.image(s).end());
      examples::degrade_item(px, w.side, w.test.scenes[s].items[item], deg, examples::mix64(w.test.params.seed + 0x10000ull * static_cast<std::uint64_t>(d)) ^ s);
      examples::scene_picture_options o;
      o.item_boxes = false;
      const auto& b = w.test.scenes[s].items[item].box;
      o.boxes.push_back({float(b.x1), float(b.y1), float(b.x2), float(b.y2), examples::mask_rgb, ""});
      o.caption = {std::string(examples::degradation_names[static_cast<std::size_t>(d)])};
      parts.push_back(examples::render_scene(px, w.side, w.test.scenes[s], o));
    }
  return examples::tile(parts, 4);
}

/// Test scenes with the teacher's top box of each class it scores >= 0.5, and each student's answers.
inline examples::canvas picture_wsd(const world& w, const wsd_seed_result& r) {
  std::vector<examples::canvas> parts;
  for (std::size_t i = 0; i < r.pictures.size(); ++i) {
    const scene_detections& d = r.pictures[i];
    examples::scene_picture_options o;
    o.item_labels = false;
    for (int k = 0; k < classes; ++k)
      if (d.image_score[static_cast<std::size_t>(k)] >= 0.5f) {
        const auto& b = d.top_box[static_cast<std::size_t>(k)];
        o.boxes.push_back({b[0], b[1], b[2], b[3], examples::detection_rgb,
                           std::string(examples::fashion_short_names[static_cast<std::size_t>(k)]) + " " + percent_text(d.image_score[static_cast<std::size_t>(k)])});
      }
    for (std::size_t a : {std::size_t(0), std::size_t(3)}) {
      std::string line = a == 0 ? "alone:" : "both:";
      for (int k = 0; k < classes; ++k)
        if (r.student_probabilities[a].size() > i * classes && r.student_probabilities[a][i * classes + static_cast<std::size_t>(k)] >= 0.5f)
          line.append(" ").append(examples::fashion_short_names[static_cast<std::size_t>(k)]);
      o.caption.push_back(line);
    }
    parts.push_back(examples::render_scene(w.test, d.scene, o));
  }
  return examples::tile(parts, 3);
}

}  // namespace skd
