// Float64 CPU inference of a trained Binarizer (bebr.encoder.Encoder): the recurrent encoder,
// the query projection, the cross-version query heads, the exact max-cosine query quantizer
// and the bit-plane packing, without torch.
//
// Data layout: every weight matrix is float32, row-major (out, in), exactly as torch's
// nn.Linear stores it; vectors (biases, BatchNorm statistics, means) are float32. Inputs are
// float32 rows (n, in_dim), C-contiguous; all arithmetic of the exact path is float64
// (products of two float32 are exact in float64), so the codes are the signs of the float64
// evaluation of the model. Its matrix-vector products accumulate in 8 lanes (lane = k % 8,
// one fused multiply-add per element, zero-padded to a multiple of 8) reduced as
// ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)): every SIMD level computes the same bits. The float32
// fast pass of encode_levels multiplies by copies of the weights packed at prepare() into
// panels of kPanel outputs (PackedF32: panel p holds outputs [16p, 16p + 16) as (in, 16)
// k-major, zero-padded), in each level's own summation order. Levels (n, dim) uint8 and
// packed codes follow CodeSpec (docs/FORMAT.md section 1).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

namespace bebr {
namespace infer {

constexpr int64_t kPanel = 16;  // outputs per packed panel of PackedF32
constexpr int kMaxBits = 4;      // bits of a model's codes, at most

// 64-byte aligned storage (packed panels: one cache line per k of a panel).
template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

// A float32 weight matrix (out, in) packed for gemm_f32: ceil(out / 16) panels, panel p at
// data + p * in * 16, element (k, i) of the panel = w[(16p + i) * in + k] (0 past out).
struct PackedF32 {
  int64_t out = 0, in = 0;
  std::vector<float, AlignedAllocator<float>> data;
  int64_t panels() const { return (out + kPanel - 1) / kPanel; }
};
PackedF32 pack_f32(const std::vector<float>& w, int64_t out, int64_t in);

// Products of a float32 matrix (out, in) with sign vectors s in {-1, +1}^in, by tables: for
// the block b of outputs [8b, 8b + 8), the group g of inputs [4g, 4g + 4) and e in [0, 16),
// the 8 floats at data + ((b * groups + g) * 16 + e) * 8 hold
// sum_{l < 4} (bit l of e ? +1 : -1) * w[8b + i, 4g + l] (inputs past `in` count 0, outputs
// past `out` are 0): one block's tables (groups * 512 bytes) stay in L1 across many rows.
constexpr int64_t kLutBlock = 8;
struct SignLut {
  int64_t out = 0, in = 0, groups = 0, blocks = 0;
  std::vector<float, AlignedAllocator<float>> data;
  const float* entry(int64_t b, int64_t g, int e) const { return data.data() + ((b * groups + g) * 16 + e) * kLutBlock; }
};
SignLut sign_lut(const std::vector<float>& w, int64_t out, int64_t in);

// y[r * out + i] = sum_k w[i * in + k] * x[r * in + k] (r < n, i < out), 8-lane float64.
using MatvecFn = void (*)(const float* w, int64_t out, int64_t in, const double* x, int64_t n, double* y);

// y (n, w.out) = x (n, w.in) W^T in float32 (the fast pass of encode_levels; its summation
// order is the kernel's own, which is why only margin-checked signs are taken from it).
using GemmF32Fn = void (*)(const PackedF32& w, const float* x, int64_t n, float* y);

// y (n, lut.out) += scale * (W s) for sign vectors given as nibbles e (n, lut.groups): bit l
// of e[r * groups + g] is input 4g + l of row r positive (float32, the fast pass).
using LutF32Fn = void (*)(const SignLut& lut, const uint8_t* e, int64_t n, float scale, float* y);

struct InferKernels {
  const char* name;
  MatvecFn matvec;
  GemmF32Fn gemm_f32;
  LutF32Fn lut_f32;
  // The fast pass's B stages of steps t <= lut_steps use the sign tables (t passes of lut_f32),
  // later ones gemm_f32 (one pass): where the GEMM is fast, its weights (a quarter of the
  // tables' bytes) win.
  int lut_steps;
};

const InferKernels& infer_kernels_scalar();
#ifdef BEBR_HAVE_AVX2
const InferKernels& infer_kernels_avx2();
#endif
#ifdef BEBR_HAVE_AVX512
const InferKernels& infer_kernels_avx512();
#endif
// The table of the active SIMD level (bebr::simd_level_name(); "amx" uses the avx512 one).
const InferKernels& active_infer_kernels();

// Linear(a, h) -> BatchNorm1d(h) (eval: running statistics) -> ReLU -> Linear(h, c).
struct Block {
  int64_t a = 0, h = 0, c = 0;
  std::vector<float> w1, b1, bn_mean, bn_var, bn_w, bn_b, w2, b2;
  double eps = 1e-5;
  PackedF32 w1_p, w2_p;  // set by Model::prepare
};

// skip(x) (no bias) + blocks with skip connections (bebr.model.ResidualMLP).
struct Mlp {
  int64_t a = 0, c = 0;
  std::vector<float> skip;
  std::vector<Block> blocks;
  PackedF32 skip_p;  // set by Model::prepare
  SignLut skip_lut;  // set by Model::prepare for a B stage without blocks (input: code values)
};

// normalize(x) - mean, then the mean of the members' unit outputs (one member: its output).
struct Head {
  std::vector<float> mean;
  std::vector<Mlp> nets;
};

struct Model {
  int64_t in_dim = 0, dim = 0;
  int bits = 0;
  std::vector<float> in_mean;
  Mlp W;
  std::vector<Mlp> B, R;  // bits - 1 each
  std::vector<Head> heads;
  bool prepared = false;
  void validate() const;  // throws std::invalid_argument on inconsistent shapes
  void prepare();         // validate(), then pack the weights of the float32 pass
};

// Levels (n, dim) of the stored codes of x (n, in_dim) float32; `threads` workers. The signs
// are those of the float64 evaluation. margin > 0 (a prepared model): a float32 pass first,
// step by step; a pre-activation's sign is kept from it if |pre| >= margin * RMS(pre of
// that step in that row), else that pre-activation alone is evaluated in float64 (from the
// float64 state of its row at that step, which the kept signs determine) before the next
// step. Returns the number of rows with at least one pre-activation so evaluated.
int64_t encode_levels(const Model& model, const float* x, int64_t n, uint8_t* levels, int threads,
                      double margin = 0.0);

// encode_levels, then CodeSpec(dim, bits).pack: codes (n, bits * ceil(dim / 8)).
int64_t encode_codes(const Model& model, const float* x, int64_t n, uint8_t* codes, int threads,
                     double margin = 0.0);

// The query projection W(x - in_mean) (head < 0) or query head `head`'s direction, (n, dim).
void encode_query(const Model& model, int head, const float* x, int64_t n, double* z, int threads);

// Packed query codes (n, qbits * ceil(dim / 8)): the projection quantized by max cosine.
void encode_query_codes(const Model& model, int head, const float* x, int64_t n, int qbits, uint8_t* out,
                        int threads);

// CodeSpec(dim, bits).quantize_angle of rows v (n, dim) float64: levels (n, dim) (bits 1..7).
void quantize_angle(const double* v, int64_t n, int64_t dim, int bits, uint8_t* levels, int threads);

// CodeSpec(dim, bits).pack: levels (n, dim) -> (n, bits * ceil(dim / 8)).
void pack_levels(const uint8_t* levels, int64_t n, int64_t dim, int bits, uint8_t* out);

}  // namespace infer
}  // namespace bebr
