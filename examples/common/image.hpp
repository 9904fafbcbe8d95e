// SPDX-License-Identifier: MIT
#pragma once
// Drawing for the examples' pictures: an RGB canvas, bitmap text (stb_easy_font), anti-aliased
// segments, rings and arrowheads, heat maps (a white-to-dark-red colour scale, labelled matrices,
// a colour bar), a grid of panels, and PNG files (stb_image_write), all from Debian's libstb-dev.
//
// PNG encoding: stb_image_write's implementation is compiled into every translation unit that
// includes this header, with internal linkage (STB_IMAGE_WRITE_STATIC), so nothing has to be
// linked (no -lstb) and several translation units may include this header. Include this header
// before any other use of stb_image_write.h.

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
#include <vector>

#if defined(INCLUDE_STB_IMAGE_WRITE_H) && !defined(STB_IMAGE_WRITE_STATIC)
#error "image.hpp compiles stb_image_write with STB_IMAGE_WRITE_STATIC; include image.hpp before <stb/stb_image_write.h>"
#endif
#ifndef INCLUDE_STB_IMAGE_WRITE_H
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#endif
#include <stb/stb_easy_font.h>

namespace examples {

struct rgb8 {
  std::uint8_t r, g, b;
  friend bool operator==(const rgb8&, const rgb8&) = default;
};

inline constexpr rgb8 white_rgb{255, 255, 255}, text_rgb{20, 20, 20}, right_rgb{0, 140, 0}, wrong_rgb{200, 0, 0},
    gap_rgb{180, 180, 180};

/// An RGB image (row-major, 3 bytes per pixel) to draw on.
class canvas {
 public:
  canvas() = default;
  canvas(int width, int height, rgb8 fill = white_rgb) : width_(width), height_(height) {
    if (width <= 0 || height <= 0) throw std::invalid_argument("canvas: width and height must be positive");
    data_.resize(static_cast<std::size_t>(width) * height * 3);
    fill_rect(0, 0, width, height, fill);
  }
  int width() const { return width_; }
  int height() const { return height_; }
  std::span<const std::uint8_t> bytes() const { return data_; }
  bool contains(int x, int y) const { return x >= 0 && y >= 0 && x < width_ && y < height_; }
  rgb8 at(int x, int y) const {
    const std::uint8_t* p = &data_[offset(x, y)];
    return {p[0], p[1], p[2]};
  }
  /// Sets a pixel; pixels outside the canvas are ignored.
  void set(int x, int y, rgb8 c) {
    if (!contains(x, y)) return;
    std::uint8_t* p = &data_[offset(x, y)];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  /// Mixes colour c into a pixel with opacity alpha in [0, 1].
  void blend(int x, int y, rgb8 c, float alpha) {
    if (!contains(x, y) || !(alpha > 0.0f)) return;
    alpha = std::min(alpha, 1.0f);
    std::uint8_t* p = &data_[offset(x, y)];
    const std::uint8_t src[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) p[k] = static_cast<std::uint8_t>(std::lround(p[k] + alpha * (src[k] - p[k])));
  }
  void fill_rect(int x, int y, int w, int h, rgb8 c) {
    for (int yy = std::max(y, 0); yy < std::min(y + h, height_); ++yy)
      for (int xx = std::max(x, 0); xx < std::min(x + w, width_); ++xx) set(xx, yy, c);
  }
  /// Draws an HWC RGB image of w × h pixels at (x0, y0), each pixel as a scale × scale block.
  void draw_image(int x0, int y0, std::span<const std::uint8_t> hwc, int w, int h, int scale) {
    if (hwc.size() != static_cast<std::size_t>(w) * h * 3) throw std::invalid_argument("canvas::draw_image: size mismatch");
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const std::uint8_t* p = &hwc[(static_cast<std::size_t>(y) * w + x) * 3];
        fill_rect(x0 + x * scale, y0 + y * scale, scale, scale, rgb8{p[0], p[1], p[2]});
      }
  }
  void paste(const canvas& other, int x0, int y0) {
    for (int y = 0; y < other.height(); ++y)
      for (int x = 0; x < other.width(); ++x) set(x0 + x, y0 + y, other.at(x, y));
  }

 private:
  std::size_t offset(int x, int y) const { return (static_cast<std::size_t>(y) * width_ + x) * 3; }
  int width_ = 0, height_ = 0;
  std::vector<std::uint8_t> data_;
};

// ---- text (stb_easy_font: ASCII, 12 units a line, about 6 units a character) -----------------

inline constexpr int font_line_units = 12;

/// stb_easy_font knows printable ASCII only (it indexes a table with c − 32): other bytes,
/// including UTF-8 sequences and line breaks, are drawn as '?'.
inline std::string printable_ascii(std::string_view text) {
  std::string s(text);
  for (char& c : s)
    if (c < 32 || c > 126) c = '?';
  return s;
}

inline int text_width(std::string_view text, int scale) {
  std::string s = printable_ascii(text);
  return stb_easy_font_width(s.data()) * scale;
}
inline int text_line_height(int scale) { return font_line_units * scale; }

/// Draws one line of text (printable ASCII) with its top-left corner at (x, y), `scale` pixels per font unit.
inline void draw_text(canvas& img, int x, int y, std::string_view text, rgb8 colour, int scale = 2) {
  std::string s = printable_ascii(text);
  std::vector<char> vertices(s.size() * 300 + 64);  // ~270 bytes a character (stb_easy_font)
  const int quads = stb_easy_font_print(0.0f, 0.0f, s.data(), nullptr, vertices.data(), static_cast<int>(vertices.size()));
  for (int q = 0; q < quads; ++q) {  // each quad: 4 vertices of {float x, y, z; uint8 rgba[4]}, axis-aligned
    float xs[4], ys[4];
    for (int v = 0; v < 4; ++v) {
      const char* p = vertices.data() + (static_cast<std::size_t>(q) * 4 + v) * 16;
      std::memcpy(&xs[v], p, sizeof(float));
      std::memcpy(&ys[v], p + 4, sizeof(float));
    }
    const float x0 = *std::min_element(xs, xs + 4), x1 = *std::max_element(xs, xs + 4);
    const float y0 = *std::min_element(ys, ys + 4), y1 = *std::max_element(ys, ys + 4);
    img.fill_rect(x + static_cast<int>(std::lround(x0 * scale)), y + static_cast<int>(std::lround(y0 * scale)),
                  static_cast<int>(std::lround((x1 - x0) * scale)), static_cast<int>(std::lround((y1 - y0) * scale)), colour);
  }
}

/// Splits text into lines at most max_width pixels wide (at word boundaries where possible).
inline std::vector<std::string> wrap_text(std::string_view text, int max_width, int scale) {
  std::vector<std::string> lines;
  std::string line;
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t j = std::min(text.find(' ', i), text.size());
    const std::string word(text.substr(i, j - i));
    const std::string candidate = line.empty() ? word : line + " " + word;
    if (line.empty() || text_width(candidate, scale) <= max_width) {
      line = candidate;
    } else {
      lines.push_back(line);
      line = word;
    }
    i = j + 1;
  }
  if (!line.empty() || lines.empty()) lines.push_back(line);
  return lines;
}

// ---- anti-aliased primitives: coverage from the distance of each pixel centre -----------------

inline float coverage_from_distance(float inside_distance) { return std::clamp(inside_distance + 0.5f, 0.0f, 1.0f); }

/// A segment of the given thickness (pixels) from (x0, y0) to (x1, y1).
inline void draw_segment(canvas& img, float x0, float y0, float x1, float y1, float thickness, rgb8 c, float alpha) {
  const float half = thickness / 2, dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
  const int bx0 = static_cast<int>(std::floor(std::min(x0, x1) - half - 1)), bx1 = static_cast<int>(std::ceil(std::max(x0, x1) + half + 1));
  const int by0 = static_cast<int>(std::floor(std::min(y0, y1) - half - 1)), by1 = static_cast<int>(std::ceil(std::max(y0, y1) + half + 1));
  for (int y = by0; y <= by1; ++y)
    for (int x = bx0; x <= bx1; ++x) {
      const float px = x + 0.5f - x0, py = y + 0.5f - y0;
      const float t = len2 > 0 ? std::clamp((px * dx + py * dy) / len2, 0.0f, 1.0f) : 0.0f;
      const float d = std::hypot(px - t * dx, py - t * dy);
      img.blend(x, y, c, alpha * coverage_from_distance(half - d));
    }
}

/// A ring (circle outline) of the given radius and thickness.
inline void draw_ring(canvas& img, float cx, float cy, float radius, float thickness, rgb8 c, float alpha) {
  const float half = thickness / 2;
  const int r = static_cast<int>(std::ceil(radius + half + 1));
  for (int y = static_cast<int>(cy) - r; y <= static_cast<int>(cy) + r; ++y)
    for (int x = static_cast<int>(cx) - r; x <= static_cast<int>(cx) + r; ++x) {
      const float d = std::fabs(std::hypot(x + 0.5f - cx, y + 0.5f - cy) - radius);
      img.blend(x, y, c, alpha * coverage_from_distance(half - d));
    }
}

/// A filled triangle with its tip at (tx, ty) pointing along the unit vector (ux, uy).
inline void draw_arrowhead(canvas& img, float tx, float ty, float ux, float uy, float length, float width, rgb8 c, float alpha) {
  const std::array<std::array<float, 2>, 3> v = {{{tx, ty},
                                                  {tx - ux * length - uy * width / 2, ty - uy * length + ux * width / 2},
                                                  {tx - ux * length + uy * width / 2, ty - uy * length - ux * width / 2}}};
  const float area2 = (v[1][0] - v[0][0]) * (v[2][1] - v[0][1]) - (v[1][1] - v[0][1]) * (v[2][0] - v[0][0]);
  const float orient = area2 >= 0 ? 1.0f : -1.0f;
  const int r = static_cast<int>(std::ceil(std::max(length, width))) + 2;
  for (int y = static_cast<int>(ty) - r; y <= static_cast<int>(ty) + r; ++y)
    for (int x = static_cast<int>(tx) - r; x <= static_cast<int>(tx) + r; ++x) {
      float inside = 1e9f;  // signed distance to the nearest edge, positive inside
      for (int e = 0; e < 3; ++e) {
        const auto& a = v[e];
        const auto& b = v[(e + 1) % 3];
        const float ex = b[0] - a[0], ey = b[1] - a[1], el = std::hypot(ex, ey);
        inside = std::min(inside, orient * (ex * (y + 0.5f - a[1]) - ey * (x + 0.5f - a[0])) / el);
      }
      img.blend(x, y, c, alpha * coverage_from_distance(inside));
    }
}


// ---- heat maps --------------------------------------------------------------------------------

/// A sequential colour scale for t in [0, 1] (clamped; NaN counts as 0): white at 0, then
/// ColorBrewer's YlOrRd (yellow, orange, red) to dark red at 1. Darker means more, so a heat map
/// reads on white paper and in grey print.
inline rgb8 heat_rgb(float t) {
  static constexpr std::array<rgb8, 9> stops = {{{255, 255, 255}, {255, 237, 160}, {254, 217, 118}, {254, 178, 76}, {253, 141, 60},
                                                 {252, 78, 42},   {227, 26, 28},   {189, 0, 38},    {128, 0, 38}}};
  t = std::isnan(t) ? 0.0f : std::clamp(t, 0.0f, 1.0f);
  const float x = t * static_cast<float>(stops.size() - 1);
  const std::size_t i = std::min(static_cast<std::size_t>(x), stops.size() - 2);
  const float f = x - static_cast<float>(i);
  const auto mix = [f](std::uint8_t a, std::uint8_t b) { return static_cast<std::uint8_t>(std::lround(a + f * (b - a))); };
  return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}

/// The canvas turned a quarter turn counter-clockwise (text then reads from bottom to top).
inline canvas rotated_left(const canvas& c) {
  canvas r(c.height(), c.width());
  for (int y = 0; y < c.height(); ++y)
    for (int x = 0; x < c.width(); ++x) r.set(y, c.width() - 1 - x, c.at(x, y));
  return r;
}

struct heat_map_options {
  int cell = 20;         ///< pixels per cell side
  float vmax = 1;        ///< the value drawn darkest (values are clamped to [0, vmax])
  int text_scale = 1;    ///< of the labels and numbers
  bool numbers = false;  ///< print round(100 v) in every cell with v >= 0.005 (attention as percent)
  std::vector<int> groups;  ///< indices i: a dark line before row i and column i separates groups (square maps)
};

/// A matrix (row_labels.size() x col_labels.size(), row-major `values`) as cells coloured by
/// heat_rgb(v / vmax), row labels right-aligned on the left, column labels above it, rotated.
inline canvas heat_map(std::span<const float> values, std::span<const std::string> row_labels, std::span<const std::string> col_labels,
                       const heat_map_options& o = {}) {
  const int rows = static_cast<int>(row_labels.size()), cols = static_cast<int>(col_labels.size());
  if (rows == 0 || cols == 0) throw std::invalid_argument("heat_map: need at least one row label and one column label");
  if (values.size() != static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols))
    throw std::invalid_argument("heat_map: values holds " + std::to_string(values.size()) + " numbers, not rows x cols = " + std::to_string(rows * cols));
  if (o.cell <= 0 || !(o.vmax > 0)) throw std::invalid_argument("heat_map: cell and vmax must be positive");
  const int pad = 4, line = text_line_height(o.text_scale);
  int left = 0, top = 0;
  for (const auto& l : row_labels) left = std::max(left, text_width(l, o.text_scale));
  for (const auto& l : col_labels) top = std::max(top, text_width(l, o.text_scale));
  left += pad, top += pad;
  canvas c(left + cols * o.cell + 1, top + rows * o.cell + 1);
  const int text_dy = (o.cell - line) / 2 + o.text_scale;  // stb_easy_font leaves about one unit above the capitals
  for (int i = 0; i < rows; ++i)
    draw_text(c, left - pad - text_width(row_labels[static_cast<std::size_t>(i)], o.text_scale), top + i * o.cell + text_dy, row_labels[static_cast<std::size_t>(i)],
              text_rgb, o.text_scale);
  for (int j = 0; j < cols; ++j) {
    const std::string& l = col_labels[static_cast<std::size_t>(j)];
    canvas t(std::max(1, text_width(l, o.text_scale)), line);
    draw_text(t, 0, 0, l, text_rgb, o.text_scale);
    c.paste(rotated_left(t), left + j * o.cell + text_dy, top - pad - t.width());
  }
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const float v = values[static_cast<std::size_t>(i * cols + j)], t = v / o.vmax;
      c.fill_rect(left + j * o.cell, top + i * o.cell, o.cell, o.cell, heat_rgb(t));
      if (o.numbers && v >= 0.005f) {
        const std::string s = std::to_string(static_cast<int>(std::lround(100 * v)));
        draw_text(c, left + j * o.cell + (o.cell - text_width(s, o.text_scale)) / 2 + o.text_scale, top + i * o.cell + text_dy, s,
                  t > 0.55f ? white_rgb : text_rgb, o.text_scale);
      }
    }
  for (int i = 0; i <= rows; ++i) c.fill_rect(left, top + i * o.cell, cols * o.cell + 1, 1, gap_rgb);
  for (int j = 0; j <= cols; ++j) c.fill_rect(left + j * o.cell, top, 1, rows * o.cell + 1, gap_rgb);
  for (int g : o.groups) {
    if (g > 0 && g < rows) c.fill_rect(left, top + g * o.cell - 1, cols * o.cell + 1, 2, text_rgb);
    if (g > 0 && g < cols) c.fill_rect(left + g * o.cell - 1, top, 2, rows * o.cell + 1, text_rgb);
  }
  return c;
}

/// A horizontal colour bar of heat_rgb from 0 (left) to 1 (right), `length` x `thickness`
/// pixels, with the labels of its two ends (e.g. 0 and the heat map's vmax) under it.
inline canvas colour_bar(int length, int thickness, const std::string& low_label, const std::string& high_label, int text_scale = 1) {
  if (length < 2 || thickness < 1) throw std::invalid_argument("colour_bar: length must be at least 2 and thickness at least 1");
  canvas c(length + text_width(high_label, text_scale) / 2 + 1, thickness + text_line_height(text_scale) + 2);
  for (int x = 0; x < length; ++x) c.fill_rect(x, 0, 1, thickness, heat_rgb(static_cast<float>(x) / static_cast<float>(length - 1)));
  draw_text(c, 0, thickness + 2, low_label, text_rgb, text_scale);
  draw_text(c, std::max(0, length - text_width(high_label, text_scale) / 2), thickness + 2, high_label, text_rgb, text_scale);
  return c;
}

/// Several canvases in a grid (row-major, `columns` per row) of equal cells, separated by a thin
/// gray gap; each part sits at the top-left of its white cell.
inline canvas tile(std::span<const canvas> parts, int columns) {
  if (parts.empty() || columns <= 0) throw std::invalid_argument("tile: need at least one part and one column");
  int cw = 0, ch = 0;
  for (const auto& p : parts) cw = std::max(cw, p.width()), ch = std::max(ch, p.height());
  const int cols = std::min<int>(columns, static_cast<int>(parts.size()));
  const int rows = (static_cast<int>(parts.size()) + cols - 1) / cols, gap = 2;
  canvas grid(cols * cw + (cols + 1) * gap, rows * ch + (rows + 1) * gap, gap_rgb);
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const int col = static_cast<int>(k) % cols, row = static_cast<int>(k) / cols;
    grid.fill_rect(gap + col * (cw + gap), gap + row * (ch + gap), cw, ch, white_rgb);
    grid.paste(parts[k], gap + col * (cw + gap), gap + row * (ch + gap));
  }
  return grid;
}

/// Writes a canvas as PNG. Returns false (and says why in *error) when it cannot.
inline bool write_png(const canvas& img, const std::filesystem::path& path, std::string* error = nullptr) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  const int ok = stbi_write_png(path.string().c_str(), img.width(), img.height(), 3, img.bytes().data(), img.width() * 3);
  if (!ok && error) *error = "cannot write PNG " + path.string();
  return ok != 0;
}

}  // namespace examples
