// SPDX-License-Identifier: MIT
#pragma once
// Pictures of scene-world scenes (scene_world.hpp): the grey canvas enlarged, each item's box
// and class (in-context items green, out-of-context items orange with a "!"), optionally a mask
// (translucent red), extra boxes (e.g. a detector's, with their own colours and labels) and
// caption lines under the scene. Tiled and written with image.hpp (include image.hpp first in
// the translation unit that owns stb_image_write).
//
//   examples::scene_picture_options o;
//   o.mask = examples::mask_for(sc.items[2], examples::mask_shape::circle);
//   o.caption = {"masked: Sandal", "context model: Sandal 71%, Sneaker 20%"};
//   examples::canvas c = examples::render_scene(set.image(k), set.params.side, sc, o);

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "image.hpp"
#include "scene_world.hpp"

namespace examples {

/// Short class names for labels drawn on scenes.
inline constexpr std::array<std::string_view, fashion_classes> fashion_short_names = {"T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                                                                      "Sandal",  "Shirt",   "Sneaker",  "Bag",   "Boot"};

inline constexpr rgb8 in_context_rgb{40, 200, 60}, out_of_context_rgb{255, 150, 0}, mask_rgb{220, 30, 30}, detection_rgb{40, 120, 255};

/// A box in canvas pixel coordinates (continuous, [x1, x2] x [y1, y2]) with a colour and a label.
struct scene_overlay_box {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;
  rgb8 colour = detection_rgb;
  std::string label;
};

struct scene_picture_options {
  int scale = 3;                    ///< screen pixels per scene pixel
  bool item_boxes = true;           ///< draw every item's box
  bool item_labels = true;          ///< and its class name
  std::optional<mask_region> mask;  ///< shade a mask
  std::vector<scene_overlay_box> boxes;  ///< extra boxes (drawn after the items')
  std::vector<std::string> caption;      ///< lines of text under the scene
  int text_scale = 1;
};

namespace scene_render_detail {
inline void rectangle(canvas& c, float x1, float y1, float x2, float y2, rgb8 colour, float thickness) {
  draw_segment(c, x1, y1, x2, y1, thickness, colour, 1.0f);
  draw_segment(c, x2, y1, x2, y2, thickness, colour, 1.0f);
  draw_segment(c, x2, y2, x1, y2, thickness, colour, 1.0f);
  draw_segment(c, x1, y2, x1, y1, thickness, colour, 1.0f);
}
/// A label with a white backing at (x, y) (top-left), kept inside the canvas.
inline void label(canvas& c, int x, int y, const std::string& text, rgb8 colour, int scale) {
  const int w = text_width(text, scale) + 2, h = text_line_height(scale) - 2 * scale;
  x = std::clamp(x, 0, std::max(0, c.width() - w));
  y = std::clamp(y, 0, std::max(0, c.height() - h));
  for (int yy = y; yy < y + h; ++yy)
    for (int xx = x; xx < x + w; ++xx) c.blend(xx, yy, white_rgb, 0.75f);
  draw_text(c, x + 1, y, text, colour, scale);
}
}  // namespace scene_render_detail

/// Draws one scene (pixels: side x side grey bytes) with the overlays of `o`.
inline canvas render_scene(std::span<const std::uint8_t> pixels, int side, const scene& sc, const scene_picture_options& o = {}) {
  using namespace scene_render_detail;
  const int s = o.scale, line = text_line_height(o.text_scale);
  canvas c(side * s, side * s + static_cast<int>(o.caption.size()) * line + (o.caption.empty() ? 0 : 4), white_rgb);
  for (int y = 0; y < side; ++y)
    for (int x = 0; x < side; ++x) {
      const std::uint8_t v = pixels[static_cast<std::size_t>(y * side + x)];
      c.fill_rect(x * s, y * s, s, s, rgb8{v, v, v});
    }
  if (o.mask) {
    const pixel_box b = o.mask->bounds(side);
    for (int y = b.y1; y < b.y2; ++y)
      for (int x = b.x1; x < b.x2; ++x)
        if (o.mask->contains(x, y))
          for (int yy = 0; yy < s; ++yy)
            for (int xx = 0; xx < s; ++xx) c.blend(x * s + xx, y * s + yy, mask_rgb, 0.55f);
  }
  const float t = std::max(1.0f, 0.5f * static_cast<float>(s));
  if (o.item_boxes)
    for (const scene_item& it : sc.items) {
      const rgb8 col = it.out_of_context ? out_of_context_rgb : in_context_rgb;
      rectangle(c, static_cast<float>(it.box.x1 * s), static_cast<float>(it.box.y1 * s), static_cast<float>(it.box.x2 * s),
                static_cast<float>(it.box.y2 * s), col, t);
      if (o.item_labels)
        label(c, it.box.x1 * s + 1, it.box.y1 * s + 1, std::string(fashion_short_names[it.cls]) + (it.out_of_context ? "!" : ""), col, o.text_scale);
    }
  for (const scene_overlay_box& b : o.boxes) {
    rectangle(c, b.x1 * static_cast<float>(s), b.y1 * static_cast<float>(s), b.x2 * static_cast<float>(s), b.y2 * static_cast<float>(s), b.colour, t);
    if (!b.label.empty())
      label(c, static_cast<int>(b.x1 * static_cast<float>(s)) + 1, static_cast<int>(b.y2 * static_cast<float>(s)) - line, b.label, b.colour, o.text_scale);
  }
  for (std::size_t i = 0; i < o.caption.size(); ++i) draw_text(c, 2, side * s + 2 + static_cast<int>(i) * line, o.caption[i], text_rgb, o.text_scale);
  return c;
}

/// The scene of a set, with its pixels.
inline canvas render_scene(const scene_set& set, std::size_t k, const scene_picture_options& o = {}) {
  return render_scene(set.image(k), set.params.side, set.scenes[k], o);
}

}  // namespace examples
