// ISA-independent helpers: query values, LUT construction, norms. Baseline flags only.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace bebr {
namespace {

// Level of dim j of a public packed code (bit-planes, plane 0 most significant).
inline int level_at(const Geometry& geo, const uint8_t* packed, int j) {
  int level = 0;
  for (int t = 0; t < geo.bits; ++t)
    level = (level << 1) | ((packed[t * geo.plane_bytes + j / 8] >> (j % 8)) & 1);
  return level;
}

}  // namespace

// Byte b spread over 8 bytes: byte i of kSpread[b] = bit i of b.
struct SpreadTable {
  uint64_t v[256];
  constexpr SpreadTable() : v() {
    for (int b = 0; b < 256; ++b)
      for (int i = 0; i < 8; ++i) v[b] |= static_cast<uint64_t>((b >> i) & 1) << (8 * i);
  }
};
constexpr SpreadTable kSpread{};

void scaled_values(const Geometry& geo, const uint8_t* packed, int32_t* out) {
  // 8 dims at a time: their levels as 8 bytes (< 128, no carries), plane 0 the most
  // significant bit (a per-query cost of every search call)
  const int D = geo.dim, P = geo.plane_bytes, top = (1 << geo.bits) - 1;
  for (int p = 0; p < P; ++p) {
    uint64_t lv = 0;
    for (int t = 0; t < geo.bits; ++t) lv = (lv << 1) | kSpread.v[packed[static_cast<size_t>(t) * P + p]];
    const int n = std::min(8, D - 8 * p);
    for (int i = 0; i < n; ++i) out[8 * p + i] = 2 * static_cast<int32_t>((lv >> (8 * i)) & 0xff) - top;
  }
}

int64_t sum_squares(const Geometry& geo, const uint8_t* packed) {
  thread_local std::vector<int32_t> qv;
  qv.resize(geo.dim);
  scaled_values(geo, packed, qv.data());
  int64_t s = 0;
  for (int j = 0; j < geo.dim; ++j) s += static_cast<int64_t>(qv[j]) * qv[j];
  return s;
}

void encode_item(const Geometry& geo, const uint8_t* packed, uint8_t* item) {
  if (!geo.nibbles) {
    std::memcpy(item, packed, geo.code_bytes);
    return;
  }
  std::memset(item, 0, geo.item_bytes);
  for (int j = 0; j < geo.dim; ++j)
    item[j / 2] |= static_cast<uint8_t>(level_at(geo, packed, j) << (4 * (j % 2)));
}

void decode_item(const Geometry& geo, const uint8_t* item, uint8_t* packed) {
  if (!geo.nibbles) {
    std::memcpy(packed, item, geo.code_bytes);
    return;
  }
  const int P = geo.plane_bytes;
  std::memset(packed, 0, geo.code_bytes);
  for (int j = 0; j < geo.dim; ++j) {
    const int level = (item[j / 2] >> (4 * (j % 2))) & 15;
    for (int t = 0; t < geo.bits; ++t)
      packed[t * P + j / 8] |= static_cast<uint8_t>(((level >> (geo.bits - 1 - t)) & 1) << (j % 8));
  }
}

void build_query_batch(const Geometry& geo, const Geometry& qgeo, const uint8_t* packed,
                       const QueryBatch& batch, int8_t* a, int32_t* sums) {
  std::memset(a, 0, static_cast<size_t>(batch.rows) * batch.kpad);
  std::vector<int32_t> qv(geo.dim);
  for (int64_t q = 0; q < batch.nq; ++q) {
    scaled_values(qgeo, packed + q * qgeo.code_bytes, qv.data());
    int32_t s = 0;
    for (int j = 0; j < geo.dim; ++j) {
      // K position of dim j: natural order for the planes layout; for the nibble layout the
      // stored order, dims 8c+0,2,4,6 then 8c+1,3,5,7 per 8-dim chunk c (kernel_amx.cpp)
      const int kk = geo.nibbles ? 8 * (j / 8) + 4 * (j % 2) + (j % 8) / 2 : j;
      a[(q / 16 * (batch.kpad / 64) + kk / 64) * 1024 + (q % 16) * 64 + kk % 64] = static_cast<int8_t>(qv[j]);
      s += qv[j];
    }
    sums[q] = s;
  }
}

void build_query_lut(const Geometry& geo, const Geometry& qgeo, const uint8_t* packed, uint8_t* lut) {
  if (geo.nibbles) {
    // per row c: int8 qv of dims 8c+{0,2,4,6} then 8c+{1,3,5,7}; then int32 sum of qv
    std::vector<int32_t> qv(static_cast<size_t>(geo.chunks) * 8, 0);
    scaled_values(qgeo, packed, qv.data());
    int32_t sum = 0;
    for (int j = 0; j < geo.dim; ++j) sum += qv[j];
    for (int c = 0; c < geo.chunks; ++c)
      for (int b = 0; b < 4; ++b) {
        lut[c * 8 + b] = static_cast<uint8_t>(static_cast<int8_t>(qv[8 * c + 2 * b]));
        lut[c * 8 + 4 + b] = static_cast<uint8_t>(static_cast<int8_t>(qv[8 * c + 2 * b + 1]));
      }
    std::memcpy(lut + 8 * geo.chunks, &sum, 4);
    return;
  }
  // planes: half the signed sum of the 4 dims (made even first: + 1 where the group holds an
  // odd number of dims, only possible in the last byte), biased by 2Q into [0, 4Q]; the 16
  // signed sums of a group as subset sums: s(n) = odd - sum(qv) + 2 sum_{j in n} qv_j
  const int groups = 2 * geo.plane_bytes;
  const int b0 = lut_entry_bias(qgeo.bits);
  thread_local std::vector<int32_t> qv;
  qv.assign(static_cast<size_t>(4) * groups, 0);  // 0 past dim
  scaled_values(qgeo, packed, qv.data());
  for (int g = 0; g < groups; ++g) {
    const int32_t* v = qv.data() + 4 * g;
    const int valid = std::max(0, std::min(4, geo.dim - 4 * g));
    int32_t sub[16];
    sub[0] = valid % 2 - (v[0] + v[1] + v[2] + v[3]);
    for (int j = 0; j < 4; ++j)
      for (int n = 0; n < (1 << j); ++n) sub[n | (1 << j)] = sub[n] + 2 * v[j];
    for (int n = 0; n < 16; ++n) lut[g * 16 + n] = static_cast<uint8_t>(b0 + (sub[n] >> 1));  // (sub even)
  }
}

int64_t prune_margin(const Geometry& geo, const uint8_t* lut, float prune) {
  int64_t sum = 0, var16 = 0, top = 0;  // var16: 256 x the variance of the low plane's sum
  for (int g = 0; g < 2 * geo.plane_bytes; ++g) {
    int64_t s = 0, s2 = 0, mx = 0;
    for (int n = 0; n < 16; ++n) {
      const int64_t e = lut[g * 16 + n];
      s += e;
      s2 += e * e;
      mx = e > mx ? e : mx;
    }
    sum += s;
    var16 += 16 * s2 - s * s;
    top += mx;
  }
  // E = sum / 16, sd = sqrt(var16) / 16
  const double m = (static_cast<double>(sum) + static_cast<double>(prune) * std::sqrt(static_cast<double>(var16))) / 16.0;
  const int64_t c = static_cast<int64_t>(std::ceil(m));
  return c < top ? c : top;
}

}  // namespace bebr
