// core/file_io.hpp: overflow-checked size arithmetic (against 128-bit arithmetic), and read_file
// on hostile paths: FIFOs, devices and folders are refused without blocking or reading forever,
// and files larger than the caller's cap are refused before anything is allocated.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "distill/core/file_io.hpp"
#include "support/random.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/stat.h>
#endif

using namespace distill;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const char* name) {
  const fs::path d = fs::temp_directory_path() / ("distill_file_io_" + std::to_string(distill_test::test_seed()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("checked_mul and checked_add agree with 128-bit arithmetic", "[core][file_io]") {
  constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  const std::uint64_t edges[] = {0, 1, 2, 3, 4, 0xFFFFFFFFull, 0x100000000ull, 0x100000001ull, std::uint64_t{1} << 62,
                                 (std::uint64_t{1} << 63) - 1, std::uint64_t{1} << 63, max - 1, max};
  distill_test::rng g(41);
  std::vector<std::uint64_t> values(std::begin(edges), std::end(edges));
  for (int i = 0; i < 200; ++i) values.push_back(static_cast<std::uint64_t>(g.integer(0, std::numeric_limits<std::int64_t>::max())) >> g.integer(0, 63));
  for (const std::uint64_t a : values)
    for (const std::uint64_t b : values) {
      const unsigned __int128 wide_product = static_cast<unsigned __int128>(a) * b;
      const unsigned __int128 wide_sum = static_cast<unsigned __int128>(a) + b;
      std::uint64_t p = 12345, s = 12345;
      const bool mul_ok = checked_mul(a, b, p), add_ok = checked_add(a, b, s);
      CAPTURE(a, b);
      REQUIRE(mul_ok == (wide_product <= max));
      REQUIRE(add_ok == (wide_sum <= max));
      if (mul_ok) REQUIRE(p == static_cast<std::uint64_t>(wide_product));
      if (add_ok) REQUIRE(s == static_cast<std::uint64_t>(wide_sum));
    }
  static_assert([] {
    std::uint64_t v = 0;
    return checked_mul(std::uint64_t{1} << 32, std::uint64_t{1} << 31, v) && v == std::uint64_t{1} << 63;
  }());
}

TEST_CASE("read_file reads regular files and refuses files above the cap", "[core][file_io]") {
  const fs::path dir = fresh_dir("regular");
  const std::string path = (dir / "data.bin").string();
  std::vector<unsigned char> bytes(70000);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 131 + 7);
  REQUIRE(write_file_atomically("test", path, bytes).ok());

  std::vector<unsigned char> got{1, 2, 3};
  REQUIRE(read_file("test", path, got).ok());
  CHECK(got == bytes);
  REQUIRE(read_file("test", path, got, bytes.size()).ok());  // exactly at the cap
  CHECK(got == bytes);
  const status too_big = read_file("reader", path, got, bytes.size() - 1);
  CHECK(too_big.code() == errc::corrupt_data);
  CHECK(too_big.message().find("reader") == 0);
  CHECK(too_big.message().find("70000") != std::string::npos);

  const std::string empty = (dir / "empty.bin").string();
  REQUIRE(write_file_atomically("test", empty, std::vector<unsigned char>{}).ok());
  REQUIRE(read_file("test", empty, got, 0).ok());
  CHECK(got.empty());
  CHECK(read_file("test", (dir / "missing.bin").string(), got).code() == errc::io_error);
  fs::remove_all(dir);
}

#if defined(__unix__) || defined(__APPLE__)
TEST_CASE("read_file refuses FIFOs, devices and folders without blocking or reading forever", "[core][file_io]") {
  const fs::path dir = fresh_dir("special");
  const std::string fifo = (dir / "checkpoint.ckpt").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);  // no writer: a blocking open would wait forever
  std::vector<unsigned char> got;
  const status st = read_file("nn::checkpoint::load", fifo, got);
  CHECK(st.code() == errc::io_error);
  CHECK(st.message().find("not a regular file") != std::string::npos);

  // A checkpoint symlinked to /dev/zero would otherwise be read until memory runs out.
  const std::string link = (dir / "zero.ckpt").string();
  fs::create_symlink("/dev/zero", link);
  const status zero = read_file("nn::checkpoint::load", link, got);
  CHECK(zero.code() == errc::io_error);
  CHECK(zero.message().find("not a regular file") != std::string::npos);

  const status folder = read_file("test", dir.string(), got);
  CHECK(folder.code() == errc::io_error);
  CHECK(got.empty());
  fs::remove_all(dir);
}
#endif
