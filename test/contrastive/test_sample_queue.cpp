// SPDX-License-Identifier: MIT
// Sample queue, CPU (enqueue against the reference ring buffer is in queue_cases.hpp, run on
// every backend): normalisation and oversized batches by hand, random initialisation,
// state checks, bad inputs, and the file format: round trip, truncated/corrupt/mismatched
// files refused, interrupted saves that leave the previous file intact.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temp dir, removed at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    path = fs::temp_directory_path() /
           ("distill_queue_test_" + std::to_string(::getpid()) + "_" + std::to_string(distill_test::rng(0).integer(0, 1 << 30)));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  /// Names of the files in the directory.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path)) names.push_back(e.path().filename().string());
    return names;
  }
};

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const std::string& path, const std::vector<unsigned char>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

template <class T>
std::vector<double> queue_rows(const sample_queue<T, host_space>& q) {
  std::vector<double> v;
  for (index_t j = 0; j < q.capacity(); ++j)
    for (index_t d = 0; d < q.dim(); ++d) v.push_back(static_cast<double>(load<double>(q.keys()(j, d))));
  return v;
}

/// A float queue with ids holding the first `n` rows of `rows` (D wide), saved to `path`.
host_sample_queue<float> saved_queue(long K, long D, const std::vector<float>& rows, long n, const std::string& path) {
  host_sample_queue<float> hq(K, D, true);
  REQUIRE(sample_queue_enqueue(cpu{1}, hq.queue(), make_view(rows.data(), n, D)).ok());
  REQUIRE(sample_queue_save(cpu{1}, hq.queue(), path).ok());
  return hq;
}

}  // namespace

TEST_CASE("sample_queue: normalised rows have unit norm; a batch larger than K keeps the newest rows", "[contrastive][queue]") {
  distill_test::rng g(302);
  const long K = 5, D = 4;
  host_sample_queue<float> hq(K, D, true);
  auto& q = hq.queue();
  std::vector<float> rows(13 * D);
  std::vector<std::int64_t> ids(13);
  for (long r = 0; r < 13; ++r) {
    ids[static_cast<std::size_t>(r)] = 100 + r;
    for (long d = 0; d < D; ++d) rows[static_cast<std::size_t>(r * D + d)] = static_cast<float>((r + 1) * (d == r % D ? 3 : 0.5));
  }
  REQUIRE(sample_queue_enqueue(cpu{1}, q, make_view(static_cast<const float*>(rows.data()), 13, D),
                               make_view(static_cast<const std::int64_t*>(ids.data()), 13))
              .ok());
  // 13 rows into 5 slots from position 0: rows 8..12 survive, row r in slot r mod 5.
  CHECK(q.size() == K);
  CHECK(q.write_position() == 13 % K);
  for (long r = 8; r < 13; ++r) {
    const long slot = r % K;
    CHECK(q.ids()(slot) == 100 + r);
    double ss = 0;
    for (long d = 0; d < D; ++d) ss += q.keys()(slot, d) * q.keys()(slot, d);
    CHECK(std::sqrt(ss) == Approx(1.0).epsilon(1e-6));
    CHECK(q.keys()(slot, r % D) / q.keys()(slot, (r + 1) % D) == Approx(6.0).epsilon(1e-5));
  }
  // Enqueue without ids into a queue with id storage: no_sample_id.
  REQUIRE(sample_queue_enqueue(cpu{1}, q, make_view(static_cast<const float*>(rows.data()), 2, D)).ok());
  CHECK(q.ids()(3) == no_sample_id);
  CHECK(q.ids()(4) == no_sample_id);
  CHECK(q.write_position() == 0);
  q.clear();
  CHECK(q.size() == 0);
  CHECK(q.write_position() == 0);
  CHECK(q.empty());
  q.advance(7);
  CHECK(q.size() == K);
  CHECK(q.write_position() == 2);
}

TEMPLATE_TEST_CASE("sample_queue: random initialisation is MoCo's normalised randn, reproducible", "[contrastive][queue]", float, double,
                   bfloat16) {
  const long K = 512, D = 64;
  host_sample_queue<TestType> a(K, D, true), b(K, D), c(K, D);
  REQUIRE(sample_queue_init_random(cpu{1}, a.queue(), 42).ok());
  REQUIRE(sample_queue_init_random(cpu{3}, b.queue(), 42).ok());
  REQUIRE(sample_queue_init_random(cpu{2}, c.queue(), 43).ok());
  CHECK(a.queue().full());
  CHECK(a.queue().write_position() == 0);
  CHECK(a.queue().size() == K);
  const auto ra = queue_rows(a.queue()), rb = queue_rows(b.queue()), rc = queue_rows(c.queue());
  CHECK(ra == rb);  // same seed: identical keys, whatever the thread count
  CHECK(ra != rc);
  double mean = 0, sq = 0;
  for (long j = 0; j < K; ++j) {
    double ss = 0;
    for (long d = 0; d < D; ++d) ss += ra[static_cast<std::size_t>(j * D + d)] * ra[static_cast<std::size_t>(j * D + d)];
    CHECK(std::sqrt(ss) == Approx(1.0).epsilon(std::is_same_v<TestType, bfloat16> ? 1e-2 : 1e-6));
    CHECK(a.queue().ids()(j) == no_sample_id);
  }
  for (double v : ra) mean += v, sq += v * v;
  mean /= static_cast<double>(ra.size());
  sq /= static_cast<double>(ra.size());
  // Unit rows of isotropic Gaussians: mean 0, E[x^2] = 1/D.
  CHECK(std::fabs(mean) < 4.0 / std::sqrt(static_cast<double>(ra.size())) / std::sqrt(static_cast<double>(D)));
  CHECK(sq == Approx(1.0 / D).epsilon(1e-2));
  // The raw draws are standard normal: check the first draws' moments directly.
  double m1 = 0, m2 = 0, m4 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = contrastive_detail::normal_draw(7, static_cast<std::uint64_t>(i));
    m1 += x, m2 += x * x, m4 += x * x * x * x;
  }
  CHECK(std::fabs(m1 / n) < 0.01);
  CHECK(m2 / n == Approx(1.0).epsilon(0.01));
  CHECK(m4 / n == Approx(3.0).epsilon(0.03));
}

TEST_CASE("sample_queue: state and argument checks", "[contrastive][queue]") {
  host_sample_queue<float> hq(6, 3, true);
  auto& q = hq.queue();
  CHECK(q.restore_state(0, 0).ok());
  CHECK(q.restore_state(4, 4).ok());
  CHECK(q.restore_state(2, 6).ok());
  CHECK(q.restore_state(3, 4).code() == errc::invalid_argument);  // not full: position must equal count
  CHECK(q.restore_state(6, 6).code() == errc::invalid_argument);
  CHECK(q.restore_state(0, 7).code() == errc::invalid_argument);
  CHECK(q.restore_state(-1, 0).code() == errc::invalid_argument);
  CHECK(q.size() == 6);  // a refused state leaves the old one
  CHECK(q.write_position() == 2);

  std::vector<float> rows(4 * 3, 1.0f), wide(4 * 4, 1.0f);
  std::vector<std::int64_t> ids(4, 1);
  const auto R = make_view(static_cast<const float*>(rows.data()), 4, 3);
  CHECK(sample_queue_enqueue(cpu{1}, q, make_view(static_cast<const float*>(wide.data()), 4, 4)).code() == errc::shape_mismatch);
  CHECK(sample_queue_enqueue(cpu{1}, q, R, make_view(static_cast<const std::int64_t*>(ids.data()), 3)).code() == errc::shape_mismatch);
  host_sample_queue<float> no_ids(6, 3);
  CHECK(sample_queue_enqueue(cpu{1}, no_ids.queue(), R, make_view(static_cast<const std::int64_t*>(ids.data()), 4)).code() ==
        errc::invalid_argument);
  enqueue_options bad;
  bad.normalize_eps = 0;
  CHECK(sample_queue_enqueue(cpu{1}, q, R, {}, bad).code() == errc::invalid_argument);
  sample_queue<float> absent;
  CHECK(sample_queue_enqueue(cpu{1}, absent, R).code() == errc::invalid_argument);
  CHECK(sample_queue_init_random(cpu{1}, absent, 1).code() == errc::invalid_argument);
  CHECK(absent.capacity() == 0);
  // An empty batch is a no-op.
  const auto before = q.write_position();
  CHECK(sample_queue_enqueue(cpu{1}, q, make_view(static_cast<const float*>(rows.data()), 0, 3)).ok());
  CHECK(q.write_position() == before);
}

TEMPLATE_TEST_CASE("sample_queue files: round trip", "[contrastive][queue][file]", float, double, bfloat16, float16) {
  temp_dir dir;
  distill_test::rng g(303);
  for (int trial = 0; trial < 6; ++trial) {
    const long K = g.integer(1, 50), D = g.integer(1, 17), pad = trial % 2 ? 2 : 0;
    const bool with_ids = trial % 3 != 0;
    std::vector<TestType> storage(static_cast<std::size_t>(K * (D + pad)), TestType(0.0f));
    std::vector<std::int64_t> ids(static_cast<std::size_t>(K), no_sample_id);
    sample_queue<TestType> q(make_strided_view(storage.data(), std::array<index_t, 2>{K, D}, std::array<index_t, 2>{D + pad, 1}),
                             with_ids ? make_view(ids.data(), K) : host_view<std::int64_t, 1>{});
    const long B = g.integer(0, 2 * K);
    const auto rows = g.normals<float>(static_cast<std::size_t>(B * D));
    std::vector<std::int64_t> bid;
    for (long r = 0; r < B; ++r) bid.push_back(g.integer(-1, 99));
    REQUIRE(sample_queue_enqueue(cpu{1}, q, make_view(rows.data(), B, D),
                                 with_ids ? make_view(static_cast<const std::int64_t*>(bid.data()), B) : host_view<const std::int64_t, 1>{})
                .ok());
    const std::string path = dir.file("queue.bin");
    REQUIRE(sample_queue_save(cpu{1}, q, path).ok());
    CHECK(dir.listing() == std::vector<std::string>{"queue.bin"});  // no temporary left behind
    const auto bytes = read_bytes(path);
    CHECK(bytes.size() == 64 + static_cast<std::size_t>(K * D) * sizeof(TestType) + (with_ids ? static_cast<std::size_t>(K) * 8 : 0) + 8);

    std::vector<TestType> storage2(static_cast<std::size_t>(K * D), TestType(5.0f));
    std::vector<std::int64_t> ids2(static_cast<std::size_t>(K), 77);
    sample_queue<TestType> q2(make_view(storage2.data(), K, D), with_ids ? make_view(ids2.data(), K) : host_view<std::int64_t, 1>{});
    REQUIRE(sample_queue_load(cpu{1}, q2, path).ok());
    CHECK(q2.size() == q.size());
    CHECK(q2.write_position() == q.write_position());
    CHECK(queue_rows(q2) == queue_rows(q));  // bit-exact
    if (with_ids) CHECK(ids2 == ids);
    // Saving the loaded queue reproduces the file byte for byte.
    REQUIRE(sample_queue_save(cpu{1}, q2, dir.file("again.bin")).ok());
    CHECK(read_bytes(dir.file("again.bin")) == bytes);
    fs::remove(dir.file("again.bin"));
    // The in-memory image is the file's bytes, and restores the same queue.
    std::vector<unsigned char> image;
    REQUIRE(sample_queue_serialize(cpu{1}, q, image).ok());
    CHECK(image == bytes);
    std::vector<TestType> storage3(static_cast<std::size_t>(K * D), TestType(3.0f));
    std::vector<std::int64_t> ids3(static_cast<std::size_t>(K), 5);
    sample_queue<TestType> q3(make_view(storage3.data(), K, D), with_ids ? make_view(ids3.data(), K) : host_view<std::int64_t, 1>{});
    REQUIRE(sample_queue_deserialize(cpu{1}, q3, image).ok());
    CHECK(queue_rows(q3) == queue_rows(q));
    CHECK(q3.write_position() == q.write_position());
    CHECK(q3.size() == q.size());
    if (with_ids) CHECK(ids3 == ids);
    image[image.size() / 2] ^= 1;
    CHECK(sample_queue_deserialize(cpu{1}, q3, image).code() == errc::corrupt_data);
    CHECK(queue_rows(q3) == queue_rows(q));  // unchanged by the refused image
  }
}

TEST_CASE("sample_queue files: the byte layout is the documented one", "[contrastive][queue][file]") {
  // Decoded here independently of the library (little-endian fields, byte-wise FNV-1a 64 with
  // offset basis 14695981039346656037 and prime 1099511628211), so the format cannot drift.
  temp_dir dir;
  const long K = 4, D = 3;
  host_sample_queue<float> hq(K, D, true);
  const std::vector<float> rows = {3, 0, 4, 0, 2, 0, 1, 2, 2};  // norms 5, 2, 3
  const std::vector<std::int64_t> ids = {70, 71, 72};
  REQUIRE(sample_queue_enqueue(cpu{1}, hq.queue(), make_view(rows.data(), 3, D), make_view(ids.data(), 3)).ok());
  const std::string path = dir.file("q.bin");
  REQUIRE(sample_queue_save(cpu{1}, hq.queue(), path).ok());
  const auto b = read_bytes(path);
  const auto le = [&](std::size_t at, int bytes) {
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[at + static_cast<std::size_t>(i)];
    return v;
  };
  const std::size_t payload = K * D * 4 + K * 8;
  REQUIRE(b.size() == 64 + payload + 8);
  CHECK(std::string(b.begin(), b.begin() + 8) == "DSTLQUE1");
  CHECK(le(8, 4) == 1);    // version
  CHECK(le(12, 4) == 1);   // f32
  CHECK(le(16, 4) == 4);   // element bytes
  CHECK(le(20, 4) == 1);   // ids present
  CHECK(le(24, 8) == 4);   // K
  CHECK(le(32, 8) == 3);   // D
  CHECK(le(40, 8) == 3);   // write position
  CHECK(le(48, 8) == 3);   // fill count
  CHECK(le(56, 8) == payload);
  const float expect[3] = {0.6f, 0.0f, 0.8f};  // first key, normalised
  for (int d = 0; d < 3; ++d) {
    float v;
    std::memcpy(&v, &b[64 + 4 * static_cast<std::size_t>(d)], 4);
    CHECK(v == Approx(expect[d]).epsilon(1e-6));
  }
  CHECK(le(64 + K * D * 4 + 8, 8) == 71);  // ids follow the keys
  CHECK(le(64 + K * D * 4 + 24, 8) == static_cast<std::uint64_t>(no_sample_id));  // never-written slot
  std::uint64_t h = 14695981039346656037ull;
  for (std::size_t i = 0; i + 8 < b.size(); ++i) h = (h ^ b[i]) * 1099511628211ull;
  CHECK(le(b.size() - 8, 8) == h);
}

TEST_CASE("sample_queue files: truncated, corrupt and mismatched files are refused", "[contrastive][queue][file]") {
  temp_dir dir;
  distill_test::rng g(304);
  const long K = 20, D = 6;
  const auto rows = g.normals<float>(static_cast<std::size_t>(27 * D));
  const std::string path = dir.file("q.bin");
  auto hq = saved_queue(K, D, rows, 27, path);
  auto& q = hq.queue();
  const auto good = read_bytes(path);

  // The target queue: different contents, must stay unchanged by every refused load.
  host_sample_queue<float> target(K, D, true);
  REQUIRE(sample_queue_init_random(cpu{1}, target.queue(), 5).ok());
  REQUIRE(sample_queue_enqueue(cpu{1}, target.queue(), make_view(rows.data(), 3, D)).ok());
  const auto target_rows = queue_rows(target.queue());
  const auto target_pos = target.queue().write_position();
  const auto expect_refused = [&](const std::vector<unsigned char>& bytes, errc code, const char* what) {
    const std::string p = dir.file("bad.bin");
    write_bytes(p, bytes);
    const auto st = sample_queue_load(cpu{1}, target.queue(), p);
    INFO(what << ": " << st.to_string());
    CHECK(st.code() == code);
    CHECK(!st.message().empty());
    CHECK(queue_rows(target.queue()) == target_rows);
    CHECK(target.queue().write_position() == target_pos);
  };

  SECTION("truncated at every interesting length") {
    for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(8), std::size_t(63), std::size_t(64), std::size_t(71),
                          std::size_t(64 + 100), good.size() / 2, good.size() - 9, good.size() - 8, good.size() - 1}) {
      CAPTURE(n);
      expect_refused(std::vector<unsigned char>(good.begin(), good.begin() + static_cast<long>(n)), errc::corrupt_data, "truncated");
    }
    auto longer = good;
    longer.push_back(0);
    expect_refused(longer, errc::corrupt_data, "trailing garbage");
  }
  SECTION("a flipped bit anywhere fails the checksum (or the header check)") {
    for (std::size_t at : {std::size_t(0), std::size_t(9), std::size_t(30), std::size_t(60), std::size_t(64), std::size_t(64 + 77),
                           good.size() - 8 * K - 9, good.size() - 20, good.size() - 1}) {
      auto bad = good;
      bad[at] ^= 0x10;
      CAPTURE(at);
      expect_refused(bad, errc::corrupt_data, "bit flip");
    }
  }
  SECTION("wrong magic or version with a valid checksum") {
    auto bad = good;
    bad[8] = 2;  // version 2
    const auto sum = fnv1a64::of({bad.data(), bad.size() - 8});
    put_le64(bad.data() + bad.size() - 8, sum);
    const std::string p = dir.file("v2.bin");
    write_bytes(p, bad);
    const auto st = sample_queue_load(cpu{1}, target.queue(), p);
    CHECK(st.code() == errc::corrupt_data);
    CHECK(st.message().find("version") != std::string::npos);
    auto bad2 = good;
    bad2[0] = 'X';
    expect_refused(bad2, errc::corrupt_data, "magic");
  }
  SECTION("an inconsistent state with a valid checksum") {
    auto bad = good;
    put_le64(bad.data() + 48, 7);  // not full (7 of 20) ...
    put_le64(bad.data() + 40, 9);  // ... yet the write position is not 7
    put_le64(bad.data() + bad.size() - 8, fnv1a64::of({bad.data(), bad.size() - 8}));
    expect_refused(bad, errc::corrupt_data, "state");
  }
  SECTION("mismatched D, K, dtype or ids") {
    host_sample_queue<float> other_d(K, D + 1, true), other_k(K + 1, D, true), no_ids(K, D);
    host_sample_queue<double> other_t(K, D, true);
    for (auto* st : {&other_d, &other_k, &no_ids}) {
      const auto r = sample_queue_load(cpu{1}, st->queue(), path);
      CHECK(r.code() == errc::corrupt_data);
      CHECK(st->queue().size() == 0);
    }
    const auto r = sample_queue_load(cpu{1}, other_t.queue(), path);
    CHECK(r.code() == errc::corrupt_data);
    CHECK(r.message().find("f32") != std::string::npos);
    CHECK(r.message().find("f64") != std::string::npos);
  }
  SECTION("missing file and unwritable location") {
    const auto st = sample_queue_load(cpu{1}, target.queue(), dir.file("does_not_exist.bin"));
    CHECK(st.code() == errc::io_error);
    CHECK(st.message().find("does_not_exist.bin") != std::string::npos);
    CHECK(sample_queue_save(cpu{1}, q, dir.file("no/such/dir/q.bin")).code() == errc::io_error);
    CHECK(sample_queue_save(cpu{1}, q, "").code() == errc::invalid_argument);
  }
  SECTION("a file far larger than the queue's is refused before it is read; so are FIFOs and devices") {
    const std::string huge = dir.file("huge.bin");
    write_bytes(huge, good);
    fs::resize_file(huge, std::uintmax_t{1} << 40);  // 1 TiB, sparse: reading it would exhaust memory
    const auto st = sample_queue_load(cpu{1}, target.queue(), huge);
    CHECK(st.code() == errc::corrupt_data);
    CHECK(st.message().find(std::to_string(std::uint64_t{1} << 40)) != std::string::npos);
    CHECK(queue_rows(target.queue()) == target_rows);
    const std::string fifo = dir.file("fifo.bin");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(sample_queue_load(cpu{1}, target.queue(), fifo).code() == errc::io_error);
    CHECK(sample_queue_load(cpu{1}, target.queue(), "/dev/zero").code() == errc::io_error);
    CHECK(queue_rows(target.queue()) == target_rows);
  }
}

TEST_CASE("sample_queue files: an interrupted save leaves the previous file intact", "[contrastive][queue][file]") {
  temp_dir dir;
  distill_test::rng g(305);
  const long K = 16, D = 5;
  auto rows = g.normals<float>(static_cast<std::size_t>(40 * D));
  const std::string path = dir.file("q.bin");
  auto hq = saved_queue(K, D, rows, 9, path);
  auto& q = hq.queue();
  const auto old_bytes = read_bytes(path);
  const auto old_rows = queue_rows(q);
  // Change the queue, then fail its save at several points.
  REQUIRE(sample_queue_enqueue(cpu{1}, q, make_view(rows.data() + 9 * D, 20, D)).ok());
  const std::size_t full = old_bytes.size();
  for (std::int64_t cut : {std::int64_t(0), std::int64_t(1), std::int64_t(64), std::int64_t(full / 2), std::int64_t(full - 1)}) {
    for (bool keep_temp : {false, true}) {
      queue_save_options opt;
      opt.fail_after_bytes = cut;
      opt.keep_temp_on_failure = keep_temp;
      const auto st = sample_queue_save(cpu{1}, q, path, opt);
      CAPTURE(cut, keep_temp);
      CHECK(st.code() == errc::io_error);
      CHECK(read_bytes(path) == old_bytes);  // the real file is unchanged
      host_sample_queue<float> back(K, D, true);
      REQUIRE(sample_queue_load(cpu{1}, back.queue(), path).ok());
      CHECK(queue_rows(back.queue()) == old_rows);
      CHECK(back.queue().size() == 9);
      const auto names = dir.listing();
      if (keep_temp) {
        // The "crashed" process left its partial temporary next to the file; it is ignored.
        CHECK(names.size() == 2);
        for (const auto& n : names)
          if (n != "q.bin") {
            CHECK(n.rfind("q.bin.tmp.", 0) == 0);
            CHECK(fs::file_size(dir.path / n) == static_cast<std::uintmax_t>(cut));
            fs::remove(dir.path / n);
          }
      } else {
        CHECK(names == std::vector<std::string>{"q.bin"});
      }
    }
  }
  // A stale temporary with the name pattern does not block the next save.
  write_bytes(dir.file("q.bin.tmp.AAAAAA"), std::vector<unsigned char>(10, 1));
  REQUIRE(sample_queue_save(cpu{1}, q, path).ok());
  host_sample_queue<float> back(K, D, true);
  REQUIRE(sample_queue_load(cpu{1}, back.queue(), path).ok());
  CHECK(queue_rows(back.queue()) == queue_rows(q));
  CHECK(back.queue().size() == K);
  CHECK(back.queue().write_position() == q.write_position());
}
