// SPDX-License-Identifier: MIT
#pragma once
// PNG panels of Sort-of-CLEVR scenes, so a person can see what the teacher was told:
//   - the scene, enlarged (×4 nearest-neighbour by default);
//   - pair masks drawn over it: for each ordered pair (i, j) with weight m_ij > 0, a line from
//     object i to object j ending in an arrowhead at j, with opacity m_ij; a self pair (i, i) is a
//     ring around object i. Several masks (e.g. the logic mask and a model's predicted pair
//     attention) can be layered in different colours; a predicted softmax over pairs can be scaled
//     so its largest weight is fully opaque;
//   - the question, its type, the true answer and each model's answer (green when right, red
//     when wrong), in stb_easy_font's bitmap font (Debian libstb-dev);
//   - a grid of panels in one PNG.
//
// Canvas, text, segments and PNG files: ../../common/image.hpp (stb from Debian's libstb-dev;
// include this header before any other use of stb_image_write.h).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../common/image.hpp"
#include "sort_of_clevr.hpp"

namespace vqa {

using examples::canvas;
using examples::draw_arrowhead;
using examples::draw_ring;
using examples::draw_segment;
using examples::draw_text;
using examples::text_line_height;
using examples::text_width;
using examples::wrap_text;
using examples::write_png;

// ---- pair masks -------------------------------------------------------------------------------

/// One layer of pair weights over N "objects" to draw over a scene.
struct pair_mask {
  static constexpr rgb8 magenta{200, 0, 200};  // distinct from the six object colours
  std::string label = "logic mask";             // shown in the legend
  std::vector<float> weights;                   // N × N, row-major: weights[i * N + j] is pair (i, j)
  rgb8 colour = magenta;
  bool scale_to_max = false;                    // opacity m_ij / max(m) (for a softmax over pairs) instead of m_ij
  std::vector<std::array<float, 2>> centres;    // N centres in scene pixels; empty: the scene's 6 objects

  pair_mask() = default;
  pair_mask(std::string label_, std::vector<float> weights_, rgb8 colour_ = magenta, bool scale_to_max_ = false,
            std::vector<std::array<float, 2>> centres_ = {})
      : label(std::move(label_)), weights(std::move(weights_)), colour(colour_), scale_to_max(scale_to_max_), centres(std::move(centres_)) {}
};

/// Centres, in scene pixels, of the cells of an n × n feature map over the 75 × 75 image (cell
/// k = row k / n, column k % n; e.g. the 5 × 5 map of the pixel model's CNN).
inline std::vector<std::array<float, 2>> grid_cell_centres(int n) {
  std::vector<std::array<float, 2>> c;
  const float cell = static_cast<float>(image_size) / n;
  for (int k = 0; k < n * n; ++k) c.push_back({(k % n + 0.5f) * cell, (k / n + 0.5f) * cell});
  return c;
}

inline std::vector<std::array<float, 2>> object_centres(const scene& s) {
  std::vector<std::array<float, 2>> c;
  for (const auto& o : s.objects) c.push_back({o.x + 0.5f, o.y + 0.5f});  // centre of the centre pixel
  return c;
}

/// Draws a pair mask over a scene drawn at (x0, y0) with `scale` canvas pixels per scene pixel.
inline void draw_pair_mask(canvas& img, int x0, int y0, int scale, const scene& s, const pair_mask& m) {
  const auto centres = m.centres.empty() ? object_centres(s) : m.centres;
  const std::size_t n = centres.size();
  if (m.weights.size() != n * n) throw std::invalid_argument("draw_pair_mask: weights must hold N x N values for N centres");
  float top = 0;
  for (float w : m.weights) top = std::max(top, std::isfinite(w) ? w : 0.0f);
  const float norm = m.scale_to_max && top > 0 ? 1.0f / top : 1.0f;
  const float f = static_cast<float>(scale);
  const float clearance = (object_half_size + 1.5f) * f;  // lines start and end outside the objects
  const float head = 2.5f * f;                             // arrowhead length
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      const float w = m.weights[i * n + j];
      const float alpha = std::isfinite(w) ? std::clamp(w * norm, 0.0f, 1.0f) : 0.0f;
      if (alpha < 0.02f) continue;
      const float xi = x0 + centres[i][0] * f, yi = y0 + centres[i][1] * f;
      const float xj = x0 + centres[j][0] * f, yj = y0 + centres[j][1] * f;
      if (i == j) {
        draw_ring(img, xi, yi, clearance + 0.5f * f, 0.75f * f, m.colour, alpha);
        continue;
      }
      const float len = std::hypot(xj - xi, yj - yi);
      if (len <= 0) continue;
      const float ux = (xj - xi) / len, uy = (yj - yi) / len;
      // Close neighbours: let the arrow reach into the objects so that it stays visible.
      const float clear = std::min(clearance, std::max(0.0f, (len - 2 * head) / 2));
      draw_segment(img, xi + ux * clear, yi + uy * clear, xj - ux * (clear + head * 0.8f), yj - uy * (clear + head * 0.8f), 0.6f * f,
                   m.colour, alpha);
      draw_arrowhead(img, xj - ux * clear, yj - uy * clear, ux, uy, head, 2.0f * f, m.colour, alpha);
    }
}

// ---- panels -----------------------------------------------------------------------------------

struct model_answer {
  std::string model;
  int answer = 0;  // answer class 0..9
};

/// Everything one panel shows.
struct panel_content {
  scene objects;
  std::vector<std::uint8_t> pixels;  // 75×75×3 HWC; empty: rasterised from `objects`
  question asked;
  std::vector<pair_mask> masks;      // drawn in order over the scene
  std::vector<model_answer> answers;
};

struct render_options {
  int scale = 4;       // canvas pixels per scene pixel
  int text_scale = 2;  // canvas pixels per font unit
  int margin = 8;
};

using examples::right_rgb;
using examples::text_rgb;
using examples::wrong_rgb;
inline constexpr rgb8 panel_rgb = examples::white_rgb;

inline std::string answer_label(int a) {
  if (a >= 0 && a < answer_count) return std::string(answer_names[a]);
  std::string s = "?";  // an out-of-range class (appending avoids a GCC 12 -Wrestrict false positive)
  s += std::to_string(a);
  return s;
}

/// Renders one panel: the scene with its masks, then the question and the answers.
inline canvas render_panel(const panel_content& p, const render_options& opt = {}) {
  const int scene_px = image_size * opt.scale, w = scene_px + 2 * opt.margin, lh = text_line_height(opt.text_scale);
  struct line {
    std::string text;
    rgb8 colour;
    const pair_mask* legend = nullptr;  // a legend line is indented; its first line shows the swatch
    bool swatch = false;
  };
  std::vector<line> lines;
  for (auto& l : wrap_text("Q: " + question_text(p.asked), scene_px, opt.text_scale)) lines.push_back({l, text_rgb});
  lines.push_back({std::string("type: ") + std::string(name_of(p.asked.type)) + " (" + std::string(name_of(kind_of(p.asked.type))) + ")",
                   text_rgb});
  lines.push_back({"truth: " + answer_label(p.asked.answer), text_rgb});
  for (const auto& a : p.answers) {
    const bool right = a.answer == p.asked.answer;
    for (auto& l : wrap_text(a.model + ": " + answer_label(a.answer) + (right ? "" : " (wrong)"), scene_px, opt.text_scale))
      lines.push_back({l, right ? right_rgb : wrong_rgb});
  }
  for (const auto& m : p.masks) {  // legend: a swatch, then the label (wrapped beside it)
    const auto label = wrap_text(m.label + (m.scale_to_max ? " (opacity / max)" : ""), scene_px - 2 * lh, opt.text_scale);
    for (std::size_t k = 0; k < label.size(); ++k) lines.push_back({label[k], text_rgb, &m, k == 0});
  }

  canvas img(w, scene_px + 2 * opt.margin + static_cast<int>(lines.size()) * lh + opt.margin, panel_rgb);
  if (p.pixels.empty()) {
    std::vector<std::uint8_t> px(image_bytes);
    rasterize(p.objects, px);
    img.draw_image(opt.margin, opt.margin, px, image_size, image_size, opt.scale);
  } else {
    img.draw_image(opt.margin, opt.margin, p.pixels, image_size, image_size, opt.scale);
  }
  for (const auto& m : p.masks) draw_pair_mask(img, opt.margin, opt.margin, opt.scale, p.objects, m);
  int y = scene_px + 2 * opt.margin;
  for (const auto& l : lines) {
    int x = opt.margin;
    if (l.legend) {
      if (l.swatch)
        draw_segment(img, static_cast<float>(x), y + lh * 0.35f, static_cast<float>(x + 3 * lh / 2), y + lh * 0.35f, 3.0f, l.legend->colour, 1.0f);
      x += 2 * lh;
    }
    draw_text(img, x, y, l.text, l.colour, opt.text_scale);
    y += lh;
  }
  return img;
}

/// Several panels in a grid (row-major, `columns` per row), separated by a thin gray gap.
inline canvas render_grid(std::span<const panel_content> panels, int columns, const render_options& opt = {}) {
  if (panels.empty() || columns <= 0) throw std::invalid_argument("render_grid: need at least one panel and one column");
  std::vector<canvas> parts;
  for (const auto& p : panels) parts.push_back(render_panel(p, opt));
  return examples::tile(parts, columns);
}


/// One panel straight to a PNG file: the scene (pixels, or rasterised when empty), the question,
/// the logic mask (6 × 6 over the scene's objects; empty: none) and each model's answer.
inline bool render_panel(const scene& s, std::span<const std::uint8_t> pixels, const question& q, std::span<const float> mask,
                         const std::vector<model_answer>& answers, const std::filesystem::path& path) {
  panel_content p{s, std::vector<std::uint8_t>(pixels.begin(), pixels.end()), q, {}, answers};
  if (!mask.empty()) p.masks.push_back(pair_mask{"logic mask", std::vector<float>(mask.begin(), mask.end())});
  return write_png(render_panel(p), path);
}

inline bool render_grid(std::span<const panel_content> panels, int columns, const std::filesystem::path& path,
                        const render_options& opt = {}) {
  return write_png(render_grid(panels, columns, opt), path);
}

}  // namespace vqa
