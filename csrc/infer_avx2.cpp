// AVX2 float64 matrix-vector kernel of infer.h: two ymm = the 8 lanes (0-3, 4-7) of one
// (output, row) dot product; tiles of 2 outputs x 2 rows. Per-file flags (CMakeLists.txt);
// called only after dispatch checked the CPU.
#include <immintrin.h>

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
  for (; i + 2 <= out; i += 2) tile<2, RT>(w + i * in, in, x, y + i, out);
  for (; i < out; ++i) tile<1, RT>(w + i * in, in, x, y + i, out);
}

void matvec_avx2(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y) {
  int64_t r = 0;
  for (; r + 2 <= n; r += 2) rows<2>(w, out, in, x + r * in, y + r * out);
  for (; r < n; ++r) rows<1>(w, out, in, x + r * in, y + r * out);
}

// float32: one ymm = 8 lanes of one (output, row) dot product, tiles of 4 outputs x 2 rows.
inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

template <int OT, int RT>
inline void tile_f32(const float* w, int64_t in, const float* x, float* y, int64_t out) {
  __m256 acc[OT][RT];
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) acc[o][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    __m256 xv[RT];
    for (int r = 0; r < RT; ++r) xv[r] = _mm256_loadu_ps(x + r * in + k);
    for (int o = 0; o < OT; ++o) {
      const __m256 wv = _mm256_loadu_ps(w + o * in + k);
      for (int r = 0; r < RT; ++r) acc[o][r] = _mm256_fmadd_ps(wv, xv[r], acc[o][r]);
    }
  }
  if (k < in) {
    alignas(32) int32_t mk[8];
    for (int j = 0; j < 8; ++j) mk[j] = k + j < in ? -1 : 0;
    const __m256i m = _mm256_load_si256(reinterpret_cast<const __m256i*>(mk));
    __m256 xv[RT];
    for (int r = 0; r < RT; ++r) xv[r] = _mm256_maskload_ps(x + r * in + k, m);
    for (int o = 0; o < OT; ++o) {
      const __m256 wv = _mm256_maskload_ps(w + o * in + k, m);
      for (int r = 0; r < RT; ++r) acc[o][r] = _mm256_fmadd_ps(wv, xv[r], acc[o][r]);
    }
  }
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) y[r * out + o] = hsum8(acc[o][r]);
}

template <int RT>
inline void rows_f32(const float* w, int64_t out, int64_t in, const float* x, float* y) {
  int64_t i = 0;
  for (; i + 4 <= out; i += 4) tile_f32<4, RT>(w + i * in, in, x, y + i, out);
  for (; i < out; ++i) tile_f32<1, RT>(w + i * in, in, x, y + i, out);
}

void matvec_f32_avx2(const float* w, int64_t out, int64_t in, const float* x, int64_t n, float* y) {
  int64_t r = 0;
  for (; r + 2 <= n; r += 2) rows_f32<2>(w, out, in, x + r * in, y + r * out);
  for (; r < n; ++r) rows_f32<1>(w, out, in, x + r * in, y + r * out);
}

}  // namespace

const InferKernels& infer_kernels_avx2() {
  static const InferKernels k{"avx2", &matvec_avx2, &matvec_f32_avx2};
  return k;
}

}  // namespace infer
}  // namespace bebr
