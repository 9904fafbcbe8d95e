// SPDX-License-Identifier: MIT
#pragma once
// A progress bar for long runs, on stderr:
//   train baseline s1 e3/10 [##########..........]  1234/5000  412 it/s  00:03<00:09  loss 0.42
// label, bar, count, rate (items per second), elapsed time and time left, and a free suffix.
// On a terminal the line is redrawn in place ("\r", at most 10 times a second). When stderr is not
// a terminal (CI logs, redirected output) it prints a plain line at most every 10 seconds and
// one at the end, so logs stay short. The clock can be replaced (tests).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <utility>

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

namespace examples {

/// "42s", "03:25", "1:02:03" for elapsed and remaining times; "--:--" when unknown.
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
  return buf;
}

/// "412 it/s", "3.5 it/s", "0.25 it/s", with `unit` in place of "it".
inline std::string format_rate(double per_second, const std::string& unit = "it") {
  char buf[48];
  if (!std::isfinite(per_second) || per_second <= 0) return "? " + unit + "/s";
  if (per_second >= 100)
    std::snprintf(buf, sizeof buf, "%.0f", per_second);
  else if (per_second >= 1)
    std::snprintf(buf, sizeof buf, "%.1f", per_second);
  else
    std::snprintf(buf, sizeof buf, "%.2f", per_second);
  return std::string(buf) + " " + unit + "/s";
}

/// One progress line (no "\r" or newline): label, bar of `bar_width` cells, count, rate,
/// elapsed<left, suffix. total ≤ 0 means unknown (no bar, no time left).
inline std::string format_progress(const std::string& label, std::int64_t done, std::int64_t total, double elapsed_s,
                                   int bar_width = 24, const std::string& suffix = {}, const std::string& unit = "it") {
  std::string line = label;
  if (total > 0 && bar_width > 0) {
    const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
    const int filled = static_cast<int>(std::floor(frac * bar_width));
    line += " [" + std::string(static_cast<std::size_t>(filled), '#') + std::string(static_cast<std::size_t>(bar_width - filled), '.') + "]";
  }
  line += "  " + std::to_string(done);
  if (total > 0) line += "/" + std::to_string(total);
  const double rate = elapsed_s > 0 ? static_cast<double>(done) / elapsed_s : 0.0;
  line += "  " + format_rate(rate, unit);
  const double left = (total > 0 && rate > 0) ? static_cast<double>(std::max<std::int64_t>(total - done, 0)) / rate : -1.0;
  line += "  " + format_duration(elapsed_s) + "<" + (total > 0 ? format_duration(left) : std::string("?"));
  if (!suffix.empty()) line += "  " + suffix;
  return line;
}

enum class progress_display {
  automatic,  // redraw in place when the stream is a terminal (stderr only), plain lines otherwise
  terminal,   // always redraw in place
  plain,      // periodic lines
  silent,     // nothing
};

struct progress_options {
  std::ostream* out = &std::cerr;
  progress_display display = progress_display::automatic;
  double redraw_interval_s = 0.1;  // terminal: at most 10 redraws a second
  double plain_interval_s = 10.0;  // plain: at most one line every 10 seconds
  int bar_width = 24;
  std::string unit = "it";
  std::function<double()> clock;   // seconds; empty = steady_clock
};

inline bool stderr_is_terminal() {
#if __has_include(<unistd.h>)
  return ::isatty(STDERR_FILENO) != 0;
#else
  return false;
#endif
}

class progress_bar {
 public:
  progress_bar(std::string label, std::int64_t total, progress_options opt = {})
      : label_(std::move(label)), total_(total), opt_(std::move(opt)) {
    if (!opt_.clock) {
      const auto t0 = std::chrono::steady_clock::now();
      opt_.clock = [t0] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    }
    terminal_ = opt_.display == progress_display::terminal ||
                (opt_.display == progress_display::automatic && opt_.out == &std::cerr && stderr_is_terminal());
    start_ = opt_.clock();
    last_draw_ = terminal_ ? -1e300 : start_;  // a terminal draws at once; plain logs after one interval
  }
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  ~progress_bar() { finish(); }

  /// n more items done.
  void advance(std::int64_t n = 1) { update(done_ + n); }
  /// Sets the count of items done (and draws if it is time to).
  void update(std::int64_t done) {
    done_ = done;
    draw(false);
  }
  /// A free text shown after the times, e.g. "loss 0.42".
  void set_suffix(std::string s) { suffix_ = std::move(s); }
  /// Draws the final line and ends it with a newline (once; the destructor calls it too).
  void finish() {
    if (finished_) return;
    draw(true);
    finished_ = true;
  }
  double elapsed() const { return opt_.clock() - start_; }
  std::int64_t done() const { return done_; }

 private:
  void draw(bool final) {
    if (finished_ || opt_.display == progress_display::silent || !opt_.out) return;
    const double now = opt_.clock();
    const double interval = terminal_ ? opt_.redraw_interval_s : opt_.plain_interval_s;
    if (!final && now - last_draw_ < interval) return;
    last_draw_ = now;
    const std::string line = format_progress(label_, done_, total_, now - start_, opt_.bar_width, suffix_, opt_.unit);
    if (terminal_)
      *opt_.out << '\r' << line << "\x1b[K" << (final ? "\n" : "") << std::flush;
    else
      *opt_.out << line << '\n' << std::flush;
  }

  std::string label_, suffix_;
  std::int64_t total_ = 0, done_ = 0;
  progress_options opt_;
  bool terminal_ = false, finished_ = false;
  double start_ = 0, last_draw_ = 0;
};

}  // namespace examples
