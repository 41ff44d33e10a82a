// AMX-INT8 level (Sapphire Rapids and later; dispatch name "amx"): the AVX-512 group kernels
// for few queries, plus a batch kernel that scores a whole query batch against each block as
// an int8 tile matrix product on the AMX unit:
//
//   C[q][r] = sum_k A[q][k] * B[k][r]      (TDPBSUD: A signed, B unsigned bytes)
//
// A = the queries' scaled values qv (odd integers; QueryBatch, built once per search),
// B = the block's levels l in [0, 2^bits). Since a code value is 2l - (2^bits-1) (scaled),
// score = 2 C - (2^bits-1) sum(qv). Each block is unpacked once from its stored layout
// (layout.h) into B tiles in the VNNI row format AMX reads: tile (s, kc) row r holds, for
// lane j of lane group s (r order: lane j of group s is r = 16s + j), the levels at K positions
// 64 kc + 4r + {0,1,2,3} (K order: kernels.h, QueryBatch). Then every 16-query tile of the
// batch reuses those tiles, 16x16x64
// multiply-adds per instruction. Scores go through the AVX-512 threshold/heap selection
// (select_block, r order), so results are bit-identical to every other level.
//
// Tile registers: 0..3 accumulate C for 2 query tiles x 2 lane groups, 4 and 5 hold A, 6 and 7
// B (four tile loads feed four products). The OS must have granted the tile state (dispatch.cpp
// asks once with arch_prctl before this level is offered). Compiled with the AVX-512, VBMI
// and AMX flags from CMakeLists.txt; called only after dispatch checks the CPU.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "buffer.h"
#include "kernels.h"

namespace bebr {
namespace amx {

#include "simd_avx512.inc"

#include "kernel_body.inc"

namespace {

constexpr int kTileBytes = 1024;  // 16 rows x 64 bytes

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
}

// Byte permutation of one 64-byte stored plane row into one B-tile row:
//  planes[s][4j + e] = slot item_of_r(16s + j)   (the slot's byte, replicated 4x)
struct Perms {
  alignas(64) uint8_t planes[4][64];
  Perms() {
    for (int s = 0; s < 4; ++s)
      for (int i = 0; i < 64; ++i) planes[s][i] = static_cast<uint8_t>(kR.item_of_r[16 * s + i / 4]);
  }
};
const Perms kPerms;

inline bool group_alive(uint64_t m, int s) { return ((m >> (16 * s)) & 0xffff) != 0; }

// Planes layout (bits <= 2), lane group s: byte row (t, p) of the block holds dims 8p..8p+7 of
// plane t for the 64 slots; B rows 2p (dims 8p..8p+3 = bits 0..3) and 2p+1 (bits 4..7) get
// level = sum_t 2^(bits-1-t) bit_t per lane and dim.
void unpack_planes(const Geometry& geo, const uint8_t* blk, int kcn, int s, uint8_t* out) {
  const int P = geo.plane_bytes, bits = geo.bits;
  const __m512i pat_lo = _mm512_set1_epi32(0x08040201);
  const __m512i pat_hi = _mm512_set1_epi32(static_cast<int>(0x80402010u));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i idx = _mm512_load_si512(kPerms.planes[s]);
  const int rows = 8 * kcn, live = P < rows ? P : rows;
  int p = 0;
  for (; p < live; ++p) {
    __m512i lo = zero, hi = zero;
    for (int t = 0; t < bits; ++t) {
      const __m512i x = _mm512_permutexvar_epi8(idx, _mm512_loadu_si512(blk + (static_cast<size_t>(t) * P + p) * kBlock));
      const __m512i w = _mm512_set1_epi8(static_cast<char>(1 << (bits - 1 - t)));
      lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(x, pat_lo), lo, w);
      hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(x, pat_hi), hi, w);
    }
    _mm512_store_si512(out + static_cast<size_t>(2 * p) * 64, lo);
    _mm512_store_si512(out + static_cast<size_t>(2 * p + 1) * 64, hi);
  }
  for (; p < rows; ++p) {  // dims past the code: zero levels (the queries are zero there too)
    _mm512_store_si512(out + static_cast<size_t>(2 * p) * 64, zero);
    _mm512_store_si512(out + static_cast<size_t>(2 * p + 1) * 64, zero);
  }
}

// Nibble layout (bits >= 3), lane group s: row c holds per lane 4 bytes, byte b = level(8c+2b)
// | level(8c+2b+1) << 4. The batch's K order follows it (build_query_batch): B row 2c = the low
// nibbles (dims 8c+0,2,4,6), B row 2c+1 = the high nibbles (dims 8c+1,3,5,7), lanes in place.
void unpack_nibbles(const Geometry& geo, const uint8_t* blk, int kcn, int s, uint8_t* out) {
  const int C = geo.chunks;
  const __m512i m0f = _mm512_set1_epi8(0x0f);
  const __m512i zero = _mm512_setzero_si512();
  const uint8_t* src = blk + static_cast<size_t>(s) * C * 64;
  const int rows = 8 * kcn, live = C < rows ? C : rows;
  int c = 0;
  for (; c < live; ++c) {
    const __m512i x = _mm512_loadu_si512(src + static_cast<size_t>(c) * 64);
    _mm512_store_si512(out + static_cast<size_t>(2 * c) * 64, _mm512_and_si512(x, m0f));
    _mm512_store_si512(out + static_cast<size_t>(2 * c + 1) * 64, _mm512_and_si512(_mm512_srli_epi16(x, 4), m0f));
  }
  for (; c < rows; ++c) {
    _mm512_store_si512(out + static_cast<size_t>(2 * c) * 64, zero);
    _mm512_store_si512(out + static_cast<size_t>(2 * c + 1) * 64, zero);
  }
}

inline void unpack_group(const Geometry& geo, const uint8_t* blk, int kcn, int s, uint8_t* out) {
  if (geo.nibbles)
    unpack_nibbles(geo, blk, kcn, s, out);
  else
    unpack_planes(geo, blk, kcn, s, out);
}

// Issue the tile products of query tiles u, u+1 (rows q0 .. q0+31) against lane groups s0, s1
// (B tiles at b0, b1) into C tiles 0..3 = (u, s0), (u, s1), (u+1, s0), (u+1, s1): per 64-dim
// step two A and two B tile loads feed four products. Returns at once: the AMX unit works
// while the caller goes on.
inline void multiply_2x2(const QueryBatch& qb, const uint8_t* b0, const uint8_t* b1, int kcn, int64_t q0) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  // A tile (u, kc) of the batch: 1 KB at (u * kcn + kc) * 1 KB, rows 64 bytes apart
  const int8_t* at = qb.a + static_cast<size_t>(q0 / 16) * kcn * kTileBytes;
  const size_t tstep = static_cast<size_t>(kcn) * kTileBytes;
  for (int kc = 0; kc < kcn; ++kc) {
    const size_t o = static_cast<size_t>(kc) * kTileBytes;
    _tile_loadd(4, at + o, 64);
    _tile_loadd(6, b0 + o, 64);
    _tile_dpbsud(0, 4, 6);
    _tile_loadd(7, b1 + o, 64);
    _tile_dpbsud(1, 4, 7);
    _tile_loadd(5, at + tstep + o, 64);
    _tile_dpbsud(2, 5, 6);
    _tile_dpbsud(3, 5, 7);
  }
}

// Store C tiles 0..3 of multiply_2x2 to tot[q][16s + j] (rows of kBlock int32).
inline void store_2x2(int32_t* tot, int64_t q0, int s0, int s1) {
  constexpr size_t ldc = kBlock * sizeof(int32_t);
  int32_t* c = tot + q0 * kBlock;
  _tile_stored(0, c + 16 * s0, ldc);
  _tile_stored(1, c + 16 * s1, ldc);
  _tile_stored(2, c + 16 * kBlock + 16 * s0, ldc);
  _tile_stored(3, c + 16 * kBlock + 16 * s1, ldc);
}

// Releases the tile state on every exit path (the OS then need not save it on switches).
struct TileScope {
  TileScope() { configure_tiles(); }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// Per block and query: raw products C (r order) -> scores 2C - (2^bits-1) sum(qv), then the
// shared threshold/heap selection. A cheap bound first: the lane-wise max of the 64 raw
// products (stale lanes of dead lane groups only make the bound looser) decides whether
// any item can enter the query's heap; most blocks stop there once the heaps are warm.
class Selector {
 public:
  Selector(const ScanArgs& a, const QueryBatch& qb, int bits) : a_(a), qb_(qb), mlev_((1 << bits) - 1) {}

  void block(int64_t blk, uint64_t m, int32_t* tot, TopK* heaps) {
    const bool cosine = a_.kind == ScoreKind::kCosine;
    __m512 inv_hi = _mm512_setzero_ps(), inv_lo = _mm512_setzero_ps();
    if (cosine) {
      const float* inv = a_.invn + blk * kBlock;
      __m512 hi = _mm512_loadu_ps(inv), lo = hi;
      for (int i = 16; i < kBlock; i += 16) {
        hi = _mm512_max_ps(hi, _mm512_loadu_ps(inv + i));
        lo = _mm512_min_ps(lo, _mm512_loadu_ps(inv + i));
      }
      inv_hi = _mm512_set1_ps(_mm512_reduce_max_ps(hi));
      inv_lo = _mm512_set1_ps(_mm512_reduce_min_ps(lo));
    }
    for (int64_t q = 0; q < qb_.nq; ++q) {
      int32_t* row = tot + q * kBlock;
      const __m512i off = _mm512_set1_epi32(-mlev_ * qb_.sums[q]);
      const __m512i c = _mm512_max_epi32(_mm512_max_epi32(_mm512_load_si512(row), _mm512_load_si512(row + 16)),
                                         _mm512_max_epi32(_mm512_load_si512(row + 32), _mm512_load_si512(row + 48)));
      const __m512i vmax = _mm512_add_epi32(_mm512_add_epi32(c, c), off);
      const float th = heaps[q].threshold();
      if (th != -std::numeric_limits<float>::infinity()) {
        __mmask16 any;
        if (!cosine) {
          any = _mm512_cmpge_epi32_mask(vmax, _mm512_set1_epi32(int_threshold(th)));
        } else {
          const __m512 f = _mm512_cvtepi32_ps(vmax);
          const __m512 inv = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f, _mm512_setzero_ps(), _CMP_GE_OQ), inv_lo, inv_hi);
          any = _mm512_cmp_ps_mask(_mm512_mul_ps(f, inv), _mm512_set1_ps(th), _CMP_GE_OQ);
        }
        if (!any) continue;
      }
      for (int i = 0; i < kBlock; i += 16) {
        const __m512i x = _mm512_load_si512(row + i);
        _mm512_store_si512(row + i, _mm512_add_epi32(_mm512_add_epi32(x, x), off));
      }
      select_block<1>(a_, blk, m, reinterpret_cast<int32_t(*)[kBlock]>(row), keys_, heaps + q, nullptr);
    }
  }

 private:
  const ScanArgs& a_;
  const QueryBatch& qb_;
  const int32_t mlev_;
  alignas(64) float keys_[kBlock];
};

// Per alive block: the AMX products of every (query tile pair, lane group pair), then the
// selection. The next block is unpacked into the other buffer in pieces between issuing a
// product group and storing its C tiles, so the vector units work while the AMX unit does;
// the block after next is prefetched (each 4 KB block is its own page for the hardware
// prefetcher, which would otherwise stall at every block).
void scan_batch(const ScanArgs& a, const QueryBatch& qb, TopK* heaps) {
  const Geometry& geo = a.geo;
  const int kcn = qb.kpad / 64;
  const size_t group_bytes = static_cast<size_t>(kcn) * kTileBytes;
  // 64-byte aligned scratch (a tile row straddling two cache lines halves the tile loads)
  thread_local CodeBuffer bbuf, totbuf;
  bbuf.resize(2 * 4 * group_bytes);
  totbuf.resize(static_cast<size_t>(qb.rows) * kBlock * sizeof(int32_t));
  int32_t* tot = reinterpret_cast<int32_t*>(totbuf.data());
  uint8_t* buf[2] = {bbuf.data(), bbuf.data() + 4 * group_bytes};
  auto mask = [&](int64_t b) { return a.alive[b] & (a.filter ? a.filter[b] : ~uint64_t(0)); };
  auto next_alive = [&](int64_t b) {
    while (b < a.block_end && !mask(b)) ++b;
    return b;
  };
  auto codes = [&](int64_t b) { return a.codes + b * geo.block_bytes; };
  Selector sel(a, qb, geo.bits);
  const size_t pf_quarter = (geo.block_bytes + 255) / 256 * 64;
  TileScope tiles;

  int64_t cur = next_alive(a.block_begin);
  if (cur >= a.block_end) return;
  uint64_t mc = mask(cur);
  for (int s = 0; s < 4; ++s)
    if (group_alive(mc, s)) unpack_group(geo, codes(cur), kcn, s, buf[0] + s * group_bytes);
  int which = 0;
  // per block: (query tile pairs) x (lane group pairs) products; the next block's lane group
  // g is unpacked during iteration g * n_it / 4, the block after next is prefetched.
  const int64_t n_qp = qb.rows / 32;
  const int64_t n_it = 2 * n_qp;
  while (cur < a.block_end) {
    const int64_t nxt = next_alive(cur + 1);
    const uint64_t mn = nxt < a.block_end ? mask(nxt) : 0;
    const uint8_t* bc = buf[which];
    uint8_t* bn = buf[which ^ 1];
    int64_t it = 0;
    for (int sp = 0; sp < 2; ++sp) {
      const int s0 = 2 * sp, s1 = 2 * sp + 1;
      const bool live = group_alive(mc, s0) || group_alive(mc, s1);
      for (int64_t qp = 0; qp < n_qp; ++qp, ++it) {
        if (live) multiply_2x2(qb, bc + s0 * group_bytes, bc + s1 * group_bytes, kcn, 32 * qp);
        for (int g = 0; g < 4; ++g) {
          if (g * n_it / 4 != it) continue;
          if (group_alive(mn, g)) unpack_group(geo, codes(nxt), kcn, g, bn + g * group_bytes);
          if (nxt + 1 < a.block_end) {
            const uint8_t* pf = codes(nxt + 1) + g * pf_quarter;
            for (size_t o = 0; o < pf_quarter; o += 64) prefetch_line(pf + o);
          }
        }
        if (live) store_2x2(tot, 32 * qp, s0, s1);
      }
    }
    sel.block(cur, mc, tot, heaps);
    cur = nxt;
    mc = mn;
    which ^= 1;
  }
}

}  // namespace
}  // namespace amx

const KernelTable& kernels_amx() {
  // few queries: the AVX-512 group kernels (compiled here from the same body)
  static const KernelTable t{"amx", &amx::scan_simd, kernels_avx512().read, &amx::scan_batch};
  return t;
}

}  // namespace bebr
