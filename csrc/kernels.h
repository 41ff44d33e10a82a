// Kernel interface: one function table per SIMD level (scalar, avx2, avx512), filled by the
// per-ISA files kernel_<isa>.cpp, chosen once at load time by dispatch.cpp.
//
// Data layout: see layout.h (blocks of 64 transposed codes, r-ordered masks / norms).
// Queries may carry more (or fewer) bits per dimension than the stored codes: a query code is
// packed at CodeSpec(dim, qbits), qbits in [1, 4] (planes) or [1, 7] (nibbles: int8 qv) (ScanArgs::qbits; the stored codes keep
// geo.bits). Its values are odd integers qv in [-(2^qbits-1), 2^qbits-1]; every kernel computes
// the exact sum_j qv_j dv_j with dv_j the stored item's scaled values (odd ints, 2^bits-1 max).
// Query table (built by build_query_lut, 32P bytes reserved), qv = the query's scaled values
// (odd integers, 0 past dim):
//  * planes layout (bits <= 2): for nibble group g in [0, 2P), 16 bytes
//    lut[g*16 + n] = B0 + (odd_g + sum_{j<4} qv[4g+j] * (bit j of n ? +1 : -1)) / 2,
//    B0 = 2 (2^qbits - 1), odd_g = 1 if the group holds an odd number of dims (else the sum is
//    even already), keeping entries unsigned (<= 2 B0 = 60): an item's score is
//    2 sum(entries, weighted 2^(bits-1-t) per plane t) - lut_bias;
//  * nibbles layout (bits >= 3): for row c, int8 qv of dims 8c+{0,2,4,6} then 8c+{1,3,5,7}
//    (8 bytes per row), then the int32 sum of qv at byte 8C.
#pragma once
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <climits>
#include <limits>

#include "layout.h"
#include "topk.h"

namespace bebr {

enum class ScoreKind : int { kInnerProduct = 0, kCosine = 1 };

constexpr int kMaxGroup = 4;  // queries scanned together over one loaded block

struct ScanArgs {
  Geometry geo;
  const uint8_t* codes = nullptr;     // blocked codes
  int64_t block_begin = 0, block_end = 0;
  const uint64_t* alive = nullptr;    // per block r-mask of live slots
  const uint64_t* filter = nullptr;   // optional per block r-mask of allowed slots
  const int64_t* ids = nullptr;       // per slot (natural order)
  const uint32_t* ids32 = nullptr;    // alternative to ids (ids == nullptr): narrow per-slot ids
  const float* invn = nullptr;        // per block 64 r-ordered inverse norms (cosine only)
  // optional (cosine): per block a lower bound of its slots' norms, 1 / (the largest of its
  // 64 inverse norms) (nullptr: the kernels compute it from invn)
  const float* norm_min = nullptr;
  ScoreKind kind = ScoreKind::kInnerProduct;
  int qbits = 0;                      // bits per dimension of the query codes (1..7)
  // Plane pruning (prune_applies): > 0 lets the planes kernels skip the low plane of a block
  // when, even with every item's low-plane LUT sum `prune` standard deviations above its mean
  // under uniformly random bits (prune_margin), no item of the block could enter the heap.
  // Approximate: an item whose low plane lies further out is missed. 0: exact.
  float prune = 0.f;
};

struct QueryGroup {
  int g = 0;                                // number of queries, 1..kMaxGroup
  const uint8_t* packed[kMaxGroup] = {};    // public packed query codes (qbits planes)
  const uint8_t* lut[kMaxGroup] = {};       // 2P * 16 bytes each
  // Per query of the group: an optional per-block r-mask of the slots it may score (nullptr:
  // every slot the scan allows) and the heap it feeds (an index into the heaps array the
  // scan gets). A query with one code per stored version expands into one entry per version,
  // each restricted to that version's slots and all feeding the query's heap.
  const uint64_t* slots[kMaxGroup] = {};
  int heap[kMaxGroup] = {0, 1, 2, 3};
  // Each entry's keys enter the heap as key * key_scale + key_shift (key: the integer score,
  // for cosine times the item's inverse norm), so that entries of one query with different
  // codes compare: for cosine key_scale carries the entry's query inverse norm, and both carry
  // a per-version score calibration (Index.search(version_calibration=)); 1 / 0 = unchanged.
  float key_scale[kMaxGroup] = {1.f, 1.f, 1.f, 1.f};
  float key_shift[kMaxGroup] = {0.f, 0.f, 0.f, 0.f};
  // Plane pruning (ScanArgs::prune, where prune_applies): each entry's prune_margin of its
  // table, computed once per query by the caller (unused otherwise).
  int64_t prune_margin[kMaxGroup] = {0, 0, 0, 0};
};

// Id of slot s (natural order) of a scan: ids, else the narrow ids32.
inline int64_t slot_id(const ScanArgs& a, int64_t s) { return a.ids ? a.ids[s] : static_cast<int64_t>(a.ids32[s]); }

// Lowest unscaled key that can reach heap threshold th after key * ks + sh (ks > 0), minus a
// slack for the float rounding of that map, so that a prefilter against it never drops an
// item the heap would keep (the heap itself compares the exactly mapped key).
inline float unscaled_threshold(float th, float ks, float sh) {
  if (ks == 1.f && sh == 0.f) return th;
  const double t = (static_cast<double>(th) - sh) / ks;
  const double slack = 1e-5 * (std::fabs(t) + (std::fabs(static_cast<double>(th)) + std::fabs(sh)) / ks);
  return static_cast<float>(t - slack);
}

// Lowest int32 score that can reach the float threshold th (floor(th), clamped to the int32
// range; -inf, NaN and anything below the range give INT32_MIN, so every score passes). A
// plain cast of an out-of-range float is undefined behaviour (a mapped threshold can be one).
inline int32_t int_threshold(float th) {
  if (!(th > -2147483648.f)) return INT32_MIN;
  if (th >= 2147483520.f) return INT32_MAX;  // the largest float below 2^31
  return static_cast<int32_t>(std::floor(th));
}

// A batch of queries as an int8 matrix for matrix-unit kernels (AMX), stored as 16 x 64 tiles:
// tile (u, kc) = bytes [(u * kpad/64 + kc) * 1024, +1024), its row r = query 16u + r's scaled
// values qv (odd integers) at K positions 64kc .. 64kc+63, zero past dim and in the padding
// rows (rows = nq rounded up to 32). K position of dim j: j for bits <= 2; for the nibble
// layout of bits >= 3, 8(j/8) + 4(j%2) + (j%8)/2 (the even dims of each 8-dim chunk first, as
// they sit in the stored low nibbles). Queries 16u.. start at byte 16u * kpad. sums[q] = sum
// of qv. Built once per search by build_query_batch; item score = 2 sum_j qv_j level_j -
// (2^bits-1) sums[q].
struct QueryBatch {
  int64_t nq = 0;           // real queries
  int64_t rows = 0;         // nq rounded up to a multiple of 32 (query tiles go in pairs)
  int kpad = 0;             // 8 * ceil(dim / 8) rounded up to a multiple of 64
  const int8_t* a = nullptr;      // rows * kpad, tiled as above
  const int32_t* sums = nullptr;  // nq
};

using scan_fn = void (*)(const ScanArgs&, const QueryGroup&, TopK* heaps);  // heaps[qg.heap[g]]
using batch_fn = void (*)(const ScanArgs&, const QueryBatch&, TopK* heaps);
using read_fn = uint64_t (*)(const uint8_t* data, size_t bytes);

struct KernelTable {
  const char* name;
  scan_fn scan;   // scans blocks [block_begin, block_end) for every query of the group
  read_fn read;   // streaming read of `bytes` bytes (memory-bandwidth probe); returns a checksum
  // Optional (nullptr if the level has none): scans blocks [block_begin, block_end) for a
  // whole query batch at once, worth it from kBatchMinQueries queries on.
  batch_fn scan_batch;
};

// When a level's scan_batch beats its group scan (measured on Sapphire Rapids, 300k x 256,
// BENCHMARKS.md section 1): from 24 queries at bits >= 2 (bits 2: 2.2x at nq 24, 3.3x at nq 64;
// below ~16 queries unpacking each block costs more than the LUT scan); never at bits 1, where
// the AVX-512 byte-popcount kernel stays ahead (0.84x at nq 64).
constexpr int64_t kBatchMinQueries = 24;
constexpr int kBatchMinBits = 2;

// Per-ISA tables (nullptr-free; a level exists only if compiled in).
const KernelTable& kernels_scalar();
#ifdef BEBR_HAVE_AVX2
const KernelTable& kernels_avx2();
#endif
#ifdef BEBR_HAVE_AVX512
const KernelTable& kernels_avx512();
#endif
#ifdef BEBR_HAVE_AMX
const KernelTable& kernels_amx();
#endif

// Fill a QueryBatch's int8 matrix (batch.rows * batch.kpad bytes, zeroed here) and sums
// (batch.nq) from nq packed queries of geometry qgeo (same dim as geo); batch.rows/kpad must
// be set.
void build_query_batch(const Geometry& geo, const Geometry& qgeo, const uint8_t* packed,
                       const QueryBatch& batch, int8_t* a, int32_t* sums);
// Build the query table (2P*16 bytes) of one packed query of geometry qgeo against stored
// codes of geometry geo (same dim).
void build_query_lut(const Geometry& geo, const Geometry& qgeo, const uint8_t* packed, uint8_t* lut);
// Scaled query values qv (odd ints, length dim) of one packed code.
void scaled_values(const Geometry& geo, const uint8_t* packed, int32_t* out);
// Sum of squared scaled values of one packed code.
int64_t sum_squares(const Geometry& geo, const uint8_t* packed);
// LUT entry bias B0 of the planes layout for queries of qbits bits: 2 (2^qbits - 1) (entries
// lie in [0, 2 B0]).
inline int lut_entry_bias(int qbits) { return 2 * ((1 << qbits) - 1); }
// Groups of 4 dims of the planes layout holding an odd number of dims (0..2, all in the last
// byte): their LUT sums were made even by + 1 before halving.
inline int lut_odd_groups(const Geometry& geo) {
  const int rem = geo.dim - 8 * (geo.plane_bytes - 1);  // dims in the last byte, 1..8
  return (rem < 4 ? rem : 4) % 2 + (rem > 4 ? rem - 4 : 0) % 2;
}
// Bias of one item's LUT sum S (planes layout): its exact score is 2 S - lut_bias(geo, qbits)
// = 2 S - (2^bits - 1) (2P * 2 B0 + odd groups) (the plane weights sum to 2^bits - 1).
inline int32_t lut_bias(const Geometry& geo, int qbits) {
  return ((1 << geo.bits) - 1) * (2 * geo.plane_bytes * 2 * lut_entry_bias(qbits) + lut_odd_groups(geo));
}
// Largest LUT sum S of one item (planes layout): (2^bits - 1) * 2P * 2 B0.
inline int64_t lut_sum_max(const Geometry& geo, int qbits) {
  return static_cast<int64_t>((1 << geo.bits) - 1) * 2 * geo.plane_bytes * 2 * lut_entry_bias(qbits);
}

// Whether plane pruning (ScanArgs::prune) applies to a scan: 2-bit planes layout whose whole
// LUT sums fit 16 bits (the kernels' SUM16 path), prune > 0. Elsewhere the scan is exact.
inline bool prune_applies(const Geometry& geo, int qbits, float prune) {
  return prune > 0.f && !geo.nibbles && geo.bits == 2 && lut_sum_max(geo, qbits) <= 65535;
}
// Plane pruning of a single query entry (QueryGroup::g == 1) scans in chunks of kSeedChunk
// blocks: the high plane of every block of the chunk first, then the chunk's seed blocks
// whole (no skip test), then its other blocks in order, each with the skip test. The seeds
// are the kSeedBlocks blocks with live slots whose largest high-plane partial 2 S0 (over all
// 64 slots) is the largest, ties to the earlier block; they are scored largest first. Their
// items bring the heap's threshold near its final value before the other blocks are tested
// (MiniLM 192x2 codes, 98k items: under the final threshold 97.6% of the blocks can skip
// their low plane at prune 3). The scalar reference and every SIMD level visit the blocks in
// this order, so they decide alike.
constexpr int kSeedBlocks = 8;
constexpr int64_t kSeedChunk = 2048;
struct SeedPicker {
  int n = 0;
  int64_t blk[kSeedBlocks] = {};
  int64_t hi[kSeedBlocks] = {};
  void push(int64_t b, int64_t h) {
    if (n == kSeedBlocks && h <= hi[n - 1]) return;  // (ties: the earlier block stays)
    int i = n < kSeedBlocks ? n++ : n - 1;
    for (; i > 0 && hi[i - 1] < h; --i) {
      hi[i] = hi[i - 1];
      blk[i] = blk[i - 1];
    }
    hi[i] = h;
    blk[i] = b;
  }
  bool has(int64_t b) const {
    for (int i = 0; i < n; ++i)
      if (blk[i] == b) return true;
    return false;
  }
};

// The low-plane allowance of plane pruning for one query table (planes layout, 2P tables of
// 16 entries): ceil(E + prune * sd), E and sd the mean and standard deviation of the low
// plane's LUT sum when its 2P nibbles are independent and uniform, capped at the largest
// such sum. Integer sums and one sqrt in one translation unit: every level gets the same value.
int64_t prune_margin(const Geometry& geo, const uint8_t* lut, float prune);

// The per-block skip test of a query entry (planes layout): the lowest LUT sum S (score =
// 2 S - bias) with which an item can still enter the entry's heap, so that every item below
// it scores under the heap's threshold (conservative: it may let through items the exact test
// then rejects). The threshold is re-read per block, the rest recomputed only when it moved.
// Shared by the SIMD kernels and the scalar reference (plane pruning decides with it).
struct SumBound {
  float seen = std::numeric_limits<float>::quiet_NaN();  // heap threshold last seen
  int64_t lim = 0;   // ip: the bound; 0: none yet; INT64_MAX: no item can enter
  double thp = 0;    // cosine: th (1 - 2^-20) (0: no bound)
  // S bound from the lowest integer score t that can reach the threshold: 2 S - bias >= t
  // => S >= (t + bias) / 2 (floor: conservative); 0 if none.
  static int64_t from_score(int64_t t, int32_t bias) {
    const int64_t u = t + bias;
    const int64_t s = u >= 0 ? u / 2 : -((-u + 1) / 2);
    return s < 0 ? 0 : s;
  }
  // norm_min(): the block's lower bound of its slots' norms (cosine; not > 0: no bound).
  template <class NormMin>
  int64_t at(const ScanArgs& a, const TopK& hp, float ks, float sh, int32_t bias, NormMin norm_min) {
    const float cur = hp.threshold();
    if (!(cur == seen)) {
      seen = cur;
      const float th = unscaled_threshold(cur, ks, sh);
      if (a.kind != ScoreKind::kCosine) {
        lim = th > -2147483648.f ? from_score(int_threshold(th), bias) : 0;
      } else {
        // key = fl(fl(score) * inv) <= score * invmax (1 + 2^-23) for score > 0: a score
        // below th (1 - 2^-20) / invmax cannot reach th; no bound below a positive threshold
        thp = th > 0.f ? static_cast<double>(th) * (1.0 - 1.0 / (1 << 20)) : 0.0;
      }
    }
    if (a.kind != ScoreKind::kCosine) return lim;
    if (!(thp > 0)) return 0;
    const float nm = norm_min();
    if (!(nm > 0.f)) return 0;
    const double t = thp * nm;  // (nm's float rounding: within the 2^-20 slack)
    if (!(t < 4e9)) return INT64_MAX;
    return from_score(static_cast<int64_t>(std::floor(t)) - 1, bias);
  }
};
// Whether plane pruning skips a block's low plane for an entry (inner product): lim its
// SumBound, hi0 the largest high-plane partial (2 S0) over the block's 64 slots, margin its
// prune_margin. Cosine instead tests each slot: no slot's key at the allowance,
// float(2 (2 S0 + margin) - bias) * its inverse norm, reaches the heap's unscaled threshold
// (the float product of select_one's prefilter).
inline bool prune_skips(int64_t lim, int64_t hi0, int64_t margin) {
  return lim > 65535 || (lim > 0 && hi0 + margin < lim);
}

}  // namespace bebr
