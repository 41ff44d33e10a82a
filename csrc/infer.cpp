// Float64 inference of a trained Binarizer (layout and arithmetic: infer.h), baseline flags:
// the scalar matrix-vector kernel, level dispatch, and the element-wise steps every SIMD level
// shares (compiled once, -ffp-contract=off, so they give the same bits at every level).
#include "infer.h"

#include <algorithm>
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
void normalize_rows(double* x, int64_t n, int64_t d) {
  for (int64_t r = 0; r < n; ++r) {
    double* xr = x + r * d;
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += xr[j] * xr[j];
    const double nrm = std::max(std::sqrt(s), 1e-12);
    for (int64_t j = 0; j < d; ++j) xr[j] = xr[j] / nrm;
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
// Events (dimension j, magnitude step m in 1..K) at the scales f = m / |v_j| are swept in
// (f, j * K + m - 1) order, the order of numpy's stable argsort in the reference; they come
// from K lists (one per m) over the dimensions sorted by |v_j| descending, merged by a heap.
struct Quantizer {
  std::vector<double> a;
  std::vector<int32_t> order, pos, seq, m;
  std::vector<int32_t> heap;  // list indices (m - 1), keyed by their head event

  void row(const double* v, int64_t dim, int bits, uint8_t* out) {
    const int half = 1 << (bits - 1);
    if (half == 1) {
      for (int64_t j = 0; j < dim; ++j) out[j] = v[j] >= 0 ? 1 : 0;
      return;
    }
    const int K = half - 1;
    a.resize(dim);
    double S = 0;
    for (int64_t j = 0; j < dim; ++j) {
      a[j] = std::fabs(v[j]);
      S = S + a[j];
    }
    order.resize(dim);
    for (int64_t j = 0; j < dim; ++j) order[j] = static_cast<int32_t>(j);
    std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return a[x] > a[y] || (a[x] == a[y] && x < y); });
    // Per list m: the dims in `order`, then fixed up by insertion into exact (f, idx) order
    // (division rounding can make m / a_x == m / a_y for a_x != a_y). lists[(m-1)*dim + p].
    lists.resize(static_cast<size_t>(K) * dim);
    for (int mm = 1; mm <= K; ++mm) {
      int32_t* L = lists.data() + static_cast<size_t>(mm - 1) * dim;
      std::copy(order.begin(), order.end(), L);
      for (int64_t p = 1; p < dim; ++p) {
        const int32_t j = L[p];
        int64_t q = p;
        while (q > 0 && less(mm, j, mm, L[q - 1], K)) {
          L[q] = L[q - 1];
          --q;
        }
        L[q] = j;
      }
    }
    pos.assign(K, 0);
    heap.clear();
    for (int mm = 1; mm <= K; ++mm) push(mm - 1, dim, K);
    seq.resize(static_cast<size_t>(K) * dim);
    const double base = 0.5 * S;
    const double quarter = 0.25 * static_cast<double>(dim);
    double best_cos = base / std::sqrt(quarter);
    int64_t best = 0, e = 0;
    double cs = 0, cn = 0;
    while (!heap.empty()) {
      const int li = pop(dim, K);
      const int32_t j = lists[static_cast<size_t>(li) * dim + pos[li]];
      const int mm = li + 1;
      const double f = static_cast<double>(mm) / a[j];
      if (std::isinf(f)) break;  // a_j == 0: never taken; every later event is inf too
      ++pos[li];
      if (pos[li] < dim) push(li, dim, K);
      seq[e] = j;
      cs = cs + a[j];
      cn = cn + 2.0 * mm;
      const double cos = (base + cs) / std::sqrt(quarter + cn);
      ++e;
      if (cos > best_cos) {
        best_cos = cos;
        best = e;
      }
    }
    m.assign(dim, 0);
    for (int64_t i = 0; i < best; ++i) ++m[seq[i]];
    for (int64_t j = 0; j < dim; ++j) out[j] = static_cast<uint8_t>(v[j] >= 0 ? half + m[j] : half - 1 - m[j]);
  }

 private:
  std::vector<int32_t> lists;

  // (m_x / a_x, x * K + m_x - 1) < (m_y / a_y, y * K + m_y - 1)
  bool less(int mx, int32_t x, int my, int32_t y, int K) const {
    const double fx = static_cast<double>(mx) / a[x], fy = static_cast<double>(my) / a[y];
    if (fx != fy) return fx < fy;
    return static_cast<int64_t>(x) * K + mx - 1 < static_cast<int64_t>(y) * K + my - 1;
  }
  bool list_less(int l1, int l2, int64_t dim, int K) const {
    return less(l1 + 1, lists[static_cast<size_t>(l1) * dim + pos[l1]], l2 + 1,
                lists[static_cast<size_t>(l2) * dim + pos[l2]], K);
  }
  void push(int li, int64_t dim, int K) {
    heap.push_back(li);
    size_t i = heap.size() - 1;
    while (i > 0) {
      const size_t p = (i - 1) / 2;
      if (!list_less(heap[i], heap[p], dim, K)) break;
      std::swap(heap[i], heap[p]);
      i = p;
    }
  }
  int pop(int64_t dim, int K) {
    const int top = heap[0];
    heap[0] = heap.back();
    heap.pop_back();
    size_t i = 0;
    for (;;) {
      const size_t l = 2 * i + 1, r = l + 1;
      size_t s = i;
      if (l < heap.size() && list_less(heap[l], heap[s], dim, K)) s = l;
      if (r < heap.size() && list_less(heap[r], heap[s], dim, K)) s = r;
      if (s == i) break;
      std::swap(heap[i], heap[s]);
      i = s;
    }
    return top;
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
  static const InferKernels k{"scalar", &matvec_scalar};
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

void mlp_forward(const Mlp& m, const double* x, int64_t n, double* y) {
  const MatvecFn mv = active_infer_kernels().matvec;
  mv(m.skip.data(), m.c, m.a, x, n, y);
  std::vector<double> h, z;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const Block& b = m.blocks[i];
    const double* in = i == 0 ? x : y;
    h.resize(n * b.h);
    z.resize(n * b.c);
    mv(b.w1.data(), b.h, b.a, in, n, h.data());
    for (int64_t j = 0; j < b.h; ++j) {
      const double b1 = b.b1[j], mu = b.bn_mean[j], g = b.bn_w[j], be = b.bn_b[j];
      const double sd = std::sqrt(static_cast<double>(b.bn_var[j]) + b.eps);
      for (int64_t r = 0; r < n; ++r) {
        const double v = ((h[r * b.h + j] + b1) - mu) / sd * g + be;
        h[r * b.h + j] = v > 0 ? v : 0.0;
      }
    }
    mv(b.w2.data(), b.c, b.h, h.data(), n, z.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < b.c; ++j) y[r * b.c + j] = y[r * b.c + j] + (z[r * b.c + j] + static_cast<double>(b.b2[j]));
  }
}

void encode_levels(const Model& model, const float* x, int64_t n, uint8_t* levels, int threads) {
  const int64_t D = model.in_dim, d = model.dim;
  const int bits = model.bits;
  parallel_rows(n, threads, 16, [&](int64_t begin, int64_t end) {
    std::vector<double> xin(kChunk * D), xn(kChunk * D), pre(kChunk * d), c(kChunk * d), xh(kChunk * D);
    for (int64_t s = begin; s < end; s += kChunk) {
      const int64_t nb = std::min(kChunk, end - s);
      const float* xs = x + s * D;
      for (int64_t r = 0; r < nb; ++r)
        for (int64_t j = 0; j < D; ++j)
          xin[r * D + j] = static_cast<double>(xs[r * D + j]) - static_cast<double>(model.in_mean[j]);
      mlp_forward(model.W, xin.data(), nb, pre.data());
      uint8_t* lv = levels + s * d;
      for (int64_t i = 0; i < nb * d; ++i) {
        const bool pos = pre[i] >= 0;
        c[i] = pos ? 1.0 : -1.0;
        lv[i] = static_cast<uint8_t>(pos ? 1u << (bits - 1) : 0u);
      }
      if (bits == 1) continue;
      std::copy(xin.begin(), xin.begin() + nb * D, xn.begin());
      normalize_rows(xn.data(), nb, D);
      for (int t = 1; t < bits; ++t) {
        mlp_forward(model.B[t - 1], c.data(), nb, xh.data());
        normalize_rows(xh.data(), nb, D);
        for (int64_t i = 0; i < nb * D; ++i) xh[i] = xn[i] - xh[i];
        mlp_forward(model.R[t - 1], xh.data(), nb, pre.data());
        const double step = std::ldexp(1.0, -t);
        for (int64_t i = 0; i < nb * d; ++i) {
          const bool pos = pre[i] >= 0;
          c[i] = c[i] + (pos ? step : -step);
          if (pos) lv[i] = static_cast<uint8_t>(lv[i] | (1u << (bits - 1 - t)));
        }
      }
    }
  });
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
    std::vector<double> z(kChunk * d);
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
