// The fashion_kd report (examples/fashion_kd/src/report.hpp): the table against hand-computed
// cells, paired differences per seed, results.json and curves.csv contents, confusion matrices.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../../examples/common/image.hpp"  // first: the stb_image_write implementation
#include "../../examples/fashion_kd/src/report.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;
using namespace fkd;

namespace {
row_result row(const std::string& key, const std::string& title, std::vector<double> tests, std::vector<double> vals) {
  row_result r{key, title, 52162, {}};
  for (std::size_t i = 0; i < tests.size(); ++i) r.runs.push_back({i + 1, vals[i], tests[i], 20.0 + i, 8, 15000 * 8 / 8});
  return r;
}
std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("fashion_kd report: the table's cells and the paired differences", "[fashion_kd][report]") {
  const std::vector<row_result> rows = {row("ce", "student alone (CE)", {0.880, 0.885, 0.890}, {0.89, 0.90, 0.91}),
                                        row("kd", "Hinton KD", {0.895, 0.900, 0.896}, {0.90, 0.905, 0.91})};
  const std::string t = format_table(rows, "CPU, 2 threads");
  INFO(t);
  CHECK(t.find("mean ± std over 3 seeds; CPU, 2 threads") != std::string::npos);
  CHECK(t.find("student alone (CE)") != std::string::npos);
  CHECK(t.find("88.50 ± 0.50") != std::string::npos);  // test accuracy of CE: mean 88.5, sample std 0.5
  CHECK(t.find("90.00 ± 1.00") != std::string::npos);  // validation of CE
  CHECK(t.find("52,162") != std::string::npos);
  CHECK(t.find("2.6 ± 0.1") != std::string::npos);     // seconds per epoch: 20, 21, 22 s over 8 epochs
  // all lines equally wide (aligned columns)
  std::istringstream lines(t);
  std::string line;
  std::getline(lines, line);  // heading
  std::vector<std::size_t> widths;
  while (std::getline(lines, line)) widths.push_back(examples::table::display_width(line));
  for (auto w : widths) CHECK(w == widths.front());

  // paired: per-seed differences 1.5, 1.5, 0.6 points
  const auto d = paired_difference(rows[1], rows[0]);
  CHECK(d.n == 3);
  CHECK(d.mean == Approx((0.015 + 0.015 + 0.006) / 3));
  const std::string c = format_comparisons(rows);
  INFO(c);
  CHECK(c.find("Hinton KD - student alone (CE): +1.20") != std::string::npos);
  CHECK(c.find("larger than the seeds' spread, 0.50") != std::string::npos);
}

TEST_CASE("fashion_kd report: results.json, curves.csv and the pictures are written", "[fashion_kd][report]") {
  const fs::path dir = fs::temp_directory_path() / ("distill_fashion_report_" + std::to_string(distill_test::test_seed()));
  fs::remove_all(dir);
  const std::vector<row_result> rows = {row("ce", "student alone (CE)", {0.88, 0.89}, {0.90, 0.91})};
  const row_result teacher = row("teacher", "teacher", {0.927}, {0.933});
  write_results_json(dir / "results.json", examples::results_json_t{{"preset", "smoke"}}, "CPU, 2 threads", teacher, rows);
  const auto j = nlohmann::json::parse(read(dir / "results.json"));
  CHECK(j["config"]["preset"] == "smoke");
  CHECK(j["teacher"]["test_accuracy"]["mean"].get<double>() == Approx(0.927));
  CHECK(j["rows"][0]["test_accuracy"]["mean"].get<double>() == Approx(0.885));
  CHECK(j["rows"][0]["seeds"].size() == 2);
  CHECK(j["rows"][0]["seeds"][1]["seconds_per_epoch"].get<double>() == Approx(21.0 / 8));

  write_curves_csv(dir / "curves.csv", std::vector<curve_point>{{"ce", 1, 1, 0.5, 0.25, 3.5}, {"a,b", 2, 3, 0.75, 0.5, 7.0}});
  CHECK(read(dir / "curves.csv") == "row,seed,epoch,val_accuracy,test_accuracy,train_seconds\nce,1,1,0.5,0.25,3.500\n\"a,b\",2,3,0.75,0.5,7.000\n");

  // a confusion matrix counts (truth, prediction) pairs; the PNGs are written
  const std::vector<std::uint8_t> truth{0, 0, 1, 9, 9, 9};
  const std::vector<std::int32_t> pred{0, 1, 1, 9, 8, 9};
  const auto m = confusion_of(truth, pred);
  CHECK(m[0][0] == 1);
  CHECK(m[0][1] == 1);
  CHECK(m[9][9] == 2);
  CHECK(m[9][8] == 1);
  CHECK(examples::write_png(render_confusion(m, "test"), dir / "confusion.png"));
  std::vector<std::uint8_t> pixels(784, 128);
  const std::vector<error_panel> panels{{pixels, 3, 4, 3}, {pixels, 1, 2, 5}};
  const auto img = render_errors(panels, "errors", 6);
  CHECK(img.width() > 2 * 112);
  CHECK(examples::write_png(img, dir / "errors.png"));
  CHECK(fs::file_size(dir / "confusion.png") > 1000);
  fs::remove_all(dir);
}
