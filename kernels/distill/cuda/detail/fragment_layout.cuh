// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Where each thread of the flash-style tiles (detail/tile_gemm.cuh) reads and writes shared
//! memory: the tile shapes, the padded row strides and the k index each mma.sync register holds.
//! Plain integer functions that any C++20 compiler parses (no nvcc needed), so a CPU test
//! (test/core/test_fragment_layout.cpp) checks the bank mapping the kernels use.
//!
//! mma.sync fragments (PTX ISA, "warp-level matrix fragments"), lane = 4 g + t:
//!   m16n8k8 tf32   A: a0 (g, k0) a1 (g + 8, k0) a2 (g, k1) a3 (g + 8, k1);  B: b0 (k0, g) b1 (k1, g)
//!   m16n8k16 bf16  the same with each register holding the two consecutive k of a pair
//!   C (both)       c0, c1 (g, 2t, 2t + 1), c2, c3 (g + 8, 2t, 2t + 1)
//! The hardware only needs A's and B's k indices to agree; which physical column a register's k
//! refers to is ours to choose (tf32_values_k below uses that).

namespace distill::cuda_detail::fragment {

inline constexpr int banks = 32;  ///< 4-byte shared-memory banks

inline constexpr int tile_rows = 64;    ///< rows (tokens) per block
inline constexpr int tile_keys = 64;    ///< keys per tile
inline constexpr int chunk_cols = 256;  ///< columns of D per staged chunk

constexpr int group_of(int lane) { return lane / 4; }
constexpr int thread_of(int lane) { return lane % 4; }

/// Row stride (elements) of a staged operand tile of `elem_bytes`-byte elements: 16 bytes of
/// padding, so consecutive rows start 4 banks apart (260 words for fp32).
constexpr int operand_ld(int elem_bytes) { return chunk_cols + 16 / elem_bytes; }

/// Row stride (floats) of the logits / weights tile. FFMA: thread rows 4 apart land 16 banks
/// apart (68). Tensor cores: the 8-byte fragment accesses of a half-warp (rows g = 0..3, columns
/// 2t, 2t + 1) cover 32 distinct banks when rows are 8 banks apart (72).
inline constexpr int logits_ld_ffma = tile_keys + 4;
inline constexpr int logits_ld_mma = tile_keys + 8;

/// The k index (within a k-step) held by register r of thread t.
/// TF32 S = Z K^T (logits): the standard k = t + 4 r; A and B rows are then 4 banks apart per
/// thread group (operand_ld = 4 mod 32) and t picks the bank within: conflict-free.
constexpr int tf32_logits_k(int t, int r) { return t + 4 * r; }
/// TF32 acc += P K (values): k = 2 t + r. B reads key rows k of the key tile, whose stride is 4
/// banks: with k = t + 4 r threads t and g (4 t + g) collide two by two; with k = 2 t + r the
/// rows are 8 banks apart per t and g adds 0..7: 32 distinct banks. A (the weights) then reads
/// its two registers as one 8-byte access.
constexpr int tf32_values_k(int t, int r) { return 2 * t + r; }
/// BF16 (m16n8k16), both products: register r of thread t holds k = 2 t + 8 r and 2 t + 8 r + 1.
constexpr int bf16_k(int t, int r, int half) { return 2 * t + 8 * r + half; }

}  // namespace distill::cuda_detail::fragment
