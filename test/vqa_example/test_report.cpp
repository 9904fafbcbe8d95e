// Results and progress (examples/vqa_spatial_kd/src/report.hpp, examples/common/progress.hpp): accuracy per
// question type, mean ± std over seeds against hand-computed values, the table, results.json,
// curves.csv, the gnuplot plot (or its graceful absence) and the progress bar's output.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../../examples/common/progress.hpp"
#include "../../examples/vqa_spatial_kd/src/report.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;
using vqa::question_type;

namespace {

struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name) {
    path = fs::temp_directory_path() / ("distill_vqa_report_" + name + "_" + std::to_string(distill_test::test_seed()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::size_t utf8_width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// baseline: 3 seeds, shape accuracy 0.9 / 0.8 / 0.7, time 10 / 20 / 30 s;
// teacher: 3 seeds, everything 0.95 / 0.97 / 0.99, time 40 / 40 / 40 s.
std::vector<vqa::model_result> two_models() {
  vqa::model_result base{"baseline", {}}, teacher{"teacher (logic mask)", {}};
  for (int s = 0; s < 3; ++s) {
    vqa::accuracy_metrics a;
    a.fill(0.5 + 0.1 * s);
    a[0] = 0.9 - 0.1 * s;
    base.seeds.push_back({std::uint64_t(s + 1), a, 10.0 * (s + 1)});
    vqa::accuracy_metrics t;
    t.fill(0.95 + 0.02 * s);
    teacher.seeds.push_back({std::uint64_t(s + 1), t, 40.0});
  }
  return {base, teacher};
}

}  // namespace

TEST_CASE("report: accuracy per question type and pooled per kind", "[vqa_example]") {
  vqa::accuracy_counter c;
  // shape 3/4, left 1/2, top none, closest 2/2, furthest 0/1, count 1/3.
  for (bool r : {true, true, false, true}) c.add(question_type::shape, r);
  for (bool r : {true, false}) c.add(question_type::left, r);
  for (bool r : {true, true}) c.add(question_type::closest, r);
  c.add(question_type::furthest, false);
  for (bool r : {false, true, false}) c.add(question_type::count, r);
  CHECK(c.accuracy(question_type::shape) == Approx(0.75));
  CHECK(c.accuracy(question_type::left) == Approx(0.5));
  CHECK(std::isnan(c.accuracy(question_type::top)));
  CHECK(c.accuracy(question_type::closest) == Approx(1.0));
  CHECK(c.accuracy(question_type::furthest) == Approx(0.0));
  CHECK(c.accuracy(question_type::count) == Approx(1.0 / 3));
  CHECK(c.non_relational() == Approx(4.0 / 6));
  CHECK(c.relational() == Approx(3.0 / 6));
  CHECK(c.overall() == Approx(7.0 / 12));
  const auto m = c.metrics();
  CHECK(m[vqa::metric_non_relational] == Approx(4.0 / 6));
  CHECK(m[vqa::metric_relational] == Approx(0.5));
  CHECK(m[vqa::metric_overall] == Approx(7.0 / 12));

  // add(question, predicted) and merge.
  vqa::accuracy_counter d;
  d.add(vqa::question{0, 1, question_type::top, 0}, 0);
  d.add(vqa::question{0, 1, question_type::top, 0}, 1);
  c.merge(d);
  CHECK(c.accuracy(question_type::top) == Approx(0.5));
  CHECK(c.non_relational() == Approx(5.0 / 8));
}

TEST_CASE("report: mean and sample standard deviation over seeds", "[vqa_example]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> three = {0.9, 0.8, 0.7}, one = {0.5}, with_nan = {nan, 0.4, 0.6}, none = {};
  auto a = vqa::summarize(three);
  CHECK(a.n == 3);
  CHECK(a.mean == Approx(0.8));
  CHECK(a.stddev == Approx(0.1));  // sqrt((0.01 + 0 + 0.01) / 2)
  auto b = vqa::summarize(one);
  CHECK(b.n == 1);
  CHECK(b.mean == Approx(0.5));
  CHECK(std::isnan(b.stddev));
  auto c = vqa::summarize(with_nan);
  CHECK(c.n == 2);
  CHECK(c.mean == Approx(0.5));
  CHECK(c.stddev == Approx(std::sqrt(0.02)));
  CHECK(vqa::summarize(none).n == 0);

  const auto models = two_models();
  const auto s = vqa::summarize_accuracy(models[0]);
  CHECK(s[0].mean == Approx(0.8));
  CHECK(s[0].stddev == Approx(0.1));
  CHECK(s[vqa::metric_relational].mean == Approx(0.6));
  CHECK(vqa::summarize_train_seconds(models[0]).mean == Approx(20.0));
  CHECK(vqa::summarize_train_seconds(models[0]).stddev == Approx(10.0));
  CHECK(vqa::summarize_train_seconds(models[1]).stddev == Approx(0.0).margin(1e-12));
}

TEST_CASE("report: the results table", "[vqa_example]") {
  const auto models = two_models();
  const std::string table = vqa::format_results_table(models);
  INFO(table);
  const auto lines = split_lines(table);
  REQUIRE(lines.size() == 6);  // title, groups, header, rule, 2 models
  CHECK(lines[0].find("mean ± std over 3 seeds") != std::string::npos);
  CHECK(lines[2].find("closest") != std::string::npos);
  CHECK(lines[2].find("train time") != std::string::npos);
  CHECK(lines[4].rfind("baseline", 0) == 0);
  CHECK(lines[4].find("80.0 ± 10.0") != std::string::npos);   // shape
  CHECK(lines[4].find("60.0 ± 10.0") != std::string::npos);   // every other metric
  CHECK(lines[4].find("20.0 ± 10.0 s") != std::string::npos);  // train time
  CHECK(lines[5].find("97.0 ± 2.0") != std::string::npos);
  CHECK(lines[5].find("40.0 ± 0.0 s") != std::string::npos);
  // Aligned: header, rule and rows have one display width.
  CHECK(utf8_width(lines[2]) == utf8_width(lines[3]));
  CHECK(utf8_width(lines[4]) == utf8_width(lines[2]));
  CHECK(utf8_width(lines[5]) == utf8_width(lines[2]));
  // Columns line up: "|" separators at the same places in every row.
  for (std::size_t col : {lines[2].find(" | "), lines[2].rfind(" | ")}) {
    const std::size_t w = utf8_width(lines[2].substr(0, col));
    for (int r : {4, 5}) {
      const std::string& l = lines[r];
      std::size_t byte = 0, seen = 0;
      while (seen < w) seen += (static_cast<unsigned char>(l[byte++]) & 0xC0) != 0x80;
      while (byte < l.size() && (static_cast<unsigned char>(l[byte]) & 0xC0) == 0x80) ++byte;
      CHECK(l.substr(byte, 3) == " | ");
    }
  }

  // One seed: no spread shown.
  vqa::model_result single{"student", {models[0].seeds[0]}};
  const std::string t1 = vqa::format_results_table(std::vector<vqa::model_result>{single});
  CHECK(t1.find("over 1 seed;") != std::string::npos);
  CHECK(split_lines(t1)[4].find("±") == std::string::npos);
  CHECK(split_lines(t1)[4].find("90.0") != std::string::npos);
}

TEST_CASE("report: results.json holds the configuration and the same numbers", "[vqa_example]") {
  temp_dir dir("json");
  auto models = two_models();
  models.push_back({"student (a)", {models[0].seeds[0]}});
  models.back().seeds[0].test[vqa::metric_relational] = std::numeric_limits<double>::quiet_NaN();
  nlohmann::json config;
  config["preset"] = "cpu-small";
  config["epochs"] = 10;
  config["alpha"] = 0.7;
  vqa::write_results_json(dir.path / "out" / "results.json", config, models);
  const auto j = nlohmann::json::parse(slurp(dir.path / "out" / "results.json"));
  CHECK(j["config"]["preset"] == "cpu-small");
  CHECK(j["config"]["epochs"] == 10);
  CHECK(j["config"]["alpha"].get<double>() == Approx(0.7));
  REQUIRE(j["metrics"].size() == 9);
  CHECK(j["metrics"][3] == "closest");
  CHECK(j["metrics"][6] == "non_relational");
  REQUIRE(j["models"].size() == 3);
  const auto& b = j["models"][0];
  CHECK(b["name"] == "baseline");
  CHECK(b["test_accuracy"]["shape"]["mean"].get<double>() == Approx(0.8));
  CHECK(b["test_accuracy"]["shape"]["std"].get<double>() == Approx(0.1));
  CHECK(b["test_accuracy"]["shape"]["n"] == 3);
  CHECK(b["test_accuracy"]["relational"]["mean"].get<double>() == Approx(0.6));
  CHECK(b["train_seconds"]["mean"].get<double>() == Approx(20.0));
  REQUIRE(b["seeds"].size() == 3);
  CHECK(b["seeds"][1]["seed"] == 2);
  CHECK(b["seeds"][1]["test_accuracy"]["shape"].get<double>() == Approx(0.8));
  CHECK(b["seeds"][2]["train_seconds"].get<double>() == Approx(30.0));
  CHECK(j["models"][1]["name"] == "teacher (logic mask)");
  CHECK(j["models"][1]["test_accuracy"]["overall"]["mean"].get<double>() == Approx(0.97));
  const auto& s = j["models"][2];
  CHECK(s["test_accuracy"]["shape"]["std"].is_null());  // one seed
  CHECK(s["test_accuracy"]["relational"]["mean"].is_null());
  CHECK(s["test_accuracy"]["relational"]["n"] == 0);
  CHECK(s["seeds"][0]["test_accuracy"]["relational"].is_null());
}

TEST_CASE("report: results.json and curves.csv are replaced atomically, never rewritten in place", "[vqa_example]") {
  // A second hard link to the old file keeps the old contents only when the new file is a new
  // inode renamed into place (a truncating write would change both names' contents at once, and
  // a crash in between would leave a truncated file).
  temp_dir dir("atomic");
  const fs::path json = dir.path / "results.json", csv = dir.path / "curves.csv";
  const auto models = two_models();
  nlohmann::json config;
  config["run"] = 1;
  vqa::write_results_json(json, config, models);
  vqa::write_curves_csv(csv, std::vector<vqa::curve_point>{{"a", 1, 1, 0.5, 0.5, 0.5, 0.5, 1}});
  fs::create_hard_link(json, dir.path / "results.json.before");
  fs::create_hard_link(csv, dir.path / "curves.csv.before");
  const std::string json_before = slurp(json), csv_before = slurp(csv);
  config["run"] = 2;
  vqa::write_results_json(json, config, models);
  vqa::write_curves_csv(csv, std::vector<vqa::curve_point>{{"b", 2, 2, 0.25, 0.5, 0.5, 0.5, 2}});
  CHECK(slurp(dir.path / "results.json.before") == json_before);
  CHECK(slurp(dir.path / "curves.csv.before") == csv_before);
  CHECK(nlohmann::json::parse(slurp(json))["config"]["run"] == 2);
  CHECK(slurp(csv).find("\nb,2,2,") != std::string::npos);
  for (const auto& e : fs::directory_iterator(dir.path)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("report: curves.csv and the mean curves", "[vqa_example]") {
  temp_dir dir("csv");
  vqa::accuracy_metrics m;
  m.fill(0.0);
  m[vqa::metric_overall] = 0.75, m[vqa::metric_non_relational] = 0.8, m[vqa::metric_relational] = 0.7;
  std::vector<vqa::curve_point> pts = {vqa::make_curve_point("baseline", 1, 2, 0.1, m, 12.5),
                                       {"a,\"b", 3, 1, 2.5, 0.5, 0.25, 0.125, 1.0}};
  vqa::write_curves_csv(dir.path / "curves.csv", pts);
  CHECK(slurp(dir.path / "curves.csv") ==
        "model,seed,epoch,train_loss,test_overall,test_non_relational,test_relational,seconds\n"
        "baseline,1,2,0.10000000000000001,0.75,0.8,0.7,12.500\n"  // 17 digits: the double exactly
        "\"a,\"\"b\",3,1,2.5,0.5,0.25,0.125,1.000\n");

  // Mean over seeds per model and epoch, models in order of first appearance.
  const std::vector<vqa::curve_point> runs = {{"s", 1, 1, 0, 0.5, 0.6, 0.4, 1}, {"s", 2, 1, 0, 0.7, 0.8, 0.6, 1},
                                              {"b", 1, 1, 0, 0.1, 0.2, 0.3, 1}, {"s", 1, 2, 0, 0.9, 1.0, 0.8, 2},
                                              {"s", 2, 2, 0, 0.7, 0.8, 0.6, 2}};
  const auto c = vqa::mean_curves(runs);
  REQUIRE(c.size() == 2);
  CHECK(c[0].model == "s");
  CHECK(c[1].model == "b");
  CHECK(c[0].by_epoch.at(1)[0] == Approx(0.6));
  CHECK(c[0].by_epoch.at(1)[1] == Approx(0.7));
  CHECK(c[0].by_epoch.at(2)[2] == Approx(0.7));
  CHECK(c[1].by_epoch.at(1)[2] == Approx(0.3));
}

TEST_CASE("report: the accuracy plot through gnuplot, or a message without it", "[vqa_example]") {
  temp_dir dir("plot");
  std::vector<vqa::curve_point> pts;
  for (int model = 0; model < 2; ++model)
    for (int seed = 1; seed <= 2; ++seed)
      for (int e = 1; e <= 4; ++e)
        pts.push_back({model ? "student_b's" : "baseline", std::uint64_t(seed), e, 1.0 / e, 0.5 + 0.1 * e, 0.6 + 0.05 * e, 0.4 + 0.1 * e, e * 2.0});

  const auto missing = vqa::plot_curves(pts, dir.path / "none.png", "distill-no-such-gnuplot");
  CHECK_FALSE(missing.written);
  CHECK(missing.message.find("not found") != std::string::npos);
  CHECK(fs::exists(dir.path / "none.gp"));  // the script is still there to run later
  CHECK_FALSE(fs::exists(dir.path / "none.png"));

  const std::string script = vqa::gnuplot_script(pts, dir.path / "curves.png");
  CHECK(script.find("pngcairo") != std::string::npos);
  CHECK(script.find("set terminal png ") != std::string::npos);  // the fallback terminal
  CHECK(script.find("\"student_b's\"") != std::string::npos);

  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    WARN("gnuplot not installed: only the fallback is tested");
    return;
  }
  const auto r = vqa::plot_curves(pts, dir.path / "curves.png");
  INFO(r.message);
  REQUIRE(r.written);
  const std::string png = slurp(dir.path / "curves.png");
  REQUIRE(png.size() > 1000);
  CHECK(png.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
  CHECK_FALSE(fs::exists(dir.path / "curves.png.gnuplot.log"));
}

TEST_CASE("progress: durations, rates and the progress line", "[vqa_example]") {
  CHECK(examples::format_duration(0) == "00:00");
  CHECK(examples::format_duration(59.4) == "00:59");
  CHECK(examples::format_duration(61) == "01:01");
  CHECK(examples::format_duration(3725) == "1:02:05");
  CHECK(examples::format_duration(-1) == "--:--");
  CHECK(examples::format_duration(std::numeric_limits<double>::infinity()) == "--:--");
  CHECK(examples::format_rate(412.3) == "412 it/s");
  CHECK(examples::format_rate(3.54, "q") == "3.5 q/s");
  CHECK(examples::format_rate(0.254) == "0.25 it/s");
  CHECK(examples::format_rate(0) == "? it/s");
  CHECK(examples::format_progress("train", 50, 100, 5.0, 10, "loss 0.5") == "train [#####.....]  50/100  10.0 it/s  00:05<00:05  loss 0.5");
  CHECK(examples::format_progress("x", 7, 0, 2.0, 10) == "x  7  3.5 it/s  00:02<?");
  CHECK(examples::format_progress("y", 150, 100, 1.0, 4) == "y [####]  150/100  150 it/s  00:01<00:00");
}

TEST_CASE("progress: plain lines every interval, terminal redraws at most 10 per second", "[vqa_example]") {
  double now = 0;
  auto clock = [&] { return now; };
  {  // plain: lines at 10 s, 20 s, 30 s and the final one
    std::ostringstream out;
    examples::progress_options o;
    o.out = &out;
    o.display = examples::progress_display::plain;
    o.clock = clock;
    o.bar_width = 10;
    {
      examples::progress_bar bar("epoch", 35, o);
      for (int i = 0; i < 35; ++i) {
        now += 1;
        bar.advance();
      }
      CHECK(bar.done() == 35);
    }  // the destructor finishes
    const auto lines = split_lines(out.str());
    REQUIRE(lines.size() == 4);
    CHECK(lines[0] == "epoch [##........]  10/35  1.0 it/s  00:10<00:25");
    CHECK(lines[3] == "epoch [##########]  35/35  1.0 it/s  00:35<00:00");
    CHECK(out.str().find('\r') == std::string::npos);
  }
  {  // terminal: 1000 updates over 2 s → at most 21 redraws (+1 final), each "\r"; one newline at the end
    now = 0;
    std::ostringstream out;
    examples::progress_options o;
    o.out = &out;
    o.display = examples::progress_display::terminal;
    o.clock = clock;
    examples::progress_bar bar("step", 1000, o);
    for (int i = 0; i < 1000; ++i) {
      now += 0.002;
      bar.set_suffix("loss 1.0");
      bar.advance();
    }
    bar.finish();
    bar.finish();  // once only
    const std::string s = out.str();
    const auto redraws = std::count(s.begin(), s.end(), '\r');
    CHECK(redraws >= 19);
    CHECK(redraws <= 22);
    CHECK(std::count(s.begin(), s.end(), '\n') == 1);
    CHECK(s.back() == '\n');
    CHECK(s.find("1000/1000") != std::string::npos);
    CHECK(s.find("loss 1.0") != std::string::npos);
  }
  {  // silent
    std::ostringstream out;
    examples::progress_options o;
    o.out = &out;
    o.display = examples::progress_display::silent;
    examples::progress_bar bar("quiet", 10, o);
    bar.advance(10);
    bar.finish();
    CHECK(out.str().empty());
  }
}
