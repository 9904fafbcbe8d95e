// SPDX-License-Identifier: MIT
#pragma once
// What every example's report needs: mean ± std over seeds, aligned text tables, JSON numbers,
// text and CSV files, and plots drawn by gnuplot.
//
// Over seeds: mean and sample standard deviation (n − 1 in the denominator); with one seed the
// standard deviation is undefined: NaN in the code, null in JSON, omitted in tables. NaN values
// (a metric a run did not measure) are left out.
//
// Plots: an example writes a self-contained gnuplot script (data in inline datablocks) next to
// the PNG and `run_gnuplot` draws it. Without gnuplot nothing is thrown: the result says why,
// and the numbers are still in the example's CSV files.

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/core/file_io.hpp"

namespace examples {

struct mean_std {
  double mean = std::numeric_limits<double>::quiet_NaN();
  double stddev = std::numeric_limits<double>::quiet_NaN();  // sample standard deviation; NaN for n < 2
  std::size_t n = 0;                                         // values used (NaNs are left out)
};

inline mean_std summarize(std::span<const double> values) {
  mean_std r;
  double sum = 0;
  for (double v : values)
    if (!std::isnan(v)) sum += v, ++r.n;
  if (r.n == 0) return r;
  r.mean = sum / static_cast<double>(r.n);
  if (r.n < 2) return r;
  double ss = 0;
  for (double v : values)
    if (!std::isnan(v)) ss += (v - r.mean) * (v - r.mean);
  r.stddev = std::sqrt(ss / static_cast<double>(r.n - 1));
  return r;
}

// ---- text tables --------------------------------------------------------------------------------

namespace table {

/// Display width of UTF-8 text (code points; tables use "±" as their only non-ASCII character).
inline std::size_t display_width(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}
inline std::string pad_right(const std::string& s, std::size_t w) { return s + std::string(w > display_width(s) ? w - display_width(s) : 0, ' '); }
inline std::string pad_left(const std::string& s, std::size_t w) { return std::string(w > display_width(s) ? w - display_width(s) : 0, ' ') + s; }

inline std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

/// "97.3 ± 0.4" (fractions shown as percent), "97.3" with one value, "n/a" without values.
inline std::string percent_cell(const mean_std& m, int decimals = 1) {
  if (m.n == 0) return "n/a";
  std::string s = fixed(100 * m.mean, decimals);
  if (!std::isnan(m.stddev)) s += " ± " + fixed(100 * m.stddev, decimals);
  return s;
}

/// "49.8 ± 0.5 s" (no decimals from 100 s on).
inline std::string seconds_cell(const mean_std& m) {
  if (m.n == 0) return "n/a";
  const int d = m.mean >= 100 ? 0 : 1;
  std::string s = fixed(m.mean, d);
  if (!std::isnan(m.stddev)) s += " ± " + fixed(m.stddev, d);
  return s + " s";
}

}  // namespace table

// ---- JSON and files ----------------------------------------------------------------------------

/// Result files keep their keys in the order written.
using results_json_t = nlohmann::ordered_json;

inline results_json_t number_or_null(double v) { return std::isnan(v) ? results_json_t() : results_json_t(v); }

inline results_json_t to_json(const mean_std& m) {
  results_json_t j;
  j["mean"] = number_or_null(m.mean);
  j["std"] = number_or_null(m.stddev);
  j["n"] = m.n;
  return j;
}

/// Replaces a file with `text` atomically (creating its folder); throws std::runtime_error on
/// failure, the previous file then untouched.
inline void write_text_file(const std::filesystem::path& path, const std::string& text) {
  distill::atomic_write_options opt;
  opt.create_parent_directories = true;
  const distill::status st = distill::write_file_atomically(
      "write_text_file", path.string(),
      std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(text.data()), text.size()), opt);
  if (!st.ok()) throw std::runtime_error(st.message());
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break.
inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// ---- gnuplot ------------------------------------------------------------------------------------

namespace gnuplot {
inline std::string double_quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}
inline std::string single_quoted(const std::string& s) {  // '' stands for ' inside '...'
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}
inline std::string shell_quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
/// The terminal lines of a script: pngcairo when this gnuplot has it, the libgd png terminal
/// otherwise, then the output file.
inline std::string png_terminal(int width, int height, const std::filesystem::path& png) {
  const std::string size = std::to_string(width) + "," + std::to_string(height);
  return "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n  set terminal pngcairo size " + size + " noenhanced\n} else {\n" +
         "  set terminal png size " + size + " noenhanced\n}\nset output " + single_quoted(png.string()) + "\n";
}
}  // namespace gnuplot

struct plot_result {
  bool written = false;
  std::string message;  // what happened (for the log)
};

/// Writes `script` beside `png` (same name, .gp) and runs gnuplot on it. The script must write
/// `png` (gnuplot::png_terminal). Never throws: the result says what happened.
inline plot_result run_gnuplot(const std::string& script_text, const std::filesystem::path& png, const std::string& program = "gnuplot",
                               const std::string& data_hint = "the CSV files") {
  using gnuplot::shell_quoted;
  plot_result r;
  std::filesystem::path script = png;
  script.replace_extension(".gp");
  try {
    write_text_file(script, script_text);
  } catch (const std::exception& e) {
    r.message = std::string("plot skipped: ") + e.what();
    return r;
  }
  if (std::system(("command -v " + shell_quoted(program) + " > /dev/null 2>&1").c_str()) != 0) {
    r.message = "plot skipped: " + program + " not found (install gnuplot, e.g. Debian's gnuplot-nox); the script is " +
                script.string() + ", the numbers are in " + data_hint;
    return r;
  }
  std::filesystem::path log = png;
  log += ".gnuplot.log";
  std::error_code ec;
  std::filesystem::remove(png, ec);
  const int rc = std::system((shell_quoted(program) + " " + shell_quoted(script.string()) + " > " + shell_quoted(log.string()) + " 2>&1").c_str());
  const bool exists = std::filesystem::exists(png, ec) && std::filesystem::file_size(png, ec) > 0;
  if (rc != 0 || !exists) {
    r.message = "plot failed: " + program + " " + script.string() + " (exit status " + std::to_string(rc) + "), see " + log.string();
    return r;
  }
  std::filesystem::remove(log, ec);
  r.written = true;
  r.message = "plot written to " + png.string();
  return r;
}

}  // namespace examples
