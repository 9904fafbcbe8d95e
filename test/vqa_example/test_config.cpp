// The flagship's configuration (examples/vqa_spatial_kd/src/config.hpp): the command line is
// checked as it is parsed (negative, overflowing or non-decimal seeds, NaN and infinite numbers,
// empty paths are refused with a message naming the option), and the settings a checkpoint is
// compared against on --resume name every difference.
#include <catch2/catch.hpp>

#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/config.hpp"

namespace {

struct parsed {
  std::optional<int> stop;
  vqa::run_options options;
  std::string err;
};

parsed parse(std::initializer_list<std::string> args) {
  std::vector<std::string> storage{"vqa_spatial_kd"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<const char*> argv;
  for (const auto& a : storage) argv.push_back(a.c_str());
  parsed p;
  std::ostringstream out, err;
  p.stop = vqa::parse_command_line(static_cast<int>(argv.size()), argv.data(), p.options, out, err);
  p.err = err.str();
  return p;
}

void expect_refused(std::initializer_list<std::string> args, const std::string& option) {
  const parsed p = parse(args);
  INFO("arguments: " << Catch::Detail::stringify(std::vector<std::string>(args)) << "\nmessage: " << p.err);
  REQUIRE(p.stop.has_value());
  CHECK(*p.stop != 0);
  CHECK(p.err.find(option) != std::string::npos);
}

}  // namespace

TEST_CASE("vqa config: bad command lines are refused at parse time, naming the option", "[vqa_example][config]") {
  expect_refused({"--first-seed", "-1"}, "--first-seed");  // would wrap to 2^64 - 1
  expect_refused({"--first-seed", "18446744073709551616"}, "--first-seed");  // would saturate
  expect_refused({"--first-seed", "18446744073709551615", "--seeds", "2"}, "--first-seed");  // second seed would be 0
  expect_refused({"--preset", "smoke", "--first-seed", "18446744073709551615", "--seeds", "3"}, "--first-seed");
  expect_refused({"--first-seed", "0x10"}, "--first-seed");
  expect_refused({"--data-seed", "-5"}, "--data-seed");
  expect_refused({"--seeds", "-1"}, "--seeds");
  expect_refused({"--epochs", "-3"}, "--epochs");
  expect_refused({"--threads", "0"}, "--threads");
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "1e999", "0", "-1", "", "0.1x"}) expect_refused({"--lr", bad}, "--lr");
  expect_refused({"--alpha", "nan"}, "--alpha");
  expect_refused({"--temperature", "inf"}, "--temperature");
  expect_refused({"--dropout", "nan"}, "--dropout");
  expect_refused({"--nce-weight", "nan"}, "--nce-weight");
  expect_refused({"--out", ""}, "--out");  // would write into the current folder
  expect_refused({"--data-dir", ""}, "--data-dir");
  expect_refused({"--rules", ""}, "--rules");
  expect_refused({"--models", "teacher"}, "--models");
  expect_refused({"--f-hidden", "32", "-4"}, "--f-hidden");
  expect_refused({"--device", "tpu"}, "--device");
}

TEST_CASE("vqa config: good command lines, presets and overrides", "[vqa_example][config]") {
  const parsed smoke = parse({"--preset", "smoke", "--first-seed", "18446744073709551615", "--lr", "2e-3", "--epochs", "010",
                              "--models", "student_logits", "baseline", "baseline", "--out", "x"});
  REQUIRE_FALSE(smoke.stop.has_value());
  const vqa::run_options& o = smoke.options;
  CHECK(o.first_seed == 18446744073709551615ull);  // one seed: the largest is fine
  CHECK(o.seeds == 1);
  CHECK(o.train.lr == 2e-3);
  CHECK(o.epochs == 10);  // decimal, not octal
  CHECK(o.train_images == 300);
  CHECK(o.models == std::vector<std::string>{"baseline", "teacher_logic", "student_logits"});  // teacher added, duplicates dropped, in order
  CHECK(o.out == "x");
  const parsed seeds = parse({"--first-seed", "18446744073709551613", "--seeds", "3"});
  REQUIRE_FALSE(seeds.stop.has_value());
  CHECK(seeds.options.first_seed + 2 == 18446744073709551615ull);
  const parsed help = parse({"--help"});
  REQUIRE(help.stop.has_value());
  CHECK(*help.stop == 0);
}

TEST_CASE("vqa config: the training settings a checkpoint is compared against", "[vqa_example][config]") {
  const auto base = parse({"--preset", "smoke", "--threads", "2"}).options;
  const nlohmann::json a = vqa::training_settings(base, "cpu", 0x1234);
  CHECK(vqa::settings_mismatch(a, a).empty());
  // What only selects work may change between a run and its resumption.
  auto more = base;
  more.seeds = 3, more.first_seed = 7, more.models = {"baseline"}, more.render = 0, more.out = "elsewhere";
  CHECK(vqa::settings_mismatch(a, vqa::training_settings(more, "cpu", 0x1234)).empty());
  // Anything that changes the result may not, and every difference is named.
  auto other = base;
  other.train.lr = 2e-3, other.data_seed = 9, other.train.batch = 16;
  const std::string diff = vqa::settings_mismatch(a, vqa::training_settings(other, "cpu", 0x1234));
  CHECK(diff.find("lr = 0.001 in the checkpoint, 0.002 now") != std::string::npos);
  CHECK(diff.find("data_seed = 1 in the checkpoint, 9 now") != std::string::npos);
  CHECK(diff.find("batch = 32 in the checkpoint, 16 now") != std::string::npos);
  CHECK(vqa::settings_mismatch(a, vqa::training_settings(base, "cuda", 0x1234)).find("device") != std::string::npos);
  CHECK(vqa::settings_mismatch(a, vqa::training_settings(base, "cpu", 0x1235)).find("rules") != std::string::npos);
  auto threads = base;
  threads.train.threads = 1;  // CPU reductions split by thread: the result depends on it
  CHECK(vqa::settings_mismatch(a, vqa::training_settings(threads, "cpu", 0x1234)).find("threads") != std::string::npos);
  auto pixels = base;
  pixels.pixels = pixels.train.pixels = true;
  const std::string px = vqa::settings_mismatch(a, vqa::training_settings(pixels, "cpu", 0x1234));
  CHECK(px.find("pixels = false in the checkpoint, true now") != std::string::npos);
  CHECK(px.find("queue_size = (absent) in the checkpoint, 4096 now") != std::string::npos);
}
