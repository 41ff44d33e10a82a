// Scalar reference kernel (baseline flags, no SIMD): exact bit-plane popcount SDC,
//   <q,d> * 2^(qbits-1) 2^(bits-1) = sum_{s<qbits,t<bits} 2^(qbits-1-s) 2^(bits-1-t) (dim - 2 popcount(q_s ^ d_t)),
// over the blocked layouts of layout.h (it gathers each item's bytes back into a public code).
// Every SIMD level must match it bit for bit.
#include <algorithm>
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
  // plane pruning (ScanArgs::prune), decided per block and entry as the SIMD kernels do: from
  // the heap thresholds at the block's start and the largest high-plane LUT partial 2 S0
  // over all 64 slots of the block
  const bool prune = prune_applies(geo, qbits, a.prune);
  const int32_t bias = prune ? lut_bias(geo, qbits) : 0;
  std::vector<SumBound> bound(qg.g);
  bool skip[kMaxGroup] = {};
  // cosine: a lower bound of block blk's slots' norms (0: none), as the SIMD kernels take it
  auto block_norm_min = [&](int64_t blk) {
    if (a.norm_min) return a.norm_min[blk];
    float mx = 0.f;
    for (int r = 0; r < kBlock; ++r) mx = std::max(mx, a.invn[blk * kBlock + r]);
    return mx > 0.f ? 1.f / mx : 0.f;
  };
  // the largest high-plane LUT partial 2 S0 of block B over all its slots for entry g, and
  // (cosine) whether a slot's key at the allowance reaches th
  auto high_partial = [&](const uint8_t* B, int64_t blk, int g, int64_t margin, float th, bool* any) {
    int64_t hi0 = 0;
    for (int it = 0; it < kBlock; ++it) {
      int64_t s0 = 0;
      for (int p = 0; p < P; ++p) {  // plane 0 byte p of slot it: nibble groups 2p, 2p+1
        const uint8_t c = B[geo.offset(it, p)];
        s0 += qg.lut[g][32 * p + (c & 15)] + qg.lut[g][32 * p + 16 + (c >> 4)];
      }
      hi0 = std::max(hi0, 2 * s0);
      if (any && a.kind == ScoreKind::kCosine) {
        const float key = static_cast<float>(static_cast<int32_t>(2 * (2 * s0 + margin) - bias)) *
                          a.invn[blk * kBlock + kR.r_of_item[it]];
        *any = *any || key >= th;
      }
    }
    return hi0;
  };
  // one block: the skip decisions (decide: plane pruning applies and the block is no seed),
  // then the exact scores of its live slots for the entries that do not skip it
  auto visit = [&](int64_t blk, bool decide) {
    uint64_t m = a.alive[blk] & (a.filter ? a.filter[blk] : ~uint64_t(0));
    const uint8_t* B = a.codes + blk * geo.block_bytes;
    for (int g = 0; g < qg.g; ++g) skip[g] = false;
    if (decide && m) {
      auto norm_min = [&] { return block_norm_min(blk); };
      for (int g = 0; g < qg.g; ++g) {
        const float ks = qg.key_scale[g], sh = qg.key_shift[g];
        const int64_t margin = qg.prune_margin[g];
        const float th = unscaled_threshold(heaps[qg.heap[g]].threshold(), ks, sh);
        bool any = false;  // cosine: a slot's key at the allowance reaches th
        const int64_t hi0 = high_partial(B, blk, g, margin, th, &any);
        if (a.kind == ScoreKind::kCosine) {
          skip[g] = !(any || !(th > -std::numeric_limits<float>::infinity()));
        } else {
          skip[g] = prune_skips(bound[g].at(a, heaps[qg.heap[g]], ks, sh, bias, norm_min), hi0, margin);
        }
      }
    }
    while (m) {
      const int r = __builtin_ctzll(m);
      m &= m - 1;
      const int it = kR.item_of_r[r];
      for (int j = 0; j < geo.item_bytes; ++j) item[j] = B[geo.offset(it, j)];
      decode_item(geo, item.data(), row.data());
      const int64_t id = slot_id(a, blk * kBlock + it);
      for (int g = 0; g < qg.g; ++g) {
        if (skip[g] || (qg.slots[g] && !((qg.slots[g][blk] >> r) & 1))) continue;
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
  };
  if (!(prune && qg.g == 1)) {
    for (int64_t blk = a.block_begin; blk < a.block_end; ++blk) visit(blk, prune);
    return;
  }
  // one entry: seeded, chunk by chunk (kernels.h SeedPicker)
  for (int64_t c0 = a.block_begin; c0 < a.block_end; c0 += kSeedChunk) {
    const int64_t c1 = std::min(c0 + kSeedChunk, a.block_end);
    SeedPicker seeds;
    for (int64_t blk = c0; blk < c1; ++blk)
      if (a.alive[blk] & (a.filter ? a.filter[blk] : ~uint64_t(0)))
        seeds.push(blk, high_partial(a.codes + blk * geo.block_bytes, blk, 0, 0, 0.f, nullptr));
    for (int s = 0; s < seeds.n; ++s) visit(seeds.blk[s], false);
    for (int64_t blk = c0; blk < c1; ++blk)
      if (!seeds.has(blk)) visit(blk, true);
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
