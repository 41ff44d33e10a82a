// Scalar reference kernel (baseline flags, no SIMD): exact bit-plane popcount SDC,
//   <q,d> * 2^(qbits-1) 2^(bits-1) = sum_{s<qbits,t<bits} 2^(qbits-1-s) 2^(bits-1-t) (dim - 2 popcount(q_s ^ d_t)),
// over the blocked layouts of layout.h (it gathers each item's bytes back into a public code).
// Every SIMD level must match it bit for bit.
#include <cstring>
#include <vector>

#include "kernels.h"

namespace bebr {
namespace {

inline int popcount8(uint8_t x) { return __builtin_popcount(x); }

void scan_scalar(const ScanArgs& a, const QueryGroup& qg, TopK* heaps) {
  const Geometry& geo = a.geo;
  const int P = geo.plane_bytes, bits = geo.bits, qbits = a.qbits, cb = geo.code_bytes;
  std::vector<uint8_t> row(cb), item(geo.item_bytes);
  for (int64_t blk = a.block_begin; blk < a.block_end; ++blk) {
    uint64_t m = a.alive[blk] & (a.filter ? a.filter[blk] : ~uint64_t(0));
    const uint8_t* B = a.codes + blk * geo.block_bytes;
    while (m) {
      const int r = __builtin_ctzll(m);
      m &= m - 1;
      const int it = kR.item_of_r[r];
      for (int j = 0; j < geo.item_bytes; ++j) item[j] = B[geo.offset(it, j)];
      decode_item(geo, item.data(), row.data());
      const int64_t id = slot_id(a, blk * kBlock + it);
      for (int g = 0; g < qg.g; ++g) {
        if (qg.slots[g] && !((qg.slots[g][blk] >> r) & 1)) continue;
        const uint8_t* q = qg.packed[g];
        int32_t ip = 0;
        for (int s = 0; s < qbits; ++s)
          for (int t = 0; t < bits; ++t) {
            int pc = 0;
            for (int p = 0; p < P; ++p) pc += popcount8(q[s * P + p] ^ row[t * P + p]);
            ip += (geo.dim - 2 * pc) * (1 << ((qbits - 1 - s) + (bits - 1 - t)));  // may be < 0: no shift
          }
        float key = static_cast<float>(ip);
        if (a.kind == ScoreKind::kCosine) key = key * a.invn[blk * kBlock + r];
        if (qg.key_scale[g] != 1.f || qg.key_shift[g] != 0.f) key = key * qg.key_scale[g] + qg.key_shift[g];
        heaps[qg.heap[g]].push(key, id);
      }
    }
  }
}

uint64_t read_scalar(const uint8_t* data, size_t bytes) {
  uint64_t s0 = 0, s1 = 0;
  size_t i = 0;
  for (; i + 16 <= bytes; i += 16) {
    uint64_t x, y;
    std::memcpy(&x, data + i, 8);
    std::memcpy(&y, data + i + 8, 8);
    s0 += x;
    s1 ^= y;
  }
  for (; i < bytes; ++i) s0 += data[i];
  return s0 + s1;
}

}  // namespace

const KernelTable& kernels_scalar() {
  static const KernelTable t{"scalar", &scan_scalar, &read_scalar, nullptr};
  return t;
}

}  // namespace bebr
