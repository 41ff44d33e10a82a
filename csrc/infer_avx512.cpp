// AVX-512 float64 matrix-vector kernel of infer.h: one zmm = the 8 lanes of one (output, row)
// dot product; tiles of 4 outputs x 4 rows share each weight and input load. Per-file flags
// (CMakeLists.txt); called only after dispatch checked the CPU.
#include <immintrin.h>

#include "infer.h"

namespace bebr {
namespace infer {
namespace {

inline double reduce8(__m512d v) {
  alignas(64) double l[8];
  _mm512_store_pd(l, v);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

template <int OT, int RT>
inline void tile(const float* w, int64_t in, const double* x, double* y, int64_t out) {
  __m512d acc[OT][RT];
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) acc[o][r] = _mm512_setzero_pd();
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    __m512d xv[RT];
    for (int r = 0; r < RT; ++r) xv[r] = _mm512_loadu_pd(x + r * in + k);
    for (int o = 0; o < OT; ++o) {
      const __m512d wv = _mm512_cvtps_pd(_mm256_loadu_ps(w + o * in + k));
      for (int r = 0; r < RT; ++r) acc[o][r] = _mm512_fmadd_pd(wv, xv[r], acc[o][r]);
    }
  }
  if (k < in) {  // zero-padded tail: fma(0, 0, lane) leaves a lane unchanged
    const __mmask8 m = static_cast<__mmask8>((1u << (in - k)) - 1);
    __m512d xv[RT];
    for (int r = 0; r < RT; ++r) xv[r] = _mm512_maskz_loadu_pd(m, x + r * in + k);
    for (int o = 0; o < OT; ++o) {
      const __m512d wv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, w + o * in + k));
      for (int r = 0; r < RT; ++r) acc[o][r] = _mm512_fmadd_pd(wv, xv[r], acc[o][r]);
    }
  }
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) y[r * out + o] = reduce8(acc[o][r]);
}

template <int RT>
inline void rows(const float* w, int64_t out, int64_t in, const double* x, double* y) {
  int64_t i = 0;
  for (; i + 4 <= out; i += 4) tile<4, RT>(w + i * in, in, x, y + i, out);
  for (; i < out; ++i) tile<1, RT>(w + i * in, in, x, y + i, out);
}

void matvec_avx512(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) rows<4>(w, out, in, x + r * in, y + r * out);
  for (; r < n; ++r) rows<1>(w, out, in, x + r * in, y + r * out);
}

// float32: one zmm = 16 lanes of one (output, row) dot product, tiles of 4 x 4.
template <int OT, int RT>
inline void tile_f32(const float* w, int64_t in, const float* x, float* y, int64_t out) {
  __m512 acc[OT][RT];
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) acc[o][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= in; k += 16) {
    __m512 xv[RT];
    for (int r = 0; r < RT; ++r) xv[r] = _mm512_loadu_ps(x + r * in + k);
    for (int o = 0; o < OT; ++o) {
      const __m512 wv = _mm512_loadu_ps(w + o * in + k);
      for (int r = 0; r < RT; ++r) acc[o][r] = _mm512_fmadd_ps(wv, xv[r], acc[o][r]);
    }
  }
  if (k < in) {
    const __mmask16 m = static_cast<__mmask16>((1u << (in - k)) - 1);
    __m512 xv[RT];
    for (int r = 0; r < RT; ++r) xv[r] = _mm512_maskz_loadu_ps(m, x + r * in + k);
    for (int o = 0; o < OT; ++o) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w + o * in + k);
      for (int r = 0; r < RT; ++r) acc[o][r] = _mm512_fmadd_ps(wv, xv[r], acc[o][r]);
    }
  }
  for (int o = 0; o < OT; ++o)
    for (int r = 0; r < RT; ++r) y[r * out + o] = _mm512_reduce_add_ps(acc[o][r]);
}

template <int RT>
inline void rows_f32(const float* w, int64_t out, int64_t in, const float* x, float* y) {
  int64_t i = 0;
  for (; i + 4 <= out; i += 4) tile_f32<4, RT>(w + i * in, in, x, y + i, out);
  for (; i < out; ++i) tile_f32<1, RT>(w + i * in, in, x, y + i, out);
}

void matvec_f32_avx512(const float* w, int64_t out, int64_t in, const float* x, int64_t n, float* y) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) rows_f32<4>(w, out, in, x + r * in, y + r * out);
  for (; r < n; ++r) rows_f32<1>(w, out, in, x + r * in, y + r * out);
}

}  // namespace

const InferKernels& infer_kernels_avx512() {
  static const InferKernels k{"avx512", &matvec_avx512, &matvec_f32_avx512};
  return k;
}

}  // namespace infer
}  // namespace bebr
