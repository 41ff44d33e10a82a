// GoogleTest: the float64 inference kernels of infer.h. Every SIMD level's matrix-vector
// product is bit-identical to the scalar one (fixed 8-lane order) on awkward sizes; the
// float32 product is close to it; a depth-1 model encodes the same levels with and without
// the float32 first pass, at 1 and 3 threads; quantize_angle returns valid levels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "infer.h"

namespace {

namespace infer = bebr::infer;

std::vector<float> randn(std::mt19937_64& rng, size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

class InferLevels : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override { bebr::set_simd_level(bebr::available_simd_levels().back()); }
};

TEST_P(InferLevels, MatvecMatchesScalarBitForBit) {
  std::mt19937_64 rng(7);
  for (int64_t in : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64}) {
    for (int64_t out : {1, 3, 4, 5, 8, 9, 13, 17}) {  // (8-output single-row tiles, their tails)
      for (int64_t n : {1, 2, 3, 5}) {
        const auto w = randn(rng, out * in);
        std::vector<double> x(n * in), y(n * out), ref(n * out);
        for (auto& v : x) v = randn(rng, 1)[0];
        infer::infer_kernels_scalar().matvec(w.data(), out, in, x.data(), n, ref.data());
        bebr::set_simd_level(GetParam());
        infer::active_infer_kernels().matvec(w.data(), out, in, x.data(), n, y.data());
        ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * sizeof(double)))
            << GetParam() << " in=" << in << " out=" << out << " n=" << n;
        std::vector<float> xf(x.begin(), x.end()), yf(n * out, -7.f);
        infer::active_infer_kernels().gemm_f32(infer::pack_f32(w, out, in), xf.data(), n, yf.data());
        for (size_t i = 0; i < yf.size(); ++i) EXPECT_NEAR(yf[i], ref[i], 1e-4 * (1 + std::fabs(ref[i])));
      }
    }
  }
}

infer::Mlp random_mlp(std::mt19937_64& rng, int64_t a, int64_t c, int64_t h, int depth) {
  infer::Mlp m;
  m.a = a;
  m.c = c;
  m.skip = randn(rng, a * c, 1.f / std::sqrt(static_cast<float>(a)));
  for (int i = 0; i < depth; ++i) {
    infer::Block b;
    b.a = i == 0 ? a : c;
    b.c = c;
    b.h = h;
    b.w1 = randn(rng, h * b.a, 0.3f);
    b.b1 = randn(rng, h, 0.3f);
    b.bn_mean = randn(rng, h, 0.3f);
    b.bn_var = randn(rng, h, 0.3f);
    for (auto& v : b.bn_var) v = 0.2f + std::fabs(v);
    b.bn_w = randn(rng, h, 0.3f);
    b.bn_b = randn(rng, h, 0.3f);
    b.w2 = randn(rng, c * h, 0.3f);
    b.b2 = randn(rng, c, 0.3f);
    m.blocks.push_back(b);
  }
  return m;
}

TEST_P(InferLevels, EncodeLevelsFastPassAndThreadsAgree) {
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(3);
  infer::Model md;
  md.in_dim = 23;
  md.dim = 17;
  md.bits = 3;
  md.in_mean = randn(rng, md.in_dim, 0.1f);
  md.W = random_mlp(rng, md.in_dim, md.dim, 9, 1);
  for (int t = 0; t < 2; ++t) {
    md.B.push_back(random_mlp(rng, md.dim, md.in_dim, 9, 1));
    md.R.push_back(random_mlp(rng, md.in_dim, md.dim, 9, 1));
  }
  md.prepare();
  const int64_t n = 301;
  const auto x = randn(rng, n * md.in_dim);
  std::vector<uint8_t> a(n * md.dim), b(n * md.dim), c(n * md.dim);
  infer::encode_levels(md, x.data(), n, a.data(), 1, 0.0);
  const int64_t redone = infer::encode_levels(md, x.data(), n, b.data(), 3, 1.0 / 4096);
  infer::encode_levels(md, x.data(), n, c.data(), 1, 0.5);  // nearly every row redone
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_LT(redone, n);
  for (uint8_t v : a) EXPECT_LT(v, 8);
}

TEST_P(InferLevels, GemmF32MatchesDoubleOnAwkwardSizes) {
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(11);
  for (int64_t in : {1, 3, 7, 8, 9, 17, 50}) {
    for (int64_t out : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 50}) {
      for (int64_t n : {1, 5, 6, 7, 8, 9, 13, 48}) {
        const auto w = randn(rng, out * in);
        const auto x = randn(rng, n * in);
        std::vector<float> y(n * out + 5, -7.f);  // 5 sentinels past the end
        infer::active_infer_kernels().gemm_f32(infer::pack_f32(w, out, in), x.data(), n, y.data());
        for (int64_t r = 0; r < n; ++r)
          for (int64_t i = 0; i < out; ++i) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < in; ++k) {
              ref += static_cast<double>(w[i * in + k]) * x[r * in + k];
              mag += std::fabs(static_cast<double>(w[i * in + k]) * x[r * in + k]);
            }
            ASSERT_NEAR(y[r * out + i], ref, 1e-6 * (1 + mag)) << GetParam() << " in=" << in << " out=" << out << " n=" << n;
          }
        for (int j = 0; j < 5; ++j) ASSERT_EQ(y[n * out + j], -7.f) << "wrote past the output";
      }
    }
  }
}

TEST_P(InferLevels, SignLutMatchesSignProducts) {
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(13);
  for (int64_t in : {1, 3, 4, 5, 17, 50}) {
    for (int64_t out : {1, 7, 8, 9, 17, 50}) {
      for (int64_t n : {1, 7, 8, 9, 20}) {
        const auto w = randn(rng, out * in);
        const infer::SignLut lut = infer::sign_lut(w, out, in);
        ASSERT_EQ(lut.groups, (in + 3) / 4);
        std::vector<uint8_t> e(n * lut.groups, 0);
        std::vector<float> sgn(n * in);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t k = 0; k < in; ++k) {
            const bool pos = rng() & 1;
            sgn[r * in + k] = pos ? 1.f : -1.f;
            if (pos) e[r * lut.groups + k / 4] = static_cast<uint8_t>(e[r * lut.groups + k / 4] | (1 << (k % 4)));
          }
        const auto y0 = randn(rng, n * out);
        std::vector<float> y(y0);
        y.resize(n * out + 5, -7.f);
        infer::active_infer_kernels().lut_f32(lut, e.data(), n, 0.5f, y.data());
        for (int64_t r = 0; r < n; ++r)
          for (int64_t i = 0; i < out; ++i) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < in; ++k) {
              ref += static_cast<double>(w[i * in + k]) * sgn[r * in + k];
              mag += std::fabs(w[i * in + k]);
            }
            ASSERT_NEAR(y[r * out + i], y0[r * out + i] + 0.5 * ref, 1e-6 * (1 + mag + std::fabs(y0[r * out + i])))
                << GetParam() << " in=" << in << " out=" << out << " n=" << n;
          }
        for (int j = 0; j < 5; ++j) ASSERT_EQ(y[n * out + j], -7.f) << "wrote past the output";
      }
    }
  }
}

TEST_P(InferLevels, LinearModelFastPassMatchesFloat64) {
  // depth 0: the B stages take the sign tables; 4 bits: the tables of three steps
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(17);
  infer::Model md;
  md.in_dim = 29;
  md.dim = 21;
  md.bits = 4;
  md.in_mean = randn(rng, md.in_dim, 0.1f);
  md.W = random_mlp(rng, md.in_dim, md.dim, 1, 0);
  for (int t = 0; t < 3; ++t) {
    md.B.push_back(random_mlp(rng, md.dim, md.in_dim, 1, 0));
    md.R.push_back(random_mlp(rng, md.in_dim, md.dim, 1, 0));
  }
  md.prepare();
  ASSERT_FALSE(md.B[0].skip_lut.data.empty());
  const int64_t n = 403, cb = md.bits * ((md.dim + 7) / 8);
  const auto x = randn(rng, n * md.in_dim);
  std::vector<uint8_t> a(n * md.dim), b(n * md.dim), ca(n * cb), cbuf(n * cb);
  infer::encode_levels(md, x.data(), n, a.data(), 1, 0.0);
  const int64_t redone = infer::encode_levels(md, x.data(), n, b.data(), 3, 1.0 / 4096);
  EXPECT_EQ(a, b);
  EXPECT_LT(redone, n);
  infer::encode_codes(md, x.data(), n, ca.data(), 1, 0.0);
  infer::encode_codes(md, x.data(), n, cbuf.data(), 2, 1.0 / 4096);
  EXPECT_EQ(ca, cbuf);
  std::vector<uint8_t> packed(n * cb);
  infer::pack_levels(a.data(), n, md.dim, md.bits, packed.data());
  EXPECT_EQ(packed, ca);
}

TEST(Infer, FastPassNeedsPreparedModel) {
  std::mt19937_64 rng(19);
  infer::Model md;
  md.in_dim = 4;
  md.dim = 3;
  md.bits = 1;
  md.in_mean = randn(rng, 4);
  md.W = random_mlp(rng, 4, 3, 1, 0);
  md.validate();
  const auto x = randn(rng, 4 * 20);
  std::vector<uint8_t> lv(20 * 3);
  EXPECT_THROW(infer::encode_levels(md, x.data(), 20, lv.data(), 1, 0.01), std::logic_error);
  EXPECT_NO_THROW(infer::encode_levels(md, x.data(), 20, lv.data(), 1, 0.0));
}

TEST(Infer, QuantizeAngleLevelsInRange) {
  std::mt19937_64 rng(5);
  for (int bits = 1; bits <= 7; ++bits) {
    const int64_t dim = 37, n = 9;
    std::vector<double> v(n * dim);
    for (auto& x : v) x = randn(rng, 1)[0];
    std::fill(v.begin(), v.begin() + dim, 0.0);  // a zero row: the smallest positive level
    std::vector<uint8_t> lv(n * dim);
    infer::quantize_angle(v.data(), n, dim, bits, lv.data(), 2);
    for (int64_t j = 0; j < dim; ++j) EXPECT_EQ(lv[j], 1 << (bits - 1));
    for (int64_t i = dim; i < n * dim; ++i) {
      EXPECT_LT(lv[i], 1 << bits);
      EXPECT_EQ(lv[i] >= (1 << (bits - 1)), v[i] >= 0);
    }
  }
  EXPECT_THROW(infer::quantize_angle(nullptr, 0, 4, 8, nullptr, 1), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(AllLevels, InferLevels, ::testing::ValuesIn(bebr::available_simd_levels()));

}  // namespace
