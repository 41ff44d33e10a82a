// Inference of a trained Binarizer (layout and arithmetic: infer.h), baseline flags: the
// scalar kernels, level dispatch, weight packing, the float32 fast pass's element-wise steps
// and its per-pre-activation float64 fallback, and the element-wise steps of the float64
// path every SIMD level shares (compiled once, -ffp-contract=off, so they give the same bits
// at every level). Work items go to the process's HelperPool (thread_pool.h).
#include "infer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "dispatch.h"
#include "thread_pool.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bebr {
namespace infer {
namespace {

void matvec_scalar(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y) {
  for (int64_t r = 0; r < n; ++r) {
    const double* xr = x + r * in;
    for (int64_t i = 0; i < out; ++i) {
      const float* wi = w + i * in;
      double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 0; k < in; ++k) l[k & 7] = std::fma(static_cast<double>(wi[k]), xr[k], l[k & 7]);
      y[r * out + i] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    }
  }
}

void gemm_f32_scalar(const PackedF32& w, const float* x, int64_t n, float* y) {
  const int64_t in = w.in, out = w.out;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < out; ++i) {
      const float* pw = w.data.data() + (i / kPanel) * in * kPanel + i % kPanel;
      float acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += pw[k * kPanel] * x[r * in + k];
      y[r * out + i] = acc;
    }
}

void lut_f32_scalar(const SignLut& lut, const uint8_t* e, int64_t n, float scale, float* y) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < lut.out; ++i) {
      float acc = 0;
      for (int64_t g = 0; g < lut.groups; ++g) acc += lut.entry(i / kLutBlock, g, e[r * lut.groups + g])[i % kLutBlock];
      y[r * lut.out + i] += scale * acc;
    }
}

// Run fn(worker, begin, end) over [0, n) in items of `item` rows, handed out dynamically to
// the caller and up to threads - 1 helpers of the process's HelperPool (a helper that starts
// late, or never, only costs speed); worker in [0, threads) identifies the caller's scratch.
// Rethrows the first exception of any item once every claimed item is done.
template <class Fn>
void parallel_rows(int64_t n, int threads, int64_t item, Fn fn) {
  const int64_t nitems = (n + item - 1) / item;
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nitems)));
  parallel_items(nitems, T, [&](int t, int64_t i) { fn(t, i * item, std::min(n, (i + 1) * item)); });
}

constexpr int64_t kChunk = 48;  // rows per pass through the layers (the scratch stays in L2)

// Rows of x (n, d) divided by max(||row||, 1e-12) in place (torch.nn.functional.normalize).
void normalize_rows(double* x, int64_t n, int64_t d) {
  for (int64_t r = 0; r < n; ++r) {
    double* xr = x + r * d;
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += xr[j] * xr[j];
    const double nrm = std::max(std::sqrt(s), 1e-12);
    for (int64_t j = 0; j < d; ++j) xr[j] = xr[j] / nrm;
  }
}
// Sum of squares of p[0..d) in float64, four independent partial sums (the float32 pass).
double sum_sq(const float* p, int64_t d) {
  double a[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int l = 0; l < 4; ++l) a[l] += static_cast<double>(p[j + l]) * p[j + l];
  for (; j < d; ++j) a[0] += static_cast<double>(p[j]) * p[j];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// The float32 pass's version: the sum of squares in float64 (no overflow of a finite row).
void normalize_rows(float* x, int64_t n, int64_t d) {
  for (int64_t r = 0; r < n; ++r) {
    float* xr = x + r * d;
    const double nrm = std::max(std::sqrt(sum_sq(xr, d)), 1e-12);
    // (a division, as the float64 path: a row with one nonzero entry becomes exactly +-1)
    if (nrm < 1e30) {
      const float nf = static_cast<float>(nrm);
      for (int64_t j = 0; j < d; ++j) xr[j] = xr[j] / nf;
    } else {  // (past float32's range; inf/NaN stay non-finite)
      for (int64_t j = 0; j < d; ++j) xr[j] = static_cast<float>(xr[j] / nrm);
    }
  }
}

// BatchNorm1d (eval) then ReLU of the hidden rows h (n, b.h) in place, in T.
template <class T>
void bn_relu(const Block& b, T* h, int64_t n) {
  for (int64_t j = 0; j < b.h; ++j) {
    const T b1 = b.b1[j], mu = b.bn_mean[j], g = b.bn_w[j], be = b.bn_b[j];
    const T sd = static_cast<T>(std::sqrt(static_cast<double>(b.bn_var[j]) + b.eps));
    for (int64_t r = 0; r < n; ++r) {
      const T v = ((h[r * b.h + j] + b1) - mu) / sd * g + be;
      h[r * b.h + j] = v > 0 ? v : T(0);
    }
  }
}

// The float64 forward of m: rows x (n, m.a) -> y (n, m.c).
void mlp_forward_f64(const Mlp& m, const double* x, int64_t n, double* y) {
  const MatvecFn mv = active_infer_kernels().matvec;
  mv(m.skip.data(), m.c, m.a, x, n, y);
  std::vector<double> h, z;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const Block& b = m.blocks[i];
    const double* in = i == 0 ? x : y;
    h.resize(n * b.h);
    z.resize(n * b.c);
    mv(b.w1.data(), b.h, b.a, in, n, h.data());
    bn_relu(b, h.data(), n);
    mv(b.w2.data(), b.c, b.h, h.data(), n, z.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < b.c; ++j) y[r * b.c + j] = y[r * b.c + j] + (z[r * b.c + j] + static_cast<double>(b.b2[j]));
  }
}

// Outputs idx[0..ni) of the float64 forward of m on one row x: the same bits as those
// entries of mlp_forward_f64 (each output's dot products are computed alone, in the same
// lane order); with two or more blocks (whose inputs are the whole output) the full forward.
void mlp_outputs_f64(const Mlp& m, const double* x, const int32_t* idx, int64_t ni, double* out) {
  const MatvecFn mv = active_infer_kernels().matvec;
  if (m.blocks.size() >= 2) {
    std::vector<double> y(m.c);
    mlp_forward_f64(m, x, 1, y.data());
    for (int64_t i = 0; i < ni; ++i) out[i] = y[idx[i]];
    return;
  }
  std::vector<double> h;
  if (!m.blocks.empty()) {
    const Block& b = m.blocks[0];
    h.resize(b.h);
    mv(b.w1.data(), b.h, b.a, x, 1, h.data());
    bn_relu(b, h.data(), 1);
  }
  for (int64_t i = 0; i < ni; ++i) {
    const int64_t j = idx[i];
    double y;
    mv(m.skip.data() + j * m.a, 1, m.a, x, 1, &y);
    if (!m.blocks.empty()) {
      const Block& b = m.blocks[0];
      double z;
      mv(b.w2.data() + j * b.h, 1, b.h, h.data(), 1, &z);
      y = y + (z + static_cast<double>(b.b2[j]));
    }
    out[i] = y;
  }
}

// Scratch of one worker's float32 pass (reused across its items).
struct FastScratch {
  std::vector<float> xin, xn, pre, c, xh, h, z;
  std::vector<uint8_t> nib[kMaxBits];  // sign nibbles of each step's pre-activations
  std::vector<double> x64, xn64, xh64, c64, vals;
  std::vector<int32_t> idx;
  std::vector<uint8_t> touched;  // rows with a pre-activation evaluated in float64
  std::vector<uint8_t> near;     // rows whose residual of this step is nearly 0
};

// The float32 forward of m over packed weights: rows x (n, m.a) -> y (n, m.c).
void mlp_forward_f32(const Mlp& m, const float* x, int64_t n, float* y, FastScratch& s) {
  const GemmF32Fn gemm = active_infer_kernels().gemm_f32;
  gemm(m.skip_p, x, n, y);
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const Block& b = m.blocks[i];
    const float* in = i == 0 ? x : y;
    s.h.resize(n * b.h);
    s.z.resize(n * b.c);
    gemm(b.w1_p, in, n, s.h.data());
    bn_relu(b, s.h.data(), n);
    gemm(b.w2_p, s.h.data(), n, s.z.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < b.c; ++j) y[r * b.c + j] += s.z[r * b.c + j] + b.b2[j];
  }
}

// Levels of rows x (nb, D), evaluated in float64 (the definition of the codes).
void levels_rows_f64(const Model& model, const float* x, int64_t nb, uint8_t* lv) {
  const int64_t D = model.in_dim, d = model.dim;
  const int bits = model.bits;
  std::vector<double> xin(nb * D), xn, pre(nb * d), c(nb * d), xh;
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t j = 0; j < D; ++j)
      xin[r * D + j] = static_cast<double>(x[r * D + j]) - static_cast<double>(model.in_mean[j]);
  mlp_forward_f64(model.W, xin.data(), nb, pre.data());
  for (int64_t i = 0; i < nb * d; ++i) {
    const bool pos = pre[i] >= 0;
    c[i] = pos ? 1.0 : -1.0;
    lv[i] = static_cast<uint8_t>(pos ? 1u << (bits - 1) : 0u);
  }
  if (bits == 1) return;
  xn = xin;
  normalize_rows(xn.data(), nb, D);
  xh.resize(nb * D);
  for (int t = 1; t < bits; ++t) {
    mlp_forward_f64(model.B[t - 1], c.data(), nb, xh.data());
    normalize_rows(xh.data(), nb, D);
    for (int64_t i = 0; i < nb * D; ++i) xh[i] = xn[i] - xh[i];
    mlp_forward_f64(model.R[t - 1], xh.data(), nb, pre.data());
    const double step = std::ldexp(1.0, -t);
    for (int64_t i = 0; i < nb * d; ++i) {
      const bool pos = pre[i] >= 0;
      c[i] = c[i] + (pos ? step : -step);
      if (pos) lv[i] = static_cast<uint8_t>(lv[i] | (1u << (bits - 1 - t)));
    }
  }
}

// Step t's pre-activations idx[0..ni) of one row in float64, as levels_rows_f64 computes
// them: from the row's input xr and its code values c (d) after steps < t.
void fix_step_f64(const Model& model, const float* xr, int t, const float* c, const int32_t* idx, int64_t ni,
                  FastScratch& s) {
  const int64_t D = model.in_dim, d = model.dim;
  s.x64.resize(D);
  for (int64_t j = 0; j < D; ++j) s.x64[j] = static_cast<double>(xr[j]) - static_cast<double>(model.in_mean[j]);
  s.vals.resize(ni);
  if (t == 0) {
    mlp_outputs_f64(model.W, s.x64.data(), idx, ni, s.vals.data());
    return;
  }
  normalize_rows(s.x64.data(), 1, D);
  s.c64.assign(c, c + d);
  s.xh64.resize(D);
  mlp_forward_f64(model.B[t - 1], s.c64.data(), 1, s.xh64.data());
  normalize_rows(s.xh64.data(), 1, D);
  for (int64_t j = 0; j < D; ++j) s.xh64[j] = s.x64[j] - s.xh64[j];
  mlp_outputs_f64(model.R[t - 1], s.xh64.data(), idx, ni, s.vals.data());
}

// Bit j of out[j / 8] (j < d) = p[j] >= 0 (-0 counts as >= 0); (d + 7) / 8 bytes.
void sign_bits(const float* p, int64_t d, uint8_t* out) {
  int64_t j = 0;
#if defined(__SSE2__)
  const __m128 zero = _mm_setzero_ps();
  for (; j + 8 <= d; j += 8)
    out[j >> 3] = static_cast<uint8_t>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(p + j), zero)) |
                                       (_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(p + j + 4), zero)) << 4));
#endif
  if (j < d) {
    unsigned byte = 0;
    for (int64_t i = j; i < d; ++i) byte |= static_cast<unsigned>(p[i] >= 0) << (i & 7);
    out[j >> 3] = static_cast<uint8_t>(byte);
  }
}

// Packed codes (nb, bits * ceil(d / 8)) of rows x (nb, D) by the float32 pass, and with
// lv != nullptr their levels: after each step, the pre-activations closer to 0 than
// margin * RMS of their row's step are replaced by their float64 values (fix_step_f64)
// before the signs are taken. Returns the rows with any such pre-activation.
int64_t codes_rows_fast(const Model& model, const float* x, int64_t nb, uint8_t* codes, uint8_t* lv, double margin,
                        FastScratch& s) {
  const int64_t D = model.in_dim, d = model.dim, pb = (d + 7) / 8, G = (d + 3) / 4;
  const int bits = model.bits;
  const int64_t cb = bits * pb;
  s.xin.resize(nb * D);
  s.pre.resize(nb * d);
  s.c.resize(nb * d);
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t j = 0; j < D; ++j) s.xin[r * D + j] = x[r * D + j] - model.in_mean[j];
  s.touched.assign(nb, 0);
  const InferKernels& kern = active_infer_kernels();
  // steps 1 .. lut_steps by the sign tables (step t costs t table passes, one GEMM otherwise)
  int lut_steps = std::min(bits - 1, kern.lut_steps);
  for (const Mlp& m : model.B)
    if (m.skip_lut.data.empty()) lut_steps = 0;
  // flag, fix and take the signs of step t (pre-activations in s.pre): plane t of the
  // codes, c += +-2^-t, and for the next B's tables the signs as nibbles
  auto take = [&](int t) {
    if (t < lut_steps) s.nib[t].resize(nb * G);
    for (int64_t r = 0; r < nb; ++r) {
      float* p = s.pre.data() + r * d;
      // |pre| <= th (0 included) or a non-finite step: that pre-activation in float64
      // (thf >= th: a float32 |pre| > thf is > th)
      const double th = margin * std::sqrt(sum_sq(p, d) / static_cast<double>(d));
      const bool all = !(th < 1e30) || (t > 0 && s.near[r]);
      const float thf = all ? 0.f : std::nextafter(static_cast<float>(th), 1e30f);
      int any = 0;
      for (int64_t j = 0; j < d; ++j) any |= !(std::fabs(p[j]) > thf);
      if (any || all) {
        s.idx.clear();
        for (int64_t j = 0; j < d; ++j)
          if (all || !(std::fabs(p[j]) > thf)) s.idx.push_back(static_cast<int32_t>(j));
        s.touched[r] = 1;
        fix_step_f64(model, x + r * D, t, s.c.data() + r * d, s.idx.data(), static_cast<int64_t>(s.idx.size()), s);
        for (size_t i = 0; i < s.idx.size(); ++i) p[s.idx[i]] = s.vals[i] >= 0 ? 0.f : -1.f;
      }
      uint8_t* plane = codes + r * cb + t * pb;
      sign_bits(p, d, plane);
      if (t < lut_steps) {
        uint8_t* e = s.nib[t].data() + r * G;
        for (int64_t g = 0; g < G; ++g) e[g] = static_cast<uint8_t>((plane[g >> 1] >> ((g & 1) * 4)) & 15);
      }
    }
    const float step = std::ldexp(1.f, -t);
    if (t == 0)
      for (int64_t i = 0; i < nb * d; ++i) s.c[i] = s.pre[i] >= 0 ? 1.f : -1.f;
    else
      for (int64_t i = 0; i < nb * d; ++i) s.c[i] += s.pre[i] >= 0 ? step : -step;
  };
  mlp_forward_f32(model.W, s.xin.data(), nb, s.pre.data(), s);
  take(0);
  if (bits > 1) {
    s.xn = s.xin;
    normalize_rows(s.xn.data(), nb, D);
    s.xh.resize(nb * D);
    for (int t = 1; t < bits; ++t) {
      if (t <= lut_steps) {  // B c = sum_{u < t} 2^-u (B sign_u)
        std::fill(s.xh.begin(), s.xh.end(), 0.f);
        for (int u = 0; u < t; ++u)
          kern.lut_f32(model.B[t - 1].skip_lut, s.nib[u].data(), nb, std::ldexp(1.f, -u), s.xh.data());
      } else {
        mlp_forward_f32(model.B[t - 1], s.c.data(), nb, s.xh.data(), s);
      }
      normalize_rows(s.xh.data(), nb, D);
      for (int64_t i = 0; i < nb * D; ++i) s.xh[i] = s.xn[i] - s.xh[i];
      // A residual of two unit vectors shorter than 1/100 (or not finite) has float32
      // rounding errors that are large relative to itself: its row's step in float64.
      s.near.resize(nb);
      for (int64_t r = 0; r < nb; ++r) s.near[r] = !(sum_sq(s.xh.data() + r * D, D) >= 1e-4);
      mlp_forward_f32(model.R[t - 1], s.xh.data(), nb, s.pre.data(), s);
      take(t);
    }
  }
  if (lv) {
    // c = sum_t (2 b_t - 1) 2^-t (exact), level = sum_t b_t 2^(bits-1-t) = (c + 2 - 2^(1-bits)) 2^(bits-2)
    const float off = 2.f - std::ldexp(1.f, 1 - bits), sc = std::ldexp(1.f, bits - 2);
    for (int64_t i = 0; i < nb * d; ++i) lv[i] = static_cast<uint8_t>(static_cast<int>((s.c[i] + off) * sc));
  }
  int64_t rows = 0;
  for (uint8_t f : s.touched) rows += f;
  return rows;
}

void check_vec(const std::vector<float>& v, int64_t n, const std::string& what) {
  if (static_cast<int64_t>(v.size()) != n)
    throw std::invalid_argument(what + " has " + std::to_string(v.size()) + " values, expected " + std::to_string(n));
}

void check_mlp(const Mlp& m, int64_t a, int64_t c, const std::string& what) {
  if (m.a != a || m.c != c)
    throw std::invalid_argument(what + " maps " + std::to_string(m.a) + " -> " + std::to_string(m.c) + ", expected " +
                                std::to_string(a) + " -> " + std::to_string(c));
  check_vec(m.skip, a * c, what + ".skip");
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const Block& b = m.blocks[i];
    const std::string w = what + ".blocks." + std::to_string(i);
    const int64_t bin = i == 0 ? a : c;
    if (b.a != bin || b.c != c || b.h < 1)
      throw std::invalid_argument(w + " has inconsistent shapes");
    check_vec(b.w1, b.h * bin, w + ".fc1.weight");
    check_vec(b.b1, b.h, w + ".fc1.bias");
    check_vec(b.bn_mean, b.h, w + ".bn.running_mean");
    check_vec(b.bn_var, b.h, w + ".bn.running_var");
    check_vec(b.bn_w, b.h, w + ".bn.weight");
    check_vec(b.bn_b, b.h, w + ".bn.bias");
    check_vec(b.w2, c * b.h, w + ".fc2.weight");
    check_vec(b.b2, c, w + ".fc2.bias");
    if (!(b.eps > 0)) throw std::invalid_argument(w + ".bn eps must be > 0");
  }
}

// One query row: levels of the code of max cosine with v (CodeSpec.quantize_angle, exact).
// Events (dimension j, magnitude step m in 1..K) at the scales f = m / |v_j| are taken in
// (f, j * K + m - 1) order, the order of numpy's stable argsort in the reference; a prefix
// scores crit = (S + 2 sum A_j) / sqrt(dim + 8 sum m) over its events, exact int64 sums with
// A_j = |v_j| in units of 2^-32 max|v|, and the first maximum wins. The events are first
// bucketed by the bits of f (16 buckets per octave, 64 for K > 7); a bucket is sorted and swept event by
// event only if the bound (S + 2 (cs + its A)) / sqrt(dim + 8 (cn + 1)) of any prefix ending
// in it reaches the best value at a bucket boundary, else it is taken or left whole.
struct Quantizer {
  static constexpr int kBuckets = 4096;
  std::vector<double> a, ef;
  std::vector<int64_t> A, bsum_a, bsum_m;
  std::vector<int32_t> ej, em, eb, cnt, start, sorted, m, first;
  std::vector<uint8_t> need;

  void row(const double* v, int64_t dim, int bits, uint8_t* out) {
    const int half = 1 << (bits - 1);
    if (half == 1) {
      for (int64_t j = 0; j < dim; ++j) out[j] = v[j] >= 0 ? 1 : 0;
      return;
    }
    const int K = half - 1;
    const int kShift = K > 7 ? 46 : 48;  // 2^(52 - kShift) buckets per octave of f
    a.resize(dim);
    A.resize(dim);
    double amax = 0, amin = std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < dim; ++j) {
      a[j] = std::fabs(v[j]);
      amax = std::max(amax, a[j]);
      if (a[j] > 0) amin = std::min(amin, a[j]);
    }
    m.assign(dim, 0);
    if (!(amax > 0)) {
      for (int64_t j = 0; j < dim; ++j) out[j] = static_cast<uint8_t>(v[j] >= 0 ? half : half - 1);
      return;
    }
    const double scale = 4294967296.0 / amax;
    int64_t S = 0;
    for (int64_t j = 0; j < dim; ++j) {
      A[j] = static_cast<int64_t>(std::floor(a[j] * scale + 0.5));
      S += A[j];
    }
    // the range of the scales: 1 / amax .. the largest finite m / a_j (K / amin unless inf)
    uint64_t key_min, key_max;
    const double fmin = 1.0 / amax;
    std::memcpy(&key_min, &fmin, 8);
    {
      double fmax = static_cast<double>(K) / amin;
      for (int mm = K - 1; std::isinf(fmax) && mm >= 1; --mm) fmax = static_cast<double>(mm) / amin;
      if (std::isinf(fmax)) {  // then every step of amin is inf: the largest finite scale elsewhere
        fmax = fmin;
        for (int64_t j = 0; j < dim; ++j)
          for (int mm = K; mm >= 1 && a[j] > 0; --mm) {
            const double f = static_cast<double>(mm) / a[j];
            if (!std::isinf(f)) {
              fmax = std::max(fmax, f);
              break;
            }
          }
      }
      std::memcpy(&key_max, &fmax, 8);
    }
    const int nb = static_cast<int>(std::min<uint64_t>(kBuckets, ((key_max - key_min) >> kShift) + 1));
    cnt.assign(nb, 0);
    bsum_a.assign(nb, 0);
    bsum_m.assign(nb, 0);
    // the events in generation (= index) order, each put in its bucket of scales
    const size_t cap = static_cast<size_t>(K) * dim;
    ef.resize(cap);
    ej.resize(cap);
    em.resize(cap);
    eb.resize(cap);
    first.resize(dim + 1);
    size_t E = 0;
    for (int64_t j = 0; j < dim; ++j) {
      first[j] = static_cast<int32_t>(E);
      if (!(a[j] > 0)) continue;
      const double aj = a[j];
      const int64_t Aj = A[j];
      for (int mm = 1; mm <= K; ++mm) {
        const double f = static_cast<double>(mm) / aj;
        if (std::isinf(f)) break;  // never taken (and larger m is inf too)
        uint64_t key;
        std::memcpy(&key, &f, 8);
        const uint64_t bk = (key - key_min) >> kShift;
        const int32_t bb = bk < static_cast<uint64_t>(nb) ? static_cast<int32_t>(bk) : nb - 1;
        ef[E] = f;
        ej[E] = static_cast<int32_t>(j);
        em[E] = mm;
        eb[E] = bb;
        ++cnt[bb];
        bsum_a[bb] += Aj;
        bsum_m[bb] += mm;
        ++E;
      }
    }
    first[dim] = static_cast<int32_t>(E);
    auto crit_of = [&](int64_t cs, int64_t cn) {
      return static_cast<double>(S + 2 * cs) / std::sqrt(static_cast<double>(dim + 8 * cn));
    };
    // best value at a bucket boundary: a lower bound of the maximum
    const double crit0 = static_cast<double>(S) / std::sqrt(static_cast<double>(dim));
    double lb = crit0;
    {
      int64_t cs = 0, cn = 0;
      for (int b = 0; b < nb; ++b) {
        if (!cnt[b]) continue;
        cs += bsum_a[b];
        cn += bsum_m[b];
        lb = std::max(lb, crit_of(cs, cn));
      }
    }
    // Bound of any prefix ending inside bucket b (starting at sums cs, cn): an event of
    // step m there has f >= g (the bucket's lowest scale), so A_j <= m * scale / g + 1/2;
    // with t = the steps taken in the bucket, crit <= (P + 2 c t) / sqrt(Q + 8 t), P, Q the
    // start's sums, c = scale / g + 1/2, t in [1, its step sum]: maximal at an end or at
    // t* = (4P - 2cQ) / (8c). Evaluated with a relative slack of 1e-9 for rounding.
    auto bound = [&](int b, int64_t cs, int64_t cn) {
      uint64_t gk = key_min + (static_cast<uint64_t>(b) << kShift);
      double g;
      std::memcpy(&g, &gk, 8);
      const double c = scale / g + 0.5;
      const double P = static_cast<double>(S + 2 * cs), Q = static_cast<double>(dim + 8 * cn);
      const double M = static_cast<double>(bsum_m[b]);
      auto at = [&](double t) { return (P + 2 * c * t) / std::sqrt(Q + 8 * t); };
      double u = std::max(at(1.0), at(M));
      const double ts = (4 * P - 2 * c * Q) / (8 * c);
      if (ts > 1.0 && ts < M) u = std::max(u, at(ts));
      return u * (1 + 1e-9);
    };
    // the buckets whose prefixes may reach lb (swept event by event); the sums at a
    // bucket's start do not depend on the order inside the buckets before it
    need.assign(nb, 0);
    start.assign(nb + 1, 0);
    {
      const double lb2 = lb * lb;
      int64_t cs = 0, cn = 0;
      for (int b = 0; b < nb; ++b) {
        if (cnt[b]) {
          // (P + 2 c t) / sqrt(Q + 8 t) <= (P + 2 c M) / sqrt(Q): no sqrt for most buckets
          uint64_t gk = key_min + (static_cast<uint64_t>(b) << kShift);
          double g;
          std::memcpy(&g, &gk, 8);
          const double hi = static_cast<double>(S + 2 * cs) + 2 * (scale / g + 0.5) * static_cast<double>(bsum_m[b]);
          if (hi * hi * (1 + 1e-8) >= lb2 * static_cast<double>(dim + 8 * cn) && bound(b, cs, cn) >= lb) need[b] = 1;
        }
        cs += bsum_a[b];
        cn += bsum_m[b];
        start[b + 1] = start[b] + (need[b] ? cnt[b] : 0);
      }
    }
    // the events of the swept buckets, bucket by bucket in index order (the others are
    // written to one spare slot past the end)
    sorted.resize(start[nb] + 1);
    cursor.resize(nb);
    for (int b = 0; b < nb; ++b) cursor[b] = need[b] ? start[b] : start[nb];
    for (size_t e = 0; e < E; ++e) {
      const int32_t b = eb[e];
      sorted[cursor[b]] = static_cast<int32_t>(e);
      cursor[b] += need[b];
    }
    double best = crit0, best2 = best * best * (1 - 1e-9);
    int best_b = -1;
    int64_t best_i = 0, cs = 0, cn = 0;
    for (int b = 0; b < nb; ++b) {
      if (!cnt[b]) continue;
      if (need[b]) {
        int32_t* fs = sorted.data() + start[b];
        // (f, index) order; index order = (j, m) order, the order of fs
        const int32_t nc = cnt[b];
        if (nc <= 32) {
          // a small bucket (the usual one) ranked by counting, free of the branch
          // mispredictions of a sort over its events' random order of f
          fb.resize(nc);
          rank.resize(nc);
          for (int32_t i = 0; i < nc; ++i) fb[i] = ef[fs[i]];
          for (int32_t i = 0; i < nc; ++i) {
            const double fi = fb[i];
            int32_t r = 0;  // events before i in (f, index) order
            for (int32_t k = 0; k < i; ++k) r += fb[k] <= fi;
            for (int32_t k = i + 1; k < nc; ++k) r += fb[k] < fi;
            rank[r] = fs[i];
          }
          std::copy(rank.begin(), rank.end(), fs);
        } else {
          pairs.resize(nc);
          for (int32_t i = 0; i < nc; ++i) pairs[i] = {ef[fs[i]], fs[i]};
          std::sort(pairs.begin(), pairs.end());
          for (int32_t i = 0; i < nc; ++i) fs[i] = pairs[i].second;
        }
        for (int32_t i = 0; i < cnt[b]; ++i) {
          cs += A[ej[fs[i]]];
          cn += em[fs[i]];
          // crit > best needs num^2 >= best^2 den (checked with a relative slack of 1e-9
          // for rounding): the exact crit (a sqrt and a division) only for those prefixes
          const double num = static_cast<double>(S + 2 * cs), den = static_cast<double>(dim + 8 * cn);
          if (num * num < best2 * den) continue;
          const double c = crit_of(cs, cn);
          if (c > best) {
            best = c;
            best2 = best * best * (1 - 1e-9);
            best_b = b;
            best_i = i + 1;
          }
        }
      } else {
        cs += bsum_a[b];
        cn += bsum_m[b];
        const double num = static_cast<double>(S + 2 * cs), den = static_cast<double>(dim + 8 * cn);
        if (num * num < best2 * den) continue;  // (as above)
        const double c = crit_of(cs, cn);
        if (c > best) {
          best = c;
          best2 = best * best * (1 - 1e-9);
          best_b = b;
          best_i = cnt[b];
        }
      }
    }
    if (best_b >= 0) {
      // the events taken: every event of a bucket before best_b, and best_b's first best_i
      // (all of it when it was not swept)
      for (int64_t j = 0; j < dim; ++j) {
        int32_t c = 0;
        for (int32_t e = first[j]; e < first[j + 1]; ++e) c += eb[e] < best_b;
        m[j] = c;
      }
      if (need[best_b]) {
        const int32_t* fs = sorted.data() + start[best_b];
        for (int64_t i = 0; i < best_i; ++i) ++m[ej[fs[i]]];
      } else {
        for (size_t e = 0; e < E; ++e) m[ej[e]] += eb[e] == best_b;
      }
    }
    for (int64_t j = 0; j < dim; ++j) {
      const int neg = v[j] < 0;  // (branch-free: random signs)
      out[j] = static_cast<uint8_t>(half + m[j] - neg * (2 * m[j] + 1));
    }
  }

  std::vector<int32_t> cursor, rank;
  std::vector<double> fb;
  std::vector<std::pair<double, int32_t>> pairs;
};

void pack_row(const uint8_t* lv, int64_t dim, int bits, uint8_t* out) {
  const int64_t pb = (dim + 7) / 8;
  std::memset(out, 0, static_cast<size_t>(pb * bits));
  int64_t j0 = 0;
#if defined(__SSE2__)
  // 16 levels at a time: shifted left by 7 - sh (as 16-bit words: each byte's top bit is
  // then its own bit sh), the byte sign mask is bit sh of the 16 levels
  for (; j0 + 16 <= dim; j0 += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lv + j0));
    for (int t = 0; t < bits; ++t) {
      const int mask = _mm_movemask_epi8(_mm_sll_epi16(v, _mm_cvtsi32_si128(t - bits + 8)));
      uint8_t* p = out + t * pb + (j0 >> 3);
      p[0] = static_cast<uint8_t>(mask);
      p[1] = static_cast<uint8_t>(mask >> 8);
    }
  }
#endif
  for (int t = 0; t < bits; ++t) {
    uint8_t* plane = out + t * pb;
    const int sh = bits - 1 - t;
    for (int64_t j = j0; j < dim; ++j) plane[j >> 3] |= static_cast<uint8_t>(((lv[j] >> sh) & 1) << (j & 7));
  }
}

// z (n, dim): the query projection (head < 0) or head's direction of float rows x.
void query_rows(const Model& model, int head, const float* x, int64_t n, double* z) {
  const int64_t D = model.in_dim, d = model.dim;
  thread_local std::vector<double> xin;
  xin.resize(n * D);
  if (head < 0) {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < D; ++j)
        xin[r * D + j] = static_cast<double>(x[r * D + j]) - static_cast<double>(model.in_mean[j]);
    mlp_forward_f64(model.W, xin.data(), n, z);
    return;
  }
  const Head& h = model.heads[head];
  for (int64_t i = 0; i < n * D; ++i) xin[i] = x[i];
  normalize_rows(xin.data(), n, D);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < D; ++j) xin[r * D + j] = xin[r * D + j] - static_cast<double>(h.mean[j]);
  if (h.nets.size() == 1) {
    mlp_forward_f64(h.nets[0], xin.data(), n, z);
    return;
  }
  std::vector<double> y(n * d);
  std::fill(z, z + n * d, 0.0);
  for (const Mlp& net : h.nets) {
    mlp_forward_f64(net, xin.data(), n, y.data());
    normalize_rows(y.data(), n, d);
    for (int64_t i = 0; i < n * d; ++i) z[i] = z[i] + y[i];
  }
  const double K = static_cast<double>(h.nets.size());
  for (int64_t i = 0; i < n * d; ++i) z[i] = z[i] / K;
}

void check_head(const Model& model, int head) {
  if (head >= static_cast<int>(model.heads.size()))
    throw std::out_of_range("head " + std::to_string(head) + " out of range (the model has " +
                            std::to_string(model.heads.size()) + ")");
}

}  // namespace

const InferKernels& infer_kernels_scalar() {
  static const InferKernels k{"scalar", &matvec_scalar, &gemm_f32_scalar, &lut_f32_scalar, kMaxBits};
  return k;
}

const InferKernels& active_infer_kernels() {
  const std::string level = simd_level_name();
#ifdef BEBR_HAVE_AVX512
  if (level == "avx512" || level == "amx") return infer_kernels_avx512();
#endif
#ifdef BEBR_HAVE_AVX2
  if (level == "avx2") return infer_kernels_avx2();
#endif
  return infer_kernels_scalar();
}

void Model::validate() const {
  if (in_dim < 1 || dim < 1 || bits < 1 || bits > 4) throw std::invalid_argument("bad model sizes");
  check_vec(in_mean, in_dim, "in_mean");
  check_mlp(W, in_dim, dim, "W");
  if (static_cast<int>(B.size()) != bits - 1 || static_cast<int>(R.size()) != bits - 1)
    throw std::invalid_argument("the model needs bits - 1 = " + std::to_string(bits - 1) + " B and R stages");
  for (int t = 0; t + 1 < bits; ++t) {
    check_mlp(B[t], dim, in_dim, "B." + std::to_string(t));
    check_mlp(R[t], in_dim, dim, "R." + std::to_string(t));
  }
  for (size_t i = 0; i < heads.size(); ++i) {
    check_vec(heads[i].mean, in_dim, "cross." + std::to_string(i) + ".mean");
    if (heads[i].nets.empty()) throw std::invalid_argument("cross." + std::to_string(i) + " has no members");
    for (size_t k = 0; k < heads[i].nets.size(); ++k)
      check_mlp(heads[i].nets[k], in_dim, dim, "cross." + std::to_string(i) + ".nets." + std::to_string(k));
  }
}

PackedF32 pack_f32(const std::vector<float>& w, int64_t out, int64_t in) {
  PackedF32 p;
  p.out = out;
  p.in = in;
  p.data.assign(static_cast<size_t>(p.panels() * in * kPanel), 0.f);
  for (int64_t i = 0; i < out; ++i)
    for (int64_t k = 0; k < in; ++k) p.data[(i / kPanel) * in * kPanel + k * kPanel + i % kPanel] = w[i * in + k];
  return p;
}

SignLut sign_lut(const std::vector<float>& w, int64_t out, int64_t in) {
  SignLut t;
  t.out = out;
  t.in = in;
  t.groups = (in + 3) / 4;
  t.blocks = (out + kLutBlock - 1) / kLutBlock;
  t.data.assign(static_cast<size_t>(t.blocks * t.groups * 16 * kLutBlock), 0.f);
  for (int64_t b = 0; b < t.blocks; ++b)
    for (int64_t g = 0; g < t.groups; ++g)
      for (int e = 0; e < 16; ++e) {
        float* row = const_cast<float*>(t.entry(b, g, e));
        for (int64_t i = 0; i < kLutBlock && b * kLutBlock + i < out; ++i) {
          float acc = 0;
          for (int l = 0; l < 4 && 4 * g + l < in; ++l) {
            const float v = w[(b * kLutBlock + i) * in + 4 * g + l];
            acc += (e >> l) & 1 ? v : -v;
          }
          row[i] = acc;
        }
      }
  return t;
}

namespace {
constexpr int64_t kMaxLutBytes = int64_t(16) << 20;  // tables only for B stages up to 16 MiB

void pack_mlp(Mlp& m) {
  m.skip_p = pack_f32(m.skip, m.c, m.a);
  for (Block& b : m.blocks) {
    b.w1_p = pack_f32(b.w1, b.h, b.a);
    b.w2_p = pack_f32(b.w2, b.c, b.h);
  }
}

// Levels of x (n, D) into `levels` (n, d) and/or packed codes into `codes`, by chunks of
// kChunk rows over `threads` workers. Returns codes_rows_fast's row count.
int64_t encode_rows(const Model& model, const float* x, int64_t n, uint8_t* levels, uint8_t* codes, int threads,
                    double margin) {
  const int64_t D = model.in_dim, d = model.dim, cb = model.bits * ((d + 7) / 8);
  if (margin > 0 && !model.prepared) throw std::logic_error("encode_levels: the model is not prepared");
  std::atomic<int64_t> redone{0};
  const int T = std::max(1, threads);
  std::vector<FastScratch> scratch(T);
  std::vector<std::vector<uint8_t>> buf(T);
  parallel_rows(n, T, kChunk, [&](int t, int64_t s, int64_t e) {
    const int64_t nb = e - s;
    uint8_t* lv = levels ? levels + s * d : nullptr;
    if (margin > 0) {
      uint8_t* cp = codes ? codes + s * cb : nullptr;
      if (!cp) {
        buf[t].resize(nb * cb);
        cp = buf[t].data();
      }
      redone += codes_rows_fast(model, x + s * D, nb, cp, lv, margin, scratch[t]);
      return;
    }
    if (!lv) {
      buf[t].resize(nb * d);
      lv = buf[t].data();
    }
    levels_rows_f64(model, x + s * D, nb, lv);
    if (codes)
      for (int64_t r = 0; r < nb; ++r) pack_row(lv + r * d, d, model.bits, codes + (s + r) * cb);
  });
  return redone.load();
}
}  // namespace

void Model::prepare() {
  validate();
  pack_mlp(W);
  for (Mlp& m : B) {
    pack_mlp(m);
    if (m.blocks.empty() && ((m.a + 3) / 4) * 16 * ((m.c + kLutBlock - 1) / kLutBlock) * kLutBlock * 4 <= kMaxLutBytes)
      m.skip_lut = sign_lut(m.skip, m.c, m.a);
  }
  for (Mlp& m : R) pack_mlp(m);
  prepared = true;
}

int64_t encode_levels(const Model& model, const float* x, int64_t n, uint8_t* levels, int threads, double margin) {
  return encode_rows(model, x, n, levels, nullptr, threads, margin);
}

int64_t encode_codes(const Model& model, const float* x, int64_t n, uint8_t* codes, int threads, double margin) {
  return encode_rows(model, x, n, nullptr, codes, threads, margin);
}

void encode_query(const Model& model, int head, const float* x, int64_t n, double* z, int threads) {
  check_head(model, head);
  const int64_t D = model.in_dim, d = model.dim;
  parallel_rows(n, threads, kChunk, [&](int, int64_t s, int64_t e) { query_rows(model, head, x + s * D, e - s, z + s * d); });
}

void encode_query_codes(const Model& model, int head, const float* x, int64_t n, int qbits, uint8_t* out,
                        int threads) {
  check_head(model, head);
  if (qbits < 1 || qbits > 7) throw std::invalid_argument("query bits must be in [1, 7], got " + std::to_string(qbits));
  const int64_t D = model.in_dim, d = model.dim, cb = qbits * ((d + 7) / 8);
  constexpr int64_t kItem = 16;
  parallel_rows(n, std::max(1, threads), kItem, [&](int, int64_t s, int64_t e) {
    // (scratch of the thread running the item, kept warm across calls)
    thread_local Quantizer qz;
    thread_local std::vector<double> z;
    thread_local std::vector<uint8_t> lv;
    z.resize(kItem * d);
    lv.resize(d);
    query_rows(model, head, x + s * D, e - s, z.data());
    for (int64_t r = 0; r < e - s; ++r) {
      qz.row(z.data() + r * d, d, qbits, lv.data());
      pack_row(lv.data(), d, qbits, out + (s + r) * cb);
    }
  });
}

void quantize_angle(const double* v, int64_t n, int64_t dim, int bits, uint8_t* levels, int threads) {
  if (bits < 1 || bits > 7) throw std::invalid_argument("bits must be in [1, 7], got " + std::to_string(bits));
  parallel_rows(n, std::max(1, threads), 8, [&](int, int64_t s, int64_t e) {
    thread_local Quantizer qz;
    for (int64_t r = s; r < e; ++r) qz.row(v + r * dim, dim, bits, levels + r * dim);
  });
}

void pack_levels(const uint8_t* levels, int64_t n, int64_t dim, int bits, uint8_t* out) {
  const int64_t cb = bits * ((dim + 7) / 8);
  for (int64_t r = 0; r < n; ++r) pack_row(levels + r * dim, dim, bits, out + r * cb);
}

}  // namespace infer
}  // namespace bebr
