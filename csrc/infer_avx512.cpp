// AVX-512 kernels of infer.h. Float64 matrix-vector: one zmm = the 8 lanes of one (output,
// row) dot product; tiles of 4 outputs x 4 rows share each weight and input load (8 outputs
// x 1 row for a single row: 8 independent chains). Float32 GEMM over packed panels: tiles of
// 8 rows x 32 outputs (two panels); sign tables: the AVX2 kernel. Per-file flags
// (CMakeLists.txt); called only after dispatch checked the CPU.
#include <immintrin.h>

#include <algorithm>

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
  if (RT == 1)  // (each output keeps its own accumulator: the same bits as the 4-output tile)
    for (; i + 8 <= out; i += 8) tile<8, RT>(w + i * in, in, x, y + i, out);
  for (; i + 4 <= out; i += 4) tile<4, RT>(w + i * in, in, x, y + i, out);
  for (; i < out; ++i) tile<1, RT>(w + i * in, in, x, y + i, out);
}

void matvec_avx512(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) rows<4>(w, out, in, x + r * in, y + r * out);
  for (; r < n; ++r) rows<1>(w, out, in, x + r * in, y + r * out);
}

// float32 GEMM over packed panels (infer.h): register tiles of MR rows x NP panels (one zmm
// of 16 outputs each); per k NP weight loads and MR broadcasts feed MR * NP FMAs.
template <int MR, int NP>
inline void tile_f32(const float* pw, int64_t in, const float* x, float* y, int64_t out, int cols) {
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = x + r * in;
  const int64_t pstride = in * kPanel;
  for (int64_t k = 0; k < in; ++k) {
    __m512 wv[NP];
    for (int v = 0; v < NP; ++v) wv[v] = _mm512_load_ps(pw + v * pstride + k * kPanel);
    for (int r = 0; r < MR; ++r) {
      const __m512 xb = _mm512_set1_ps(xr[r][k]);
      for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_fmadd_ps(wv[v], xb, acc[r][v]);
    }
  }
  for (int v = 0; v < NP; ++v) {
    const int c = cols - 16 * v;  // valid outputs of this zmm, 1..16
    const __mmask16 m = c >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << c) - 1);
    for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + r * out + 16 * v, m, acc[r][v]);
  }
}

template <int NP>
inline void panels_f32(const float* pw, int64_t in, const float* x, int64_t n, float* y, int64_t out, int cols) {
  constexpr int MR = 8;
  int64_t r = 0;
  for (; r + MR <= n; r += MR) tile_f32<MR, NP>(pw, in, x + r * in, y + r * out, out, cols);
  switch (n - r) {
    case 7: tile_f32<7, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 6: tile_f32<6, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 5: tile_f32<5, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 4: tile_f32<4, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 3: tile_f32<3, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 2: tile_f32<2, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    case 1: tile_f32<1, NP>(pw, in, x + r * in, y + r * out, out, cols); break;
    default: break;
  }
}

void gemm_f32_avx512(const PackedF32& w, const float* x, int64_t n, float* y) {
  const int64_t in = w.in, out = w.out, np = w.panels();
  for (int64_t p = 0; p < np;) {
    const float* pw = w.data.data() + p * in * kPanel;
    const int64_t left = out - p * kPanel;  // outputs from this panel on
    if (np - p >= 2) {
      panels_f32<2>(pw, in, x, n, y + p * kPanel, out, static_cast<int>(std::min<int64_t>(2 * kPanel, left)));
      p += 2;
    } else {
      panels_f32<1>(pw, in, x, n, y + p * kPanel, out, static_cast<int>(std::min<int64_t>(kPanel, left)));
      p += 1;
    }
  }
}

}  // namespace

const InferKernels& infer_kernels_avx512() {
  // Sign tables: the AVX2 kernel (its 8-lane table rows fill a ymm; wider registers gain
  // nothing there), but unused by the fast pass: this GEMM is faster than a table pass.
  static const InferKernels k{"avx512", &matvec_avx512, &gemm_f32_avx512, infer_kernels_avx2().lut_f32, 0};
  return k;
}

}  // namespace infer
}  // namespace bebr
