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

// Code geometry derived from (dim, bits), and the internal block layout it implies:
//  * bits <= 2, "planes": the byte transpose above; item_bytes = code_bytes.
//  * bits >= 3, "nibbles": each dimension's level as a 4-bit nibble, for int8 dot products
//    (VNNI vpdpbusd / maddubs). A 64-slot block holds 4 groups of 16 lanes; slot `it` sits in
//    lane pos = r_of_item(it) (group pos / 16, lane pos % 16), so lane order is r order.
//    Group s is C = ceil(dim/8) rows of 64 bytes; row c holds, for each of the 16 lanes, 4
//    bytes: byte b = level(dim 8c+2b) | level(dim 8c+2b+1) << 4. item_bytes = 4C.
struct Geometry {
  int dim = 0;
  int bits = 0;
  int plane_bytes = 0;   // P
  int code_bytes = 0;    // bits * P (public packed code)
  bool nibbles = false;  // internal layout (see above)
  int chunks = 0;        // C = ceil(dim / 8), nibble layout rows per group
  int item_bytes = 0;    // internal bytes per slot
  size_t block_bytes = 0;  // 64 * item_bytes
  Geometry() = default;
  Geometry(int d, int b)
      : dim(d), bits(b), plane_bytes((d + 7) / 8), code_bytes(b * ((d + 7) / 8)), nibbles(b >= 3),
        chunks((d + 7) / 8), item_bytes(b >= 3 ? 4 * ((d + 7) / 8) : b * ((d + 7) / 8)),
        block_bytes(static_cast<size_t>(kBlock) * item_bytes) {}
  // Byte offset inside a block of internal byte k (0..item_bytes-1) of slot `it`.
  size_t offset(int it, int k) const {
    if (!nibbles) return static_cast<size_t>(k) * kBlock + it;
    const int pos = kR.r_of_item[it];
    return (static_cast<size_t>(pos / 16) * chunks + k / 4) * 64 + (pos % 16) * 4 + k % 4;
  }
};

// Public packed code -> internal item bytes (item_bytes) and back.
void encode_item(const Geometry& geo, const uint8_t* packed, uint8_t* item);
void decode_item(const Geometry& geo, const uint8_t* item, uint8_t* packed);

}  // namespace bebr
