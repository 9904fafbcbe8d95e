// SPDX-License-Identifier: MIT
#pragma once
// distillvlm's figures:
//
//   curves.png      training loss and validation accuracy per epoch, one line per run (gnuplot;
//                   the script is kept as curves.gp, the numbers are in curves.csv)
//   attention.png   one scene, its K region boxes numbered, and for one of its questions each
//                   model's last-layer attention averaged over its heads: the [CLS] token's
//                   attention to each region tinting that region's box, and the whole L x L map
//                   over the real tokens ([CLS], regions, question words) as a heat map
//
// image.hpp must come before any other use of stb_image_write in the translation unit.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "../../common/image.hpp"
#include "../../common/results.hpp"
#include "../../common/scene_render.hpp"
#include "../../common/training_run.hpp"
#include "config.hpp"
#include "data.hpp"
#include "models.hpp"

namespace dvlm {

// ---- curves -------------------------------------------------------------------------------

/// curves.png: training loss (left) and validation accuracy (right) per epoch, one line per run
/// name, the mean over its seeds (a run "student_kd-seed2" is seed 2 of "student_kd"), so that
/// an ablation of many rows and seeds stays readable; every run is in curves.csv. Never throws:
/// without gnuplot the result says so and the numbers stay in curves.csv.
inline examples::plot_result write_curves_png(const std::filesystem::path& png, const std::vector<examples::run_log>& logs) {
  using examples::gnuplot::double_quoted;
  struct line {
    std::string name;
    int seeds = 0;
    std::vector<double> loss, accuracy;  ///< sums over the seeds, per epoch
  };
  std::vector<line> lines;
  for (const auto& l : logs) {
    const auto cut = l.name.rfind("-seed");
    const std::string name = cut == std::string::npos ? l.name : l.name.substr(0, cut);
    auto it = std::find_if(lines.begin(), lines.end(), [&](const line& x) { return x.name == name; });
    if (it == lines.end()) it = lines.insert(lines.end(), line{name, 0, {}, {}});
    ++it->seeds;
    for (std::size_t e = 0; e < l.curve.size(); ++e) {
      if (it->loss.size() <= e) it->loss.push_back(0), it->accuracy.push_back(0);
      it->loss[e] += l.curve[e].train_loss, it->accuracy[e] += 100 * l.curve[e].validation;
    }
  }
  std::ostringstream gp;
  gp << "# distillvlm: training loss and validation accuracy per epoch, mean over seeds (written by distillvlm; rerun: gnuplot <this file>)\n"
     << examples::gnuplot::png_terminal(1500, 560, png);
  for (std::size_t r = 0; r < lines.size(); ++r) {
    gp << "$run" << r << " << EOD\n";
    for (std::size_t e = 0; e < lines[r].loss.size(); ++e)
      gp << e + 1 << " " << lines[r].loss[e] / lines[r].seeds << " " << lines[r].accuracy[e] / lines[r].seeds << "\n";
    gp << "EOD\n";
  }
  const auto plot = [&](int column, bool key) {  // the same colours in both panels: one key is enough
    gp << "plot ";
    if (lines.empty()) gp << "NaN notitle";
    for (std::size_t r = 0; r < lines.size(); ++r) {
      const std::string title = lines[r].name + (lines[r].seeds > 1 ? " (" + std::to_string(lines[r].seeds) + " seeds)" : std::string());
      gp << (r ? ", \\\n     " : "") << "$run" << r << " using 1:" << column << " with linespoints lw 2 pt " << 5 + r % 4 << " lc " << r + 1 << " dt "
         << 1 + (r / 8) % 3 << " " << (key ? "title " + double_quoted(title) : std::string("notitle"));
    }
    gp << "\n";
  };
  gp << "set multiplot layout 1,2 title \"distillvlm: training loss and validation accuracy per epoch (mean over seeds)\"\n"
     << "set grid\nset xlabel \"epoch\"\nset xtics 1\nset offsets 0.2, 0.2, 0, 0\nset yrange [0:*]\nunset key\n"
     << "set title \"training loss, mean over the epoch's steps\\n(each run's own objective: a distilled student's adds its terms)\"\n"
     << "set ylabel \"loss\"\n";
  plot(2, false);
  gp << "set title \"validation accuracy after each epoch\"\nset ylabel \"accuracy (%)\"\nset yrange [*:*]\nset key outside right top box\n";
  plot(3, true);
  gp << "unset multiplot\nset output\n";
  return examples::run_gnuplot(gp.str(), png, "gnuplot", "curves.csv");
}

// ---- attention ----------------------------------------------------------------------------

/// A model shown in the attention picture, with the title of its panel.
struct attention_subject {
  std::string title;  ///< e.g. "student after distillation"
  vqa_transformer* model = nullptr;
};

namespace figures_detail {

/// What one model did with the question: its answer and its head-averaged last-layer attention
/// over the real tokens.
struct attention_reading {
  int predicted = 0;
  std::vector<float> map;  ///< (n, n), n = real tokens, rows are queries
};

inline constexpr examples::rgb8 region_rgb{40, 120, 255};

/// "R3" for region token 3 (1-based); appended rather than "R" + ..., which trips GCC 12's -Wrestrict.
inline std::string region_label(std::size_t k) {
  std::string s = "R";
  s += std::to_string(k);
  return s;
}

inline void rectangle(examples::canvas& c, float x1, float y1, float x2, float y2, examples::rgb8 colour, float thickness) {
  examples::scene_render_detail::rectangle(c, x1, y1, x2, y2, colour, thickness);
}

/// The scene with its items (green, true classes) and the region boxes the models read (blue, numbered).
inline examples::canvas regions_scene(const split_data& d, std::uint32_t id, const std::vector<region_box>& boxes, int scale) {
  examples::scene_picture_options o;
  o.scale = scale;
  for (std::size_t k = 0; k < boxes.size(); ++k)
    o.boxes.push_back({boxes[k][0], boxes[k][1], boxes[k][2], boxes[k][3], region_rgb, region_label(k + 1)});
  return examples::render_scene(d.scenes, id, o);
}

/// The scene with each region box tinted and outlined by the [CLS] token's attention to it
/// (colour heat_rgb(a / vmax)), labelled with that attention in percent.
inline examples::canvas tinted_scene(const split_data& d, std::uint32_t id, const std::vector<region_box>& boxes, std::span<const float> cls_to_region,
                                     float vmax, int scale) {
  examples::scene_picture_options o;
  o.scale = scale, o.item_boxes = false;
  examples::canvas c = examples::render_scene(d.scenes, id, o);
  std::vector<std::size_t> order(boxes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cls_to_region[a] < cls_to_region[b]; });  // strongest on top
  const auto px = [scale](float v) { return static_cast<int>(std::lround(v * static_cast<float>(scale))); };
  for (std::size_t k : order) {
    const float t = cls_to_region[k] / vmax;
    const auto& b = boxes[k];
    for (int y = px(b[1]); y < px(b[3]); ++y)
      for (int x = px(b[0]); x < px(b[2]); ++x) c.blend(x, y, examples::heat_rgb(t), 0.45f * std::clamp(t, 0.0f, 1.0f));
  }
  for (std::size_t k : order) {
    const auto& b = boxes[k];
    const examples::rgb8 col = examples::heat_rgb(std::max(0.25f, cls_to_region[k] / vmax));
    rectangle(c, b[0] * static_cast<float>(scale), b[1] * static_cast<float>(scale), b[2] * static_cast<float>(scale), b[3] * static_cast<float>(scale), col, 2.0f);
    const std::string label = region_label(k + 1) + " " + std::to_string(static_cast<int>(std::lround(100 * cls_to_region[k]))) + "%";
    examples::scene_render_detail::label(c, px(b[0]) + 2, px(b[1]) + 2, label, examples::text_rgb, 1);
  }
  return c;
}

/// Draws lines of text at (x, y), each in its colour; returns the y under them.
inline int text_lines(examples::canvas& c, int x, int y, const std::vector<std::pair<std::string, examples::rgb8>>& lines, int scale) {
  for (const auto& [s, col] : lines) examples::draw_text(c, x, y, s, col, scale), y += examples::text_line_height(scale);
  return y;
}

}  // namespace figures_detail

/// The question of a scene the attention picture shows: its first about a relation between
/// items (left_of, above, closest_to, furthest_from: the answer depends on where the regions
/// are), its first question when it has none.
inline std::uint32_t picture_question(const split_data& d, std::uint32_t scene) {
  const auto qs = d.questions.of_scene(scene);
  for (std::uint32_t j = 0; j < qs.size(); ++j)
    if (examples::is_relation(qs[j].family)) return j;
  return 0;
}

/// attention.png: scene `scene` of split `d` with its region boxes numbered, and for its question
/// `question` (0-based, among the scene's questions) each model's last-layer attention averaged
/// over its heads: [CLS] to each region as the tint of the region's box, and the L x L map over
/// the real tokens, with the mean absolute difference of each later model's map to the first
/// model's (the teacher's). The models are put in evaluation mode and run on a batch of this one
/// scene. Colours: the maps of all models share one scale, 0 to the largest value shown; the
/// region tints share another, 0 to the largest [CLS]-to-region value. Prints the question and
/// the answers to `log`. Throws std::invalid_argument for a bad scene, question or model; the
/// result says whether the PNG was written.
inline examples::plot_result write_attention_picture(const std::filesystem::path& png, const distill::cpu& ctx, const run_config& c, const world& w,
                                                     const split_data& d, const std::string& split_name, std::uint32_t scene, std::uint32_t question,
                                                     std::span<const attention_subject> models, std::ostream& log) {
  namespace ex = examples;
  using namespace figures_detail;
  if (scene >= d.scenes.size())
    throw std::invalid_argument("write_attention_picture: scene " + std::to_string(scene) + " is not in the " + split_name + " split (" +
                                std::to_string(d.scenes.size()) + " scenes)");
  if (question >= d.questions.params.questions_per_scene)
    throw std::invalid_argument("write_attention_picture: question " + std::to_string(question) + " of a scene with " +
                                std::to_string(d.questions.params.questions_per_scene) + " questions");
  if (models.empty()) throw std::invalid_argument("write_attention_picture: no model to show");
  for (const auto& m : models)
    if (!m.model) throw std::invalid_argument("write_attention_picture: model '" + m.title + "' is null");

  const int K = c.max_regions;
  vqa_batch b;
  fill_batch(w, d, std::span<const std::uint32_t>(&scene, 1), c.regions, K, b);
  const index_t q = question, L = b.L;
  const ex::scene_question& sq = *b.source[static_cast<std::size_t>(q)];
  const std::vector<region_box> boxes = scene_regions(d, scene, c.regions, K, region_set::shared);

  // the real tokens: [CLS], the scene's regions, the question's words
  std::vector<index_t> tokens;
  std::vector<std::string> labels;
  for (index_t i = 0; i < L; ++i) {
    if (!b.key_valid[static_cast<std::size_t>(q * L + i)]) continue;
    tokens.push_back(i);
    labels.push_back(i == 0 ? "[CLS]" : i <= K ? region_label(static_cast<std::size_t>(i)) : std::string(ex::question_words[sq.tokens[static_cast<std::size_t>(i - 1 - K)]]));
  }
  const std::size_t n = tokens.size(), regions = boxes.size();

  std::vector<attention_reading> reads;
  for (const auto& m : models) {
    m.model->set_training(false);
    m.model->forward(ctx, b);
    const float* z = m.model->logits().data() + q * ex::answer_count;
    attention_reading r;
    r.predicted = static_cast<int>(std::max_element(z, z + ex::answer_count) - z);
    const auto att = m.model->last_attention();
    const index_t H = att.extent(1);
    r.map.assign(n * n, 0.0f);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        double s = 0;
        for (index_t h = 0; h < H; ++h) s += att(q, h, tokens[i], tokens[j]);
        r.map[i * n + j] = static_cast<float>(s / static_cast<double>(H));
      }
    reads.push_back(std::move(r));
  }
  float vmax = 0, cls_max = 0;
  for (const auto& r : reads) {
    vmax = std::max(vmax, *std::max_element(r.map.begin(), r.map.end()));
    for (std::size_t k = 0; k < regions; ++k) cls_max = std::max(cls_max, r.map[1 + k]);  // row 0 = [CLS]; columns 1..regions
  }
  vmax = std::max(vmax, 1e-6f), cls_max = std::max(cls_max, 1e-6f);

  const std::string qtext = ex::question_text(sq), truth = ex::answer_name(sq.answer);
  log << "attention picture: " << split_name << " scene " << scene << ", question " << question << ": \"" << qtext << "\" (" << ex::question_family_names[static_cast<std::size_t>(sq.family)]
      << "), true answer " << truth << "\n";
  // how far each map is from the first model's (the teacher's): mean |difference| over the cells shown
  std::vector<double> from_first(models.size(), 0.0);
  for (std::size_t m = 1; m < models.size(); ++m) {
    for (std::size_t i = 0; i < n * n; ++i) from_first[m] += std::fabs(reads[m].map[i] - reads[0].map[i]);
    from_first[m] /= static_cast<double>(n * n);
  }
  const auto distance_text = [&](std::size_t m) {
    return "mean |difference| to the " + models[0].title + "'s map: " + ex::table::fixed(100 * from_first[m], 2) + " points";
  };
  for (std::size_t m = 0; m < models.size(); ++m)
    log << "  " << models[m].title << ": " << ex::answer_name(static_cast<std::uint8_t>(reads[m].predicted)) << (m ? "; " + distance_text(m) : std::string())
        << "\n";

  // panels: the scene with items and regions, then one column per model
  const int scale = 3, ts = 1, line = ex::text_line_height(ts), pad = 12;
  ex::heat_map_options ho;
  ho.vmax = vmax, ho.numbers = true, ho.cell = 22, ho.groups = {1, 1 + static_cast<int>(regions)};  // [CLS] | regions | words
  std::vector<ex::canvas> maps, scenes;
  for (const auto& r : reads) {
    maps.push_back(ex::heat_map(r.map, labels, labels, ho));
    scenes.push_back(tinted_scene(d, scene, boxes, std::span<const float>(r.map).subspan(1, regions), cls_max, scale));
  }
  const ex::canvas overview = regions_scene(d, scene, boxes, scale);
  const int side = overview.width(), col_w = std::max(side, maps[0].width()) + pad;
  const int head_h = 2 * ex::text_line_height(2) + 8, caption_h = 4 * line + 6;
  const int total_w = pad + col_w * static_cast<int>(models.size() + 1);
  const int total_h = head_h + caption_h + overview.height() + pad + line + maps[0].height() + pad;
  ex::canvas img(total_w, total_h);

  ex::draw_text(img, pad, 4, "Last-layer attention, mean over heads: " + split_name + " scene " + std::to_string(scene) + ", " + std::to_string(regions) +
                                 " region" + (regions == 1 ? "" : "s") + " (" + region_source_name(c.regions) + ")", ex::text_rgb, 2);
  ex::draw_text(img, pad, 4 + ex::text_line_height(2), "Q: " + qtext + "   true answer: " + truth + "   (" + std::string(ex::question_family_names[static_cast<std::size_t>(sq.family)]) + ")",
                ex::text_rgb, 2);
  const int y0 = head_h;
  int x = pad;
  text_lines(img, x, y0, {{"the scene: items with their true classes (green),", ex::text_rgb}, {"regions R1..." + region_label(regions) + " the models read (blue)", region_rgb}}, ts);
  img.paste(overview, x, y0 + caption_h);
  int y = y0 + caption_h + overview.height() + pad;
  y = text_lines(img, x, y,
                 {{"below each model: its L x L attention over the real", ex::text_rgb},
                  {"tokens, rows = queries, in % (one scale for all:", ex::text_rgb},
                  {"0 to " + ex::table::fixed(100 * vmax, 0) + " %). Above: the tint of each region is", ex::text_rgb},
                  {"the [CLS] row's attention to it (0 to " + ex::table::fixed(100 * cls_max, 0) + " %).", ex::text_rgb}},
                 ts) + 6;
  img.paste(ex::colour_bar(200, 12, "0", ex::table::fixed(100 * vmax, 0) + " %"), x, y);
  for (std::size_t m = 0; m < models.size(); ++m) {
    x = pad + col_w * static_cast<int>(m + 1);
    const int p = reads[m].predicted;
    const bool right = p == sq.answer;
    const vlm_config& mc = models[m].model->config();
    const std::string size = "width " + std::to_string(mc.width) + ", " + std::to_string(mc.layers) + (mc.layers == 1 ? " layer, " : " layers, ") +
                             std::to_string(mc.heads) + (mc.heads == 1 ? " head" : " heads");
    text_lines(img, x, y0,
               {{models[m].title, ex::text_rgb},
                {size, ex::text_rgb},
                {"answers " + ex::answer_name(static_cast<std::uint8_t>(p)) + " (true: " + truth + ")" + (right ? ", right" : ", wrong"), right ? ex::right_rgb : ex::wrong_rgb},
                {"tint: [CLS] -> region attention", ex::text_rgb}},
               ts);
    img.paste(scenes[m], x, y0 + caption_h);
    img.paste(maps[m], x, y0 + caption_h + overview.height() + pad + line);
    ex::draw_text(img, x, y0 + caption_h + overview.height() + pad, m ? distance_text(m) : "attention (query row -> key column), %", ex::text_rgb, ts);
  }
  ex::plot_result r;
  std::string why;
  r.written = ex::write_png(img, png, &why);
  r.message = r.written ? "attention picture written to " + png.string() : "attention picture skipped: " + why;
  return r;
}

}  // namespace dvlm
