// Float64 inference of a trained Binarizer (layout and arithmetic: infer.h), baseline flags:
// the scalar matrix-vector kernel, level dispatch, and the element-wise steps every SIMD level
// shares (compiled once, -ffp-contract=off, so they give the same bits at every level).
#include "infer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "dispatch.h"

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

void matvec_f32_scalar(const float* w, int64_t out, int64_t in, const float* x, int64_t n, float* y) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < out; ++i) {
      float acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += w[i * in + k] * x[r * in + k];
      y[r * out + i] = acc;
    }
}

// Run fn(begin, end) over [0, n) split into `threads` contiguous ranges; rethrows the first
// exception of any worker once all joined.
template <class Fn>
void parallel_rows(int64_t n, int threads, int64_t min_rows, Fn fn) {
  int t = std::max(1, threads);
  t = static_cast<int>(std::min<int64_t>(t, std::max<int64_t>(1, n / std::max<int64_t>(1, min_rows))));
  if (t <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::exception_ptr err;
  std::mutex mu;
  auto run = [&](int64_t b, int64_t e) {
    try {
      fn(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> g(mu);
      if (!err) err = std::current_exception();
    }
  };
  std::vector<std::thread> ws;
  for (int i = 1; i < t; ++i) ws.emplace_back(run, n * i / t, n * (i + 1) / t);
  run(0, n / t);
  for (auto& w : ws) w.join();
  if (err) std::rethrow_exception(err);
}

constexpr int64_t kChunk = 64;  // rows per pass through the layers (bounds the scratch)

// Rows of x (n, d) divided by max(||row||, 1e-12) in place (torch.nn.functional.normalize).
template <class T>
void normalize_rows(T* x, int64_t n, int64_t d) {
  for (int64_t r = 0; r < n; ++r) {
    T* xr = x + r * d;
    T s = 0;
    for (int64_t j = 0; j < d; ++j) s += xr[j] * xr[j];
    const T nrm = std::max(std::sqrt(s), static_cast<T>(1e-12));
    for (int64_t j = 0; j < d; ++j) xr[j] = xr[j] / nrm;
  }
}

template <class T>
void matvec(const float* w, int64_t out, int64_t in, const T* x, int64_t n, T* y);
template <>
void matvec<double>(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y) {
  active_infer_kernels().matvec(w, out, in, x, n, y);
}
template <>
void matvec<float>(const float* w, int64_t out, int64_t in, const float* x, int64_t n, float* y) {
  active_infer_kernels().matvec_f32(w, out, in, x, n, y);
}

template <class T>
void mlp_forward_t(const Mlp& m, const T* x, int64_t n, T* y) {
  matvec<T>(m.skip.data(), m.c, m.a, x, n, y);
  std::vector<T> h, z;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const Block& b = m.blocks[i];
    const T* in = i == 0 ? x : y;
    h.resize(n * b.h);
    z.resize(n * b.c);
    matvec<T>(b.w1.data(), b.h, b.a, in, n, h.data());
    for (int64_t j = 0; j < b.h; ++j) {
      const T b1 = b.b1[j], mu = b.bn_mean[j], g = b.bn_w[j], be = b.bn_b[j];
      const T sd = static_cast<T>(std::sqrt(static_cast<double>(b.bn_var[j]) + b.eps));
      for (int64_t r = 0; r < n; ++r) {
        const T v = ((h[r * b.h + j] + b1) - mu) / sd * g + be;
        h[r * b.h + j] = v > 0 ? v : T(0);
      }
    }
    matvec<T>(b.w2.data(), b.c, b.h, h.data(), n, z.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < b.c; ++j) y[r * b.c + j] = y[r * b.c + j] + (z[r * b.c + j] + static_cast<T>(b.b2[j]));
  }
}

// Levels of rows x (nb, D), evaluated in T; with flagged != nullptr (float32 pass) marks
// the rows with a pre-activation closer to 0 than margin * RMS of its step.
template <class T>
void levels_rows(const Model& model, const float* x, int64_t nb, uint8_t* lv, double margin, uint8_t* flagged) {
  const int64_t D = model.in_dim, d = model.dim;
  const int bits = model.bits;
  std::vector<T> xin(nb * D), xn, pre(nb * d), c(nb * d), xh;
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t j = 0; j < D; ++j)
      xin[r * D + j] = static_cast<T>(static_cast<T>(x[r * D + j]) - static_cast<T>(model.in_mean[j]));
  auto check = [&]() {
    if (!flagged) return;
    for (int64_t r = 0; r < nb; ++r) {
      const T* p = pre.data() + r * d;
      double s = 0;
      for (int64_t j = 0; j < d; ++j) s += static_cast<double>(p[j]) * p[j];
      const double th = margin * std::sqrt(s / static_cast<double>(d));
      bool bad = false;
      for (int64_t j = 0; j < d; ++j) bad = bad || std::fabs(static_cast<double>(p[j])) < th;
      if (bad) flagged[r] = 1;
    }
  };
  mlp_forward_t<T>(model.W, xin.data(), nb, pre.data());
  check();
  for (int64_t i = 0; i < nb * d; ++i) {
    const bool pos = pre[i] >= 0;
    c[i] = pos ? T(1) : T(-1);
    lv[i] = static_cast<uint8_t>(pos ? 1u << (bits - 1) : 0u);
  }
  if (bits == 1) return;
  xn = xin;
  normalize_rows(xn.data(), nb, D);
  xh.resize(nb * D);
  for (int t = 1; t < bits; ++t) {
    mlp_forward_t<T>(model.B[t - 1], c.data(), nb, xh.data());
    normalize_rows(xh.data(), nb, D);
    for (int64_t i = 0; i < nb * D; ++i) xh[i] = xn[i] - xh[i];
    mlp_forward_t<T>(model.R[t - 1], xh.data(), nb, pre.data());
    check();
    const T step = static_cast<T>(std::ldexp(1.0, -t));
    for (int64_t i = 0; i < nb * d; ++i) {
      const bool pos = pre[i] >= 0;
      c[i] = c[i] + (pos ? step : -step);
      if (pos) lv[i] = static_cast<uint8_t>(lv[i] | (1u << (bits - 1 - t)));
    }
  }
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
  std::vector<int32_t> eidx, ej, em, eb, cnt, start, sorted, fill, m;

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
    double amax = 0;
    for (int64_t j = 0; j < dim; ++j) {
      a[j] = std::fabs(v[j]);
      amax = std::max(amax, a[j]);
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
    // pass 1: the events and their range of scales
    const size_t cap = static_cast<size_t>(K) * dim;
    ef.resize(cap);
    eidx.resize(cap);
    ej.resize(cap);
    em.resize(cap);
    eb.resize(cap);
    uint64_t key_min, key_max = 0;
    const double fmin = 1.0 / amax;
    std::memcpy(&key_min, &fmin, 8);
    size_t E = 0;
    for (int64_t j = 0; j < dim; ++j) {
      if (!(a[j] > 0)) continue;
      const double aj = a[j];
      if (!std::isinf(static_cast<double>(K) / aj)) {  // then no step's scale is inf: no break
        double* f = ef.data() + E;
        for (int mm = 1; mm <= K; ++mm) f[mm - 1] = static_cast<double>(mm) / aj;
        for (int mm = 1; mm <= K; ++mm) {
          eidx[E + mm - 1] = static_cast<int32_t>(j * K + mm - 1);
          ej[E + mm - 1] = static_cast<int32_t>(j);
          em[E + mm - 1] = mm;
        }
        E += static_cast<size_t>(K);
        continue;
      }
      for (int mm = 1; mm <= K; ++mm) {
        const double f = static_cast<double>(mm) / aj;
        if (std::isinf(f)) break;  // never taken (and larger m is inf too)
        ef[E] = f;
        eidx[E] = static_cast<int32_t>(j * K + mm - 1);
        ej[E] = static_cast<int32_t>(j);
        em[E] = mm;
        ++E;
      }
    }
    for (size_t e = 0; e < E; ++e) {
      uint64_t key;
      std::memcpy(&key, &ef[e], 8);
      key_max = std::max(key_max, key);
    }
    const int nb = static_cast<int>(std::min<uint64_t>(kBuckets, ((key_max - key_min) >> kShift) + 1));
    cnt.assign(nb, 0);
    bsum_a.assign(nb, 0);
    bsum_m.assign(nb, 0);
    for (size_t e = 0; e < E; ++e) {
      uint64_t key;
      std::memcpy(&key, &ef[e], 8);
      const uint64_t bk = (key - key_min) >> kShift;
      const int32_t b = bk < static_cast<uint64_t>(nb) ? static_cast<int32_t>(bk) : nb - 1;
      eb[e] = b;
      ++cnt[b];
      bsum_a[b] += A[ej[e]];
      bsum_m[b] += em[e];
    }
    // counting sort by bucket (stable: generation order is idx order)
    start.resize(nb + 1);
    start[0] = 0;
    for (int b = 0; b < nb; ++b) start[b + 1] = start[b] + cnt[b];
    fill.assign(start.begin(), start.end() - 1);
    sorted.resize(E);
    for (size_t e = 0; e < E; ++e) sorted[fill[eb[e]]++] = static_cast<int32_t>(e);
    const double sdim = static_cast<double>(dim);
    auto crit_of = [&](int64_t cs, int64_t cn) {
      return static_cast<double>(S + 2 * cs) / std::sqrt(static_cast<double>(dim + 8 * cn));
    };
    // best value at a bucket boundary: a lower bound of the maximum
    const double crit0 = static_cast<double>(S) / std::sqrt(sdim);
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
    double best = crit0;
    int best_b = -1;
    int64_t best_i = 0, cs = 0, cn = 0;
    for (int b = 0; b < nb; ++b) {
      if (!cnt[b]) continue;
      if (bound(b, cs, cn) >= lb) {
        int32_t* first = sorted.data() + start[b];
        std::sort(first, first + cnt[b], [&](int32_t x, int32_t y) {
          return ef[x] < ef[y] || (ef[x] == ef[y] && eidx[x] < eidx[y]);
        });
        for (int32_t i = 0; i < cnt[b]; ++i) {
          cs += A[ej[first[i]]];
          cn += em[first[i]];
          const double c = crit_of(cs, cn);
          if (c > best) {
            best = c;
            best_b = b;
            best_i = i + 1;
          }
        }
      } else {
        cs += bsum_a[b];
        cn += bsum_m[b];
        const double c = crit_of(cs, cn);
        if (c > best) {
          best = c;
          best_b = b;
          best_i = cnt[b];
        }
      }
    }
    if (best_b >= 0) {
      const int64_t stop = start[best_b] + best_i;
      for (int64_t i = 0; i < stop; ++i) ++m[ej[sorted[i]]];
    }
    for (int64_t j = 0; j < dim; ++j) out[j] = static_cast<uint8_t>(v[j] >= 0 ? half + m[j] : half - 1 - m[j]);
  }
};

void pack_row(const uint8_t* lv, int64_t dim, int bits, uint8_t* out) {
  const int64_t pb = (dim + 7) / 8;
  std::memset(out, 0, static_cast<size_t>(pb * bits));
  for (int t = 0; t < bits; ++t) {
    uint8_t* plane = out + t * pb;
    const int sh = bits - 1 - t;
    for (int64_t j = 0; j < dim; ++j) plane[j >> 3] |= static_cast<uint8_t>(((lv[j] >> sh) & 1) << (j & 7));
  }
}

// z (n, dim): the query projection (head < 0) or head's direction of float rows x.
void query_rows(const Model& model, int head, const float* x, int64_t n, double* z) {
  const int64_t D = model.in_dim, d = model.dim;
  std::vector<double> xin(n * D);
  if (head < 0) {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < D; ++j)
        xin[r * D + j] = static_cast<double>(x[r * D + j]) - static_cast<double>(model.in_mean[j]);
    mlp_forward(model.W, xin.data(), n, z);
    return;
  }
  const Head& h = model.heads[head];
  for (int64_t i = 0; i < n * D; ++i) xin[i] = x[i];
  normalize_rows(xin.data(), n, D);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < D; ++j) xin[r * D + j] = xin[r * D + j] - static_cast<double>(h.mean[j]);
  if (h.nets.size() == 1) {
    mlp_forward(h.nets[0], xin.data(), n, z);
    return;
  }
  std::vector<double> y(n * d);
  std::fill(z, z + n * d, 0.0);
  for (const Mlp& net : h.nets) {
    mlp_forward(net, xin.data(), n, y.data());
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
  static const InferKernels k{"scalar", &matvec_scalar, &matvec_f32_scalar};
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

void mlp_forward(const Mlp& m, const double* x, int64_t n, double* y) { mlp_forward_t<double>(m, x, n, y); }
void mlp_forward(const Mlp& m, const float* x, int64_t n, float* y) { mlp_forward_t<float>(m, x, n, y); }

int64_t encode_levels(const Model& model, const float* x, int64_t n, uint8_t* levels, int threads, double margin) {
  const int64_t D = model.in_dim, d = model.dim;
  std::atomic<int64_t> redone{0};
  parallel_rows(n, threads, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> flagged(kChunk);
    std::vector<float> redo;
    std::vector<uint8_t> redo_lv;
    for (int64_t s = begin; s < end; s += kChunk) {
      const int64_t nb = std::min(kChunk, end - s);
      uint8_t* lv = levels + s * d;
      if (!(margin > 0)) {
        levels_rows<double>(model, x + s * D, nb, lv, 0.0, nullptr);
        continue;
      }
      std::fill(flagged.begin(), flagged.end(), 0);
      levels_rows<float>(model, x + s * D, nb, lv, margin, flagged.data());
      redo.clear();
      for (int64_t r = 0; r < nb; ++r)
        if (flagged[r]) redo.insert(redo.end(), x + (s + r) * D, x + (s + r + 1) * D);
      if (redo.empty()) continue;
      const int64_t nr = static_cast<int64_t>(redo.size()) / D;
      redone += nr;
      redo_lv.resize(nr * d);
      levels_rows<double>(model, redo.data(), nr, redo_lv.data(), 0.0, nullptr);
      int64_t i = 0;
      for (int64_t r = 0; r < nb; ++r) {
        if (!flagged[r]) continue;
        std::copy(redo_lv.begin() + i * d, redo_lv.begin() + (i + 1) * d, lv + r * d);
        ++i;
      }
    }
  });
  return redone.load();
}

void encode_query(const Model& model, int head, const float* x, int64_t n, double* z, int threads) {
  check_head(model, head);
  const int64_t D = model.in_dim, d = model.dim;
  parallel_rows(n, threads, 16, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; s += kChunk) {
      const int64_t nb = std::min(kChunk, end - s);
      query_rows(model, head, x + s * D, nb, z + s * d);
    }
  });
}

void encode_query_codes(const Model& model, int head, const float* x, int64_t n, int qbits, uint8_t* out,
                        int threads) {
  check_head(model, head);
  if (qbits < 1 || qbits > 7) throw std::invalid_argument("query bits must be in [1, 7], got " + std::to_string(qbits));
  const int64_t D = model.in_dim, d = model.dim, cb = qbits * ((d + 7) / 8);
  parallel_rows(n, threads, 8, [&](int64_t begin, int64_t end) {
    std::vector<double> z(std::min<int64_t>(kChunk, end - begin) * d);
    std::vector<uint8_t> lv(d);
    Quantizer qz;
    for (int64_t s = begin; s < end; s += kChunk) {
      const int64_t nb = std::min(kChunk, end - s);
      query_rows(model, head, x + s * D, nb, z.data());
      for (int64_t r = 0; r < nb; ++r) {
        qz.row(z.data() + r * d, d, qbits, lv.data());
        pack_row(lv.data(), d, qbits, out + (s + r) * cb);
      }
    }
  });
}

void quantize_angle(const double* v, int64_t n, int64_t dim, int bits, uint8_t* levels, int threads) {
  if (bits < 1 || bits > 7) throw std::invalid_argument("bits must be in [1, 7], got " + std::to_string(bits));
  parallel_rows(n, threads, 8, [&](int64_t begin, int64_t end) {
    Quantizer qz;
    for (int64_t r = begin; r < end; ++r) qz.row(v + r * dim, dim, bits, levels + r * dim);
  });
}

void pack_levels(const uint8_t* levels, int64_t n, int64_t dim, int bits, uint8_t* out) {
  const int64_t cb = bits * ((dim + 7) / 8);
  for (int64_t r = 0; r < n; ++r) pack_row(levels + r * dim, dim, bits, out + r * cb);
}

}  // namespace infer
}  // namespace bebr
