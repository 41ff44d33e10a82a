// Internal blocked code layout shared by the index, every kernel and the file format.
//
// Public codes are bit-planes (docs/FORMAT.md section 1): a code is `code_bytes = bits * P`
// bytes, P = ceil(dim / 8), byte j = t * P + p holds dims 8p..8p+7 of plane t, i.e. the two
// 4-dim "nibble groups" 2p (low nibble) and 2p+1 (high nibble).
//
// Internally items live in blocks of kBlock = 64 slots. A block is the byte transpose of its
// 64 codes: `block[j * 64 + i] = code_of_slot_i[j]` for j in [0, code_bytes). One 64-byte row
// therefore feeds one 512-bit (or two 256-bit) shuffle lookups for 64 items at once.
//
// Per-block bit masks (alive slots, filters) and per-block float arrays (cosine inverse norms)
// use the "r order" in which the SIMD kernels produce their scores (see item_of_r): bit/entry r
// belongs to slot item_of_r(r) of the block.
#pragma once
#include <cstddef>
#include <cstdint>

namespace bebr {

constexpr int kBlock = 64;

// Slot (0..63 inside a block) whose score lands in lane r of the kernels' int32 output.
// r = 16a + 4L + j: L = 128-bit lane, a = which widened quarter (even-lo, even-hi, odd-lo, odd-hi).
constexpr int item_of_r(int r) {
  return 16 * ((r % 16) / 4) + ((r / 16) == 0   ? 2 * (r % 4)
                                : (r / 16) == 1 ? 8 + 2 * (r % 4)
                                : (r / 16) == 2 ? 2 * (r % 4) + 1
                                                : 9 + 2 * (r % 4));
}

struct RTables {
  int8_t item_of_r[kBlock];
  int8_t r_of_item[kBlock];
  constexpr RTables() : item_of_r(), r_of_item() {
    for (int r = 0; r < kBlock; ++r) {
      item_of_r[r] = static_cast<int8_t>(bebr::item_of_r(r));
      r_of_item[bebr::item_of_r(r)] = static_cast<int8_t>(r);
    }
  }
};
inline constexpr RTables kR{};

// Code geometry derived from (dim, bits).
struct Geometry {
  int dim = 0;
  int bits = 0;
  int plane_bytes = 0;   // P
  int code_bytes = 0;    // bits * P
  size_t block_bytes = 0;  // 64 * code_bytes
  Geometry() = default;
  Geometry(int d, int b)
      : dim(d), bits(b), plane_bytes((d + 7) / 8), code_bytes(b * ((d + 7) / 8)),
        block_bytes(static_cast<size_t>(kBlock) * b * ((d + 7) / 8)) {}
};

}  // namespace bebr
