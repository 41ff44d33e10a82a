// ISA-independent helpers: query values, LUT construction, norms. Baseline flags only.
#include <cstring>

#include "kernels.h"

namespace bebr {

void scaled_values(const Geometry& geo, const uint8_t* packed, int32_t* out) {
  const int P = geo.plane_bytes;
  for (int j = 0; j < geo.dim; ++j) {
    int level = 0;
    for (int t = 0; t < geo.bits; ++t) level = (level << 1) | ((packed[t * P + j / 8] >> (j % 8)) & 1);
    out[j] = 2 * level - ((1 << geo.bits) - 1);
  }
}

int64_t sum_squares(const Geometry& geo, const uint8_t* packed) {
  const int P = geo.plane_bytes;
  int64_t s = 0;
  for (int j = 0; j < geo.dim; ++j) {
    int level = 0;
    for (int t = 0; t < geo.bits; ++t) level = (level << 1) | ((packed[t * P + j / 8] >> (j % 8)) & 1);
    const int64_t v = 2 * level - ((1 << geo.bits) - 1);
    s += v * v;
  }
  return s;
}

void build_query_lut(const Geometry& geo, const uint8_t* packed, uint8_t* lut) {
  const int groups = 2 * geo.plane_bytes;
  const int b0 = 4 * ((1 << geo.bits) - 1);
  int32_t qv[4];
  const int P = geo.plane_bytes;
  for (int g = 0; g < groups; ++g) {
    for (int j = 0; j < 4; ++j) {
      const int d = 4 * g + j;
      if (d >= geo.dim) {
        qv[j] = 0;
        continue;
      }
      int level = 0;
      for (int t = 0; t < geo.bits; ++t) level = (level << 1) | ((packed[t * P + d / 8] >> (d % 8)) & 1);
      qv[j] = 2 * level - ((1 << geo.bits) - 1);
    }
    for (int n = 0; n < 16; ++n) {
      int s = b0;
      for (int j = 0; j < 4; ++j) s += (n >> j & 1) ? qv[j] : -qv[j];
      lut[g * 16 + n] = static_cast<uint8_t>(s);
    }
  }
}

}  // namespace bebr
