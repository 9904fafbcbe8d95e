// Checkpoints: round trip of parameters, buffers, optimiser state and metadata; truncated,
// corrupted and mismatched files refused with a clear status; the previous file intact after an
// interrupted save.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "distill/nn/batch_norm.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/optimizer.hpp"
#include "nn_test_util.hpp"

using namespace distill;
namespace fs = std::filesystem;

namespace {

struct tiny_model {
  nn::linear<float> fc1, fc2;
  nn::batch_norm<float> bn;
  explicit tiny_model(std::uint64_t seed)
      : fc1("fc1", 5, 4, {.seed = seed}), fc2("fc2", 4, 3, {.seed = seed}), bn("bn", 4) {}
  nn::parameter_list<float, host_space> parameters() { return nn::collect_parameters(fc1, bn, fc2); }
};

fs::path temp_dir(const char* name) {
  const fs::path d = fs::temp_directory_path() / ("distill_nn_ckpt_" + std::to_string(distill_test::test_seed()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<unsigned char> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const fs::path& p, const std::vector<unsigned char>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

/// Give every parameter a gradient and take two Adam steps, so the optimiser has state.
void train_a_little(tiny_model& m, nn::adam<float>& opt) {
  for (auto* p : m.parameters()) {
    if (!p->trainable) continue;
    std::vector<float> g(static_cast<std::size_t>(p->size()));
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * static_cast<float>(i + 1);
    REQUIRE(p->grad.copy_from_host(g).ok());
  }
  REQUIRE(opt.step(cpu{1}).ok());
  REQUIRE(opt.step(cpu{1}).ok());
  REQUIRE(m.bn.running_mean.value.copy_from_host(std::vector<float>{1, 2, 3, 4}).ok());
}

}  // namespace

TEST_CASE("checkpoint round trip: parameters, buffers, Adam state, step count, metadata", "[nn][checkpoint]") {
  const fs::path dir = temp_dir("roundtrip");
  const std::string path = (dir / "model.ckpt").string();
  tiny_model a(1);
  auto pa = a.parameters();
  nn::adam<float> opt_a(pa, {.lr = 0.01});
  train_a_little(a, opt_a);
  nn::checkpoint ck;
  REQUIRE(ck.add_parameters(pa).ok());
  REQUIRE(ck.add_optimizer(opt_a).ok());
  ck.put_int("epoch", 7);
  ck.put_string("config", "preset=cpu-small");
  REQUIRE(ck.save(path).ok());
  CHECK(fs::exists(path));
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename() == "model.ckpt");  // no temporary left behind

  tiny_model b(2);  // different initial weights
  auto pb = b.parameters();
  nn::adam<float> opt_b(pb, {.lr = 0.01});
  nn::checkpoint in;
  REQUIRE(nn::checkpoint::load(path, in).ok());
  REQUIRE(in.restore_parameters(pb).ok());
  REQUIRE(in.restore_optimizer(opt_b).ok());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    CAPTURE(pa[i]->name);
    CHECK(pa[i]->value.to_host() == pb[i]->value.to_host());
  }
  CHECK(opt_b.steps() == 2);
  auto sa = opt_a.state(), sb = opt_b.state();
  REQUIRE(sa.size() == sb.size());
  for (std::size_t i = 0; i < sa.size(); ++i) CHECK(sa[i].second->to_host() == sb[i].second->to_host());
  std::int64_t epoch = 0;
  std::string config;
  REQUIRE(in.get_int("epoch", epoch).ok());
  REQUIRE(in.get_string("config", config).ok());
  CHECK(epoch == 7);
  CHECK(config == "preset=cpu-small");
  // the resumed optimiser continues exactly like the original
  train_a_little(a, opt_a);
  train_a_little(b, opt_b);
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(pa[i]->value.to_host() == pb[i]->value.to_host());
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: the byte layout is the documented one", "[nn][checkpoint]") {
  // Decoded here independently of the library: little-endian fields and the format's checksum
  // (FNV-1a constants over 8-byte little-endian words, then the tail bytes one at a time).
  const fs::path dir = temp_dir("layout");
  const std::string path = (dir / "one.ckpt").string();
  nn::checkpoint ck;
  ck.put_int("epoch", 7);
  REQUIRE(ck.save(path).ok());
  const auto b = read_bytes(path);
  const auto le = [&](std::size_t at, int bytes) {
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[at + static_cast<std::size_t>(i)];
    return v;
  };
  const std::size_t body = 8 + 4 + 4 + 8 + (4 + 10 + 4 + 4 + 8 + 8 + 8);
  REQUIRE(b.size() == body + 16);
  CHECK(std::string(b.begin(), b.begin() + 8) == "DSTLCKPT");
  CHECK(le(8, 4) == 1);            // version
  CHECK(le(12, 4) == 0x01020304);  // byte-order mark
  CHECK(le(16, 8) == 1);           // entries
  CHECK(le(24, 4) == 10);          // name length
  CHECK(std::string(b.begin() + 28, b.begin() + 38) == "meta/epoch");
  CHECK(le(38, 4) == 3);  // i64
  CHECK(le(42, 4) == 1);  // rank
  CHECK(le(46, 8) == 1);  // extent
  CHECK(le(54, 8) == 8);  // payload bytes
  CHECK(le(62, 8) == 7);  // the value
  std::uint64_t h = 14695981039346656037ull;
  std::size_t i = 0;
  for (; i + 8 <= body; i += 8) h = (h ^ le(i, 8)) * 1099511628211ull;
  for (; i < body; ++i) h = (h ^ b[i]) * 1099511628211ull;
  CHECK(le(body, 8) == h);
  CHECK(std::string(b.begin() + static_cast<long>(body) + 8, b.end()) == std::string("DSTLEND\0", 8));
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: truncated, corrupted and mismatched files are refused, and nothing is changed", "[nn][checkpoint][errors]") {
  const fs::path dir = temp_dir("corrupt");
  const std::string path = (dir / "model.ckpt").string();
  tiny_model a(1);
  auto pa = a.parameters();
  nn::checkpoint ck;
  REQUIRE(ck.add_parameters(pa).ok());
  REQUIRE(ck.save(path).ok());
  const auto good = read_bytes(path);

  tiny_model b(2);
  auto pb = b.parameters();
  const auto before = pb[0]->value.to_host();
  nn::checkpoint in;
  // truncated at several points
  for (std::size_t cut : {std::size_t(0), std::size_t(10), good.size() / 2, good.size() - 1}) {
    CAPTURE(cut);
    write_bytes(path, std::vector<unsigned char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut)));
    const status st = nn::checkpoint::load(path, in);
    CHECK(st.code() == errc::corrupt_data);
  }
  // one corrupted byte anywhere is caught (header, payload, checksum)
  for (std::size_t at : {std::size_t(9), good.size() / 3, good.size() / 2, good.size() - 12}) {
    CAPTURE(at);
    auto bad = good;
    bad[at] ^= 0x10;
    write_bytes(path, bad);
    const status st = nn::checkpoint::load(path, in);
    CHECK(st.code() == errc::corrupt_data);
    CHECK_FALSE(st.message().empty());
  }
  auto wrong_version = good;
  wrong_version[8] = 9;
  write_bytes(path, wrong_version);
  CHECK(nn::checkpoint::load(path, in).code() == errc::corrupt_data);
  CHECK(nn::checkpoint::load((dir / "missing.ckpt").string(), in).code() == errc::io_error);

  // a valid file whose shapes or names do not match the model
  write_bytes(path, good);
  REQUIRE(nn::checkpoint::load(path, in).ok());
  nn::linear<float> wider("fc1", 6, 4);
  auto pw = wider.parameters();
  auto st = in.restore_parameters(pw);
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("fc1.weight") != std::string::npos);
  nn::linear<float> renamed("head", 5, 4);
  auto pr = renamed.parameters();
  CHECK(in.restore_parameters(pr).code() == errc::invalid_argument);  // missing names
  CHECK(in.restore_parameters(nn::parameter_list<float, host_space>{pb[0], pb[1]}).code() == errc::invalid_argument);  // extra names
  nn::linear<double> as_double("fc1", 5, 4);
  auto pd = as_double.parameters();
  CHECK(in.restore_parameters(pd).code() == errc::unsupported_dtype);
  CHECK(pb[0]->value.to_host() == before);  // nothing restored by failed attempts
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: an interrupted save leaves the previous file intact and loadable", "[nn][checkpoint]") {
  const fs::path dir = temp_dir("interrupted");
  const std::string path = (dir / "model.ckpt").string();
  tiny_model a(1);
  auto pa = a.parameters();
  nn::checkpoint first;
  REQUIRE(first.add_parameters(pa).ok());
  REQUIRE(first.save(path).ok());
  const auto good = read_bytes(path);

  // change the model and save again, but "crash" half way through writing
  tiny_model b(9);
  auto pb = b.parameters();
  nn::checkpoint second;
  REQUIRE(second.add_parameters(pb).ok());
  const std::size_t total = second.serialize().size();
  const status st = second.save(path, {.fail_after_bytes = total / 2});
  CHECK(st.code() == errc::io_error);
  CHECK(read_bytes(path) == good);  // the last good checkpoint is untouched
  nn::checkpoint in;
  REQUIRE(nn::checkpoint::load(path, in).ok());
  tiny_model c(5);
  auto pc = c.parameters();
  REQUIRE(in.restore_parameters(pc).ok());
  CHECK(pc[0]->value.to_host() == pa[0]->value.to_host());
  // the half-written temporary is what a crash leaves; it is never mistaken for the checkpoint
  bool saw_temp = false;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name != "model.ckpt") {
      saw_temp = true;
      CHECK(name.find("model.ckpt.tmp.") == 0);
      nn::checkpoint partial;
      CHECK(nn::checkpoint::load(e.path().string(), partial).code() == errc::corrupt_data);
    }
  }
  CHECK(saw_temp);
  // a later complete save replaces the file
  REQUIRE(second.save(path).ok());
  REQUIRE(nn::checkpoint::load(path, in).ok());
  REQUIRE(in.restore_parameters(pc).ok());
  CHECK(pc[0]->value.to_host() == pb[0]->value.to_host());
  fs::remove_all(dir);
}

namespace {
/// A checkpoint file with one entry of the given dtype, extents and payload, built byte by byte
/// from the documented layout with the format's checksum computed here (not by the library).
std::vector<unsigned char> handmade_checkpoint(const std::string& name, std::uint32_t dtype, const std::vector<std::uint64_t>& extents,
                                               std::uint64_t payload_bytes_field, const std::vector<unsigned char>& payload) {
  std::vector<unsigned char> b;
  const auto put = [&](std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  for (char c : std::string("DSTLCKPT")) b.push_back(static_cast<unsigned char>(c));
  put(1, 4), put(0x01020304, 4), put(1, 8);
  put(name.size(), 4);
  b.insert(b.end(), name.begin(), name.end());
  put(dtype, 4), put(extents.size(), 4);
  for (const std::uint64_t e : extents) put(e, 8);
  put(payload_bytes_field, 8);
  b.insert(b.end(), payload.begin(), payload.end());
  const auto word = [&](std::size_t at) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | b[at + static_cast<std::size_t>(i)];
    return v;
  };
  std::uint64_t h = 14695981039346656037ull;
  std::size_t i = 0;
  const std::size_t body = b.size();
  for (; i + 8 <= body; i += 8) h = (h ^ word(i)) * 1099511628211ull;
  for (; i < body; ++i) h = (h ^ b[i]) * 1099511628211ull;
  put(h, 8);
  b.insert(b.end(), {'D', 'S', 'T', 'L', 'E', 'N', 'D', '\0'});
  return b;
}
}  // namespace

TEST_CASE("checkpoint: extents whose product overflows are refused, not wrapped", "[nn][checkpoint][errors]") {
  // rank 2, [2^62, 4] f32 with an empty payload: 2^64 elements wrap to 0 in 64-bit arithmetic,
  // which would make the empty payload look right. Valid checksum, so only the size check stands.
  nn::checkpoint in;
  const std::uint64_t big = std::uint64_t{1} << 62;
  for (const auto& extents : std::vector<std::vector<std::uint64_t>>{{big, 4}, {big, 4, 4}, {4, big}, {1ull << 32, 1ull << 32}, {big * 2 - 1, 3}}) {
    CAPTURE(extents);
    const auto file = handmade_checkpoint("param/w", 1, extents, 0, {});
    const status st = nn::checkpoint::parse(file.data(), file.size(), in);
    CHECK(st.code() == errc::corrupt_data);
  }
  // elements x 4 bytes overflows although the element count itself fits
  const auto bytes_overflow = handmade_checkpoint("param/w", 1, {big}, 0, {});
  CHECK(nn::checkpoint::parse(bytes_overflow.data(), bytes_overflow.size(), in).code() == errc::corrupt_data);
  // the same construction with honest sizes parses, so the refusals above are about the sizes
  const auto honest = handmade_checkpoint("param/w", 1, {2, 1}, 8, std::vector<unsigned char>(8, 0));
  REQUIRE(nn::checkpoint::parse(honest.data(), honest.size(), in).ok());
  REQUIRE(in.find("param/w"));
  CHECK(in.find("param/w")->elements() == 2);

  // the same rule when a tensor is added: the shape's size must fit, and nothing is stored otherwise
  nn::checkpoint out;
  const float x = 1.0f;
  CHECK(out.put("w", &x, {static_cast<index_t>(big), 4}).code() == errc::invalid_argument);
  CHECK(out.put("w", &x, {static_cast<index_t>(big), 2}).code() == errc::invalid_argument);  // 2^63 elements
  CHECK(out.put("w", &x, {-1}).code() == errc::invalid_argument);
  CHECK(out.put("w", static_cast<const float*>(nullptr), {1}).code() == errc::invalid_argument);
  CHECK(out.entries().empty());
  REQUIRE(out.put("w", &x, {1, 1}).ok());
  CHECK(out.find("w")->elements() == 1);
}
