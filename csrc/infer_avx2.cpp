// AVX2 kernels of infer.h. Float64 matrix-vector: two ymm = the 8 lanes (0-3, 4-7) of one
// (output, row) dot product; tiles of 2 outputs x 2 rows (4 outputs x 1 row for a single
// row: 8 independent chains). Float32 GEMM over packed panels: tiles of 6 rows x 16 outputs;
// sign tables: blocks of 8 outputs x 8 rows.
// Per-file flags (CMakeLists.txt); called only after dispatch checked the CPU.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "infer.h"

namespace bebr {
namespace infer {
namespace {

inline double reduce8(__m256d lo, __m256d hi) {
  alignas(32) double l[8];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(l + 4, hi);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

template <int OT, int RT>
inline void tile(const float* w, int64_t in, const double* x, double* y, int64_t out) {
  __m256d lo[OT][RT], hi[OT][RT];
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) lo[o][r] = hi[o][r] = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    for (int o = 0; o < OT; ++o) {
      const __m256d wl = _mm256_cvtps_pd(_mm_loadu_ps(w + o * in + k));
      const __m256d wh = _mm256_cvtps_pd(_mm_loadu_ps(w + o * in + k + 4));
      for (int r = 0; r < RT; ++r) {
        lo[o][r] = _mm256_fmadd_pd(wl, _mm256_loadu_pd(x + r * in + k), lo[o][r]);
        hi[o][r] = _mm256_fmadd_pd(wh, _mm256_loadu_pd(x + r * in + k + 4), hi[o][r]);
      }
    }
  }
  if (k < in) {  // zero-padded tail: fma(0, 0, lane) leaves a lane unchanged
    alignas(32) float wb[OT][8] = {};
    alignas(32) double xb[RT][8] = {};
    for (int64_t j = k; j < in; ++j) {
      for (int o = 0; o < OT; ++o) wb[o][j - k] = w[o * in + j];
      for (int r = 0; r < RT; ++r) xb[r][j - k] = x[r * in + j];
    }
    for (int o = 0; o < OT; ++o) {
      const __m256d wl = _mm256_cvtps_pd(_mm_load_ps(wb[o]));
      const __m256d wh = _mm256_cvtps_pd(_mm_load_ps(wb[o] + 4));
      for (int r = 0; r < RT; ++r) {
        lo[o][r] = _mm256_fmadd_pd(wl, _mm256_load_pd(xb[r]), lo[o][r]);
        hi[o][r] = _mm256_fmadd_pd(wh, _mm256_load_pd(xb[r] + 4), hi[o][r]);
      }
    }
  }
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) y[r * out + o] = reduce8(lo[o][r], hi[o][r]);
}

template <int RT>
inline void rows(const float* w, int64_t out, int64_t in, const double* x, double* y) {
  int64_t i = 0;
  if (RT == 1)
    for (; i + 4 <= out; i += 4) tile<4, RT>(w + i * in, in, x, y + i, out);
  for (; i + 2 <= out; i += 2) tile<2, RT>(w + i * in, in, x, y + i, out);
  for (; i < out; ++i) tile<1, RT>(w + i * in, in, x, y + i, out);
}

void matvec_avx2(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y) {
  int64_t r = 0;
  for (; r + 2 <= n; r += 2) rows<2>(w, out, in, x + r * in, y + r * out);
  for (; r < n; ++r) rows<1>(w, out, in, x + r * in, y + r * out);
}

// float32 GEMM over packed panels (infer.h): register tiles of MR rows x NV ymm (8 outputs
// each) of one panel; per k one or two weight loads and MR broadcasts feed MR * NV FMAs.
template <int MR, int NV>
inline void tile_f32(const float* pw, int64_t in, const float* x, float* y, int64_t out, int cols) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < in; ++k) {
    __m256 wv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) wv[v] = _mm256_load_ps(pw + k * kPanel + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * in + k);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(wv[v], xb, acc[r][v]);
    }
  }
  alignas(32) static const int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int c = cols - 8 * v;  // valid outputs of this ymm, 1..8
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - std::min(c, 8)));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      if (c >= 8)
        _mm256_storeu_ps(y + r * out + 8 * v, acc[r][v]);
      else
        _mm256_maskstore_ps(y + r * out + 8 * v, m, acc[r][v]);
    }
  }
}

template <int NV>
inline void panel_f32(const float* pw, int64_t in, const float* x, int64_t n, float* y, int64_t out, int cols) {
  constexpr int MR = 6;
  int64_t r = 0;
  for (; r + MR <= n; r += MR) tile_f32<MR, NV>(pw, in, x + r * in, y + r * out, out, cols);
  switch (n - r) {
    case 5: tile_f32<5, NV>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 4: tile_f32<4, NV>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 3: tile_f32<3, NV>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 2: tile_f32<2, NV>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 1: tile_f32<1, NV>(pw, in, x + r * in, y + r * out, out, cols); break;
    default: break;
  }
}

void gemm_f32_avx2(const PackedF32& w, const float* x, int64_t n, float* y) {
  const int64_t in = w.in, out = w.out;
  for (int64_t p = 0; p < w.panels(); ++p) {
    const float* pw = w.data.data() + p * in * kPanel;
    const int cols = static_cast<int>(std::min<int64_t>(kPanel, out - p * kPanel));
    if (cols > 8)
      panel_f32<2>(pw, in, x, n, y + p * kPanel, out, cols);
    else
      panel_f32<1>(pw, in, x, n, y + p * kPanel, out, cols);
  }
}

// Sign tables (infer.h): per block of 8 outputs, 8 rows at a time (one ymm accumulator
// each), one table entry per row and input group; the block's tables (and the rows' nibbles,
// 8 rows' side by side per group, as e * 4: the byte offset e * 32 is one scaled index) stay
// in L1.
void lut_f32_avx2(const SignLut& lut, const uint8_t* e, int64_t n, float scale, float* y) {
  const int64_t G = lut.groups, out = lut.out, n8 = (n + 7) / 8;
  const __m256 sc = _mm256_set1_ps(scale);
  alignas(32) static const int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<uint8_t> off(static_cast<size_t>(n8 * G * 8));
  for (int64_t r = 0; r < n8 * 8; ++r) {
    const uint8_t* er = e + std::min(r, n - 1) * G;  // (rows past n repeat the last one)
    for (int64_t g = 0; g < G; ++g) off[((r / 8) * G + g) * 8 + r % 8] = static_cast<uint8_t>(er[g] * 4);
  }
  for (int64_t b = 0; b < lut.blocks; ++b) {
    const int64_t cb = b * kLutBlock, w = std::min<int64_t>(kLutBlock, out - cb);
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - w));
    const float* tb = lut.entry(b, 0, 0);
    for (int64_t q = 0; q < n8; ++q) {
      __m256 acc[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
      const uint8_t* o = off.data() + q * G * 8;
      const char* tg = reinterpret_cast<const char*>(tb);
      for (int64_t g = 0; g < G; ++g, o += 8, tg += 16 * kLutBlock * sizeof(float)) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i)
          acc[i] = _mm256_add_ps(acc[i], _mm256_load_ps(reinterpret_cast<const float*>(tg + static_cast<size_t>(o[i]) * 8)));
      }
      const int rows = static_cast<int>(std::min<int64_t>(8, n - 8 * q));
      for (int i = 0; i < rows; ++i) {
        float* yr = y + (8 * q + i) * out + cb;
        if (w == kLutBlock)
          _mm256_storeu_ps(yr, _mm256_fmadd_ps(acc[i], sc, _mm256_loadu_ps(yr)));
        else
          _mm256_maskstore_ps(yr, m, _mm256_fmadd_ps(acc[i], sc, _mm256_maskload_ps(yr, m)));
      }
    }
  }
}

}  // namespace

const InferKernels& infer_kernels_avx2() {
  static const InferKernels k{"avx2", &matvec_avx2, &gemm_f32_avx2, &lut_f32_avx2, 1};
  return k;
}

}  // namespace infer
}  // namespace bebr
