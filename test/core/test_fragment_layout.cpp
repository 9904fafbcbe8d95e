// SPDX-License-Identifier: MIT
// The shared-memory accesses of the flash tiles (kernels/distill/cuda/detail/tile_gemm.cuh, used
// by token NCE) against the bank rules of sm_80 / sm_90: 32 banks of 4 bytes; a 4-byte access of
// a warp is one wavefront unless two lanes touch different words of one bank; 8-byte accesses
// are served per half-warp. The index math is shared with the kernels
// (detail/fragment_layout.cuh), so this runs here without a GPU.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <functional>
#include <set>

#include "distill/cuda/detail/fragment_layout.cuh"

namespace fl = distill::cuda_detail::fragment;

namespace {

/// Worst number of distinct words that share a bank in one request of a warp, where lane l
/// reads `bytes` (4 or 8) at word offset word_of(l). 1 = conflict-free.
int conflict_degree(const std::function<long(int)>& word_of, int bytes) {
  const int lanes_per_phase = bytes == 8 ? 16 : 32;
  int worst = 0;
  for (int phase = 0; phase < 32 / lanes_per_phase; ++phase) {
    std::array<std::set<long>, fl::banks> words;
    for (int l = phase * lanes_per_phase; l < (phase + 1) * lanes_per_phase; ++l)
      for (int w = 0; w < bytes / 4; ++w) {
        const long word = word_of(l) + w;
        words[static_cast<std::size_t>(word % fl::banks)].insert(word);
      }
    for (const auto& b : words) worst = std::max(worst, static_cast<int>(b.size()));
  }
  return worst;
}

constexpr int ld_f32 = fl::operand_ld(4);  // words per row of an fp32 operand tile
constexpr int ld_b16 = fl::operand_ld(2);  // elements per row of a 16-bit operand tile

}  // namespace

TEST_CASE("fragment layout: the k indices of each product cover a k-step once", "[core][fragment]") {
  std::set<int> tf32_values, tf32_logits, bf16;
  for (int t = 0; t < 4; ++t)
    for (int r = 0; r < 2; ++r) {
      tf32_values.insert(fl::tf32_values_k(t, r));
      tf32_logits.insert(fl::tf32_logits_k(t, r));
      for (int h = 0; h < 2; ++h) bf16.insert(fl::bf16_k(t, r, h));
    }
  CHECK(tf32_values == std::set<int>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(tf32_logits == std::set<int>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(bf16.size() == 16);
  CHECK(*bf16.rbegin() == 15);
}

TEST_CASE("fragment layout: TF32 values() reads key rows without bank conflicts", "[core][fragment]") {
  // B register r of lane (g, t): key row k0 + k(t, r), column c0 + 8 n + g of an fp32 key tile
  for (int warp_col : {0, 128})
    for (int n : {0, 7, 15})
      for (int k0 : {0, 24, 56})
        for (int r = 0; r < 2; ++r) {
          INFO("column block " << warp_col << ", n-tile " << n << ", k0 " << k0 << ", register " << r);
          CHECK(conflict_degree(
                    [&](int l) {
                      return static_cast<long>(k0 + fl::tf32_values_k(fl::thread_of(l), r)) * ld_f32 + warp_col + 8 * n +
                             fl::group_of(l);
                    },
                    4) == 1);
        }
  // The standard k = t + 4 r on the same tile is what the kernels used before: 2-way conflicts.
  CHECK(conflict_degree([&](int l) { return static_cast<long>(fl::tf32_logits_k(fl::thread_of(l), 0)) * ld_f32 + fl::group_of(l); },
                        4) == 2);
}

TEST_CASE("fragment layout: weights and logits tiles of the tensor-core policies", "[core][fragment]") {
  constexpr int ld = fl::logits_ld_mma;
  for (int row0 : {0, 16, 48})
    for (int k0 : {0, 8, 16, 48}) {
      // values(): A registers 0 and 1 of thread t as one 8-byte load at key k(t, 0) (TF32) or
      // 2t (+ 8) (BF16), rows g and g + 8
      for (int row_off : {0, 8}) {
        CHECK(conflict_degree([&](int l) { return static_cast<long>(row0 + fl::group_of(l) + row_off) * ld + k0 + fl::tf32_values_k(fl::thread_of(l), 0); }, 8) == 1);
        for (int r = 0; r < 2; ++r)
          CHECK(conflict_degree([&](int l) { return static_cast<long>(row0 + fl::group_of(l) + row_off) * ld + k0 + fl::bf16_k(fl::thread_of(l), r, 0); }, 8) == 1);
      }
    }
  // store_logits(): 8-byte stores of (c0, c1) and (c2, c3) at columns c0 + 8 n + 2t
  for (int col0 : {0, 32})
    for (int n = 0; n < 4; ++n)
      for (int row_off : {0, 8})
        CHECK(conflict_degree(
                  [&](int l) { return static_cast<long>(16 + fl::group_of(l) + row_off) * ld + col0 + 8 * n + 2 * fl::thread_of(l); }, 8) ==
              1);
}

TEST_CASE("fragment layout: logits() operand loads and the BF16 tiles", "[core][fragment]") {
  for (int r = 0; r < 2; ++r)
    for (int k0 : {0, 8, 248}) {
      // TF32 A (rows of the row tile) and B (rows of the key tile), fp32 operands
      CHECK(conflict_degree([&](int l) { return static_cast<long>(16 + fl::group_of(l)) * ld_f32 + k0 + fl::tf32_logits_k(fl::thread_of(l), r); }, 4) == 1);
      // BF16: 32-bit pair loads of 16-bit operands (element offset / 2 = word)
      CHECK(conflict_degree([&](int l) { return (static_cast<long>(16 + fl::group_of(l)) * ld_b16 + k0 + fl::bf16_k(fl::thread_of(l), r, 0)) / 2; }, 4) == 1);
    }
  // BF16 values() B elements from fp32 keys (4-byte loads) and from 16-bit keys (2-byte loads,
  // two lanes in one word are one access)
  for (int r = 0; r < 2; ++r)
    for (int h = 0; h < 2; ++h) {
      CHECK(conflict_degree([&](int l) { return static_cast<long>(fl::bf16_k(fl::thread_of(l), r, h)) * ld_f32 + fl::group_of(l); }, 4) == 1);
      CHECK(conflict_degree([&](int l) { return (static_cast<long>(fl::bf16_k(fl::thread_of(l), r, h)) * ld_b16 + fl::group_of(l)) / 2; }, 4) == 1);
    }
}

TEST_CASE("fragment layout: the FFMA policy's logits stores", "[core][fragment]") {
  // thread tid of warp w: tr = tid / 16 owns rows 4 tr .. 4 tr + 3, tc = tid % 16 columns tc + 16 j
  for (int warp = 0; warp < 8; ++warp)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        CHECK(conflict_degree(
                  [&](int l) {
                    const int tid = 32 * warp + l;
                    return static_cast<long>(4 * (tid / 16) + i) * fl::logits_ld_ffma + tid % 16 + 16 * j;
                  },
                  4) == 1);
}
