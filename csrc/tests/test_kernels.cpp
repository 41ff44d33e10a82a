// GoogleTest: every SIMD level against the scalar popcount kernel, bit-exact, on awkward
// sizes, through SdcIndex (blocked layout, filters, removals, threads).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatch.h"
#include "id_map.h"
#include "index.h"

namespace {

using bebr::Metric;
using bebr::SdcIndex;

std::vector<uint8_t> random_codes(std::mt19937_64& rng, const bebr::Geometry& g, int64_t n) {
  std::vector<uint8_t> c(static_cast<size_t>(n) * g.code_bytes);
  for (int64_t i = 0; i < n; ++i)
    for (int t = 0; t < g.bits; ++t)
      for (int p = 0; p < g.plane_bytes; ++p) {
        uint8_t b = static_cast<uint8_t>(rng());
        const int valid = g.dim - 8 * p;
        if (valid < 8) b &= static_cast<uint8_t>((1u << valid) - 1);  // zero padding bits
        c[i * g.code_bytes + t * g.plane_bytes + p] = b;
      }
  return c;
}

struct Result {
  std::vector<float> s;
  std::vector<int64_t> i;
};

Result run(const SdcIndex& idx, const std::vector<uint8_t>& q, int64_t nq, int k, int threads,
           const bebr::FilterSpec& f = {}) {
  Result r{std::vector<float>(nq * k), std::vector<int64_t>(nq * k)};
  idx.search(q.data(), nq, k, threads, f, r.s.data(), r.i.data());
  return r;
}

class LevelsVsScalar : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override { bebr::set_simd_level(bebr::available_simd_levels().back()); }
};

TEST_P(LevelsVsScalar, AwkwardSizesBitExact) {
  std::mt19937_64 rng(7);
  for (int dim : {1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 100, 256, 2100}) {
    for (int bits = 1; bits <= 4; ++bits) {
      for (Metric m : {Metric::kIP, Metric::kCosine}) {
        SdcIndex idx(dim, bits, m);
        const bebr::Geometry& g = idx.geometry();
        const int64_t n = 1 + static_cast<int64_t>(rng() % 300);
        auto codes = random_codes(rng, g, n);
        idx.add(codes.data(), n, nullptr, 0);
        std::vector<int64_t> rm;
        for (int64_t i = 0; i < n; i += 5) rm.push_back(i);
        idx.remove(rm.data(), static_cast<int64_t>(rm.size()));
        // few queries (group kernels) and a batch (matrix-unit kernels where a level has them)
        for (const int64_t nq : {int64_t{6}, bebr::kBatchMinQueries + 17}) {
        auto q = random_codes(rng, g, nq);
        std::vector<int64_t> allow;
        for (int64_t i = 0; i < n; i += 2) allow.push_back(i);
        bebr::FilterSpec f;
        f.allow_ids = allow.data();
        f.n_allow_ids = static_cast<int64_t>(allow.size());
        bebr::set_simd_level("scalar");
        const Result want = run(idx, q, nq, 13, 1);
        const Result want_f = run(idx, q, nq, 13, 1, f);
        bebr::set_simd_level(GetParam());
        for (int threads : {1, 2}) {
          const Result got = run(idx, q, nq, 13, threads);
          const Result got_f = run(idx, q, nq, 13, threads, f);
          ASSERT_EQ(got.i, want.i) << "dim=" << dim << " bits=" << bits;
          ASSERT_EQ(got.s, want.s) << "dim=" << dim << " bits=" << bits;
          ASSERT_EQ(got_f.i, want_f.i) << "filtered dim=" << dim << " bits=" << bits;
        }
        }
      }
    }
  }
}

TEST_P(LevelsVsScalar, QueryBitsDifferentFromStoredBitsExact) {
  // query codes of every bit width against stored codes of every bit width: each level
  // bit-identical to scalar, and extreme codes score the exact product of the two scales
  std::mt19937_64 rng(11);
  for (int dim : {1, 9, 64, 130}) {
    for (int bits = 1; bits <= 4; ++bits) {
      for (int qbits = 1; qbits <= (bits <= 2 ? 4 : 7); ++qbits) {
        SdcIndex idx(dim, bits, Metric::kIP);
        const int64_t n = 1 + static_cast<int64_t>(rng() % 200);
        auto codes = random_codes(rng, idx.geometry(), n);
        idx.add(codes.data(), n, nullptr, 0);
        const bebr::Geometry qg(dim, qbits);
        for (const int64_t nq : {int64_t{3}, bebr::kBatchMinQueries + 9}) {
          auto q = random_codes(rng, qg, nq);
          auto search = [&](const char* level) {
            bebr::set_simd_level(level);
            Result r{std::vector<float>(nq * 7), std::vector<int64_t>(nq * 7)};
            idx.search(q.data(), nq, 7, 2, {}, r.s.data(), r.i.data(), qbits);
            return r;
          };
          const Result want = search("scalar");
          const Result got = search(GetParam().c_str());
          ASSERT_EQ(got.i, want.i) << "dim=" << dim << " bits=" << bits << " qbits=" << qbits;
          ASSERT_EQ(got.s, want.s) << "dim=" << dim << " bits=" << bits << " qbits=" << qbits;
        }
        SdcIndex one(dim, bits, Metric::kIP);
        std::vector<uint8_t> all(one.geometry().code_bytes, 0), qall(qg.code_bytes, 0);
        for (int t = 0; t < bits; ++t)
          for (int j = 0; j < dim; ++j) all[t * qg.plane_bytes + j / 8] |= static_cast<uint8_t>(1u << (j % 8));
        for (int t = 0; t < qbits; ++t)
          for (int j = 0; j < dim; ++j) qall[t * qg.plane_bytes + j / 8] |= static_cast<uint8_t>(1u << (j % 8));
        one.add(all.data(), 1, nullptr, 0);
        bebr::set_simd_level(GetParam());
        float sc = 0;
        int64_t id = -1;
        one.search(qall.data(), 1, 1, 1, {}, &sc, &id, qbits);
        const double vm = ((1 << bits) - 1.0) / (1 << (bits - 1)), qm = ((1 << qbits) - 1.0) / (1 << (qbits - 1));
        EXPECT_EQ(id, 0);
        EXPECT_FLOAT_EQ(sc, static_cast<float>(dim * vm * qm)) << "bits=" << bits << " qbits=" << qbits;
      }
    }
  }
  SdcIndex ham(16, 1, Metric::kHamming);
  std::vector<uint8_t> q(8, 0);
  float sc;
  int64_t id;
  EXPECT_THROW(ham.search(q.data(), 1, 1, 1, {}, &sc, &id, 2), std::invalid_argument);
  SdcIndex two(16, 2, Metric::kIP);
  EXPECT_THROW(two.search(q.data(), 1, 1, 1, {}, &sc, &id, 5), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(AllLevels, LevelsVsScalar, ::testing::ValuesIn(bebr::available_simd_levels()));

TEST_P(LevelsVsScalar, CalibratedVersionQueriesBitExact) {
  // items of version 1 scored with their own query codes and mapped to a * score + b, the
  // rest with the main queries, one heap per query: each level bit-identical to scalar;
  // a large shift puts version 1 first; a bad calibration is refused
  std::mt19937_64 rng(5);
  for (Metric metric : {Metric::kIP, Metric::kCosine}) {
    for (int bits : {1, 2, 3}) {
      const int dim = 70, qbits = 4;
      SdcIndex idx(dim, bits, metric);
      const int64_t n = 300;
      auto codes = random_codes(rng, idx.geometry(), n);
      std::vector<int64_t> ids(n);
      for (int64_t i = 0; i < n; ++i) ids[i] = 3 * i + 1;
      idx.add(codes.data(), n / 2, ids.data(), 0);
      idx.add(codes.data() + (n / 2) * idx.geometry().code_bytes, n - n / 2, ids.data() + n / 2, 1);
      const bebr::Geometry qg(dim, qbits);
      const int64_t nq = 5;
      const int k = 12;
      auto q = random_codes(rng, qg, nq), q1 = random_codes(rng, qg, nq);
      const int32_t vers[1] = {1};
      const uint8_t* vcodes[1] = {q1.data()};
      for (float shift : {0.37f, 1e4f}) {
        const float scale[1] = {0.61f}, sh[1] = {shift};
        bebr::VersionQueries vq{1, vers, vcodes, scale, sh};
        auto search = [&](const char* level) {
          bebr::set_simd_level(level);
          Result r{std::vector<float>(nq * k), std::vector<int64_t>(nq * k)};
          idx.search(q.data(), nq, k, 2, {}, r.s.data(), r.i.data(), qbits, vq);
          return r;
        };
        const Result want = search("scalar");
        const Result got = search(GetParam().c_str());
        ASSERT_EQ(got.i, want.i) << "bits=" << bits << " shift=" << shift;
        ASSERT_EQ(got.s, want.s) << "bits=" << bits << " shift=" << shift;
        if (shift > 1e3f)
          for (int64_t i = 0; i < nq * k; ++i) EXPECT_GE(got.i[i], ids[n / 2]) << "version 1 first";
      }
      float sc[nq * k];
      int64_t id[nq * k];
      const float bad_scale[1] = {-1.f}, zero[1] = {0.f};
      bebr::VersionQueries bad{1, vers, vcodes, bad_scale, zero};
      EXPECT_THROW(idx.search(q.data(), nq, k, 1, {}, sc, id, qbits, bad), std::invalid_argument);
    }
  }
}

TEST_P(LevelsVsScalar, FewQueriesManyBlocksBitExact) {
  // 1..5 queries (groups of 1-4) over thousands of items, so that the kernels' per-block
  // skipping against the heap threshold is exercised; long codes whose LUT sums do not fit
  // 16 bits (dim 1500 at 4-bit queries) take the int32 path; filters and removals
  std::mt19937_64 rng(23);
  for (int dim : {50, 192, 1500}) {
    for (int bits : {1, 2, 4}) {
      for (Metric m : {Metric::kIP, Metric::kCosine}) {
        SdcIndex idx(dim, bits, m);
        const int64_t n = dim > 1000 ? 300 : 1400 + static_cast<int64_t>(rng() % 100);
        auto codes = random_codes(rng, idx.geometry(), n);
        idx.add(codes.data(), n, nullptr, 0);
        std::vector<int64_t> rm;
        for (int64_t i = 3; i < n; i += 11) rm.push_back(i);
        idx.remove(rm.data(), static_cast<int64_t>(rm.size()));
        std::vector<int64_t> allow;
        for (int64_t i = 0; i < n; i += 3) allow.push_back(i);
        bebr::FilterSpec f;
        f.allow_ids = allow.data();
        f.n_allow_ids = static_cast<int64_t>(allow.size());
        for (int qbits : {1, 2, bits <= 2 ? 4 : 7}) {
          const bebr::Geometry qg(dim, qbits);
          for (int64_t nq : {1, 3, 5}) {
            auto q = random_codes(rng, qg, nq);
            for (int k : {1, 10}) {
              auto search = [&](const char* level, const bebr::FilterSpec& fs) {
                bebr::set_simd_level(level);
                Result r{std::vector<float>(nq * k), std::vector<int64_t>(nq * k)};
                idx.search(q.data(), nq, k, 1, fs, r.s.data(), r.i.data(), qbits);
                return r;
              };
              for (const bebr::FilterSpec& fs : {bebr::FilterSpec{}, f}) {
                const Result want = search("scalar", fs);
                const Result got = search(GetParam().c_str(), fs);
                ASSERT_EQ(got.i, want.i) << "dim=" << dim << " bits=" << bits << " qbits=" << qbits << " nq=" << nq
                                         << " k=" << k << " filtered=" << fs.any();
                ASSERT_EQ(got.s, want.s) << "dim=" << dim << " bits=" << bits << " qbits=" << qbits << " nq=" << nq;
              }
            }
          }
        }
      }
    }
  }
}

TEST_P(LevelsVsScalar, ExtremeCodesAtTheLutSumLimits) {
  // all-ones and all-zeros codes against all-ones queries put every LUT entry at its largest
  // or smallest value: exact at the dims around the 16-bit sum limit of 4-bit queries over
  // 2-bit codes (P = 182 / 183) and past a u16 segment (P > 546)
  for (int dim : {1, 7, 1455, 1456, 1457, 1464, 4400, 4500}) {
    for (int bits : {1, 2}) {
      for (int qbits = 1; qbits <= 4; ++qbits) {
        SdcIndex idx(dim, bits, Metric::kIP);
        const bebr::Geometry& g = idx.geometry();
        const bebr::Geometry qg(dim, qbits);
        auto ones = [&](const bebr::Geometry& gg) {
          std::vector<uint8_t> c(gg.code_bytes, 0);
          for (int t = 0; t < gg.bits; ++t)
            for (int j = 0; j < dim; ++j) c[t * gg.plane_bytes + j / 8] |= static_cast<uint8_t>(1u << (j % 8));
          return c;
        };
        std::vector<uint8_t> two = ones(g);
        two.resize(2 * g.code_bytes, 0);  // item 1: all levels 0
        idx.add(two.data(), 2, nullptr, 0);
        const std::vector<uint8_t> q = ones(qg);
        bebr::set_simd_level(GetParam());
        Result r{std::vector<float>(2), std::vector<int64_t>(2)};
        idx.search(q.data(), 1, 2, 1, {}, r.s.data(), r.i.data(), qbits);
        const double vm = ((1 << bits) - 1.0) / (1 << (bits - 1)), qm = ((1 << qbits) - 1.0) / (1 << (qbits - 1));
        EXPECT_EQ(r.i[0], 0);
        EXPECT_EQ(r.i[1], 1);
        EXPECT_FLOAT_EQ(r.s[0], static_cast<float>(dim * vm * qm)) << "dim=" << dim << " bits=" << bits << " qbits=" << qbits;
        EXPECT_FLOAT_EQ(r.s[1], static_cast<float>(-dim * vm * qm)) << "dim=" << dim << " bits=" << bits << " qbits=" << qbits;
      }
    }
  }
}

TEST(SdcIndex, ExactInnerProductOfExtremeCodes) {
  // all levels max: <v, v> = dim * (2^bits - 1)^2 / 4^(bits-1)
  for (int bits = 1; bits <= 4; ++bits) {
    SdcIndex idx(256, bits, Metric::kIP);
    std::vector<uint8_t> c(idx.geometry().code_bytes, 0xFF);
    idx.add(c.data(), 1, nullptr, 0);
    Result r = run(idx, c, 1, 1, 1);
    const double m = (1 << bits) - 1, s = 1 << (bits - 1);
    EXPECT_EQ(r.i[0], 0);
    EXPECT_FLOAT_EQ(r.s[0], static_cast<float>(256 * m * m / (s * s)));
  }
}

TEST(SdcIndex, WorkerExceptionsReachTheCaller) {
  std::mt19937_64 rng(3);
  SdcIndex idx(64, 2, Metric::kIP);
  const int64_t n = 600000;  // enough work (block-queries) for 2 threads at nq = 1
  auto codes = random_codes(rng, idx.geometry(), n);
  idx.add(codes.data(), n, nullptr, 0);
  auto q = random_codes(rng, idx.geometry(), 40);
  for (int64_t nq : {1, 40}) {  // database split and query split
    for (int64_t item : {0, 1, 2}) {
      bebr::testing_fail_item = item;
      EXPECT_THROW(run(idx, q, nq, 5, 2), std::runtime_error) << "nq=" << nq << " item=" << item;
    }
    bebr::testing_fail_item = -1;
    const Result a = run(idx, q, nq, 5, 1), b = run(idx, q, nq, 5, 2);
    EXPECT_EQ(a.i, b.i);
  }
}

TEST(SdcIndex, RejectsBadArguments) {
  EXPECT_THROW(SdcIndex(0, 1, Metric::kIP), std::invalid_argument);
  EXPECT_THROW(SdcIndex(8, 5, Metric::kIP), std::invalid_argument);
  SdcIndex idx(8, 1, Metric::kIP);
  std::vector<uint8_t> c(2, 0);
  int64_t ids[2] = {3, 3};
  EXPECT_THROW(idx.add(c.data(), 2, ids, 0), std::invalid_argument);
  int64_t gone = 9;
  EXPECT_THROW(idx.remove(&gone, 1), std::invalid_argument);
  std::vector<float> s(1);
  std::vector<int64_t> i(1);
  EXPECT_THROW(idx.search(c.data(), 1, 0, 1, {}, s.data(), i.data()), std::invalid_argument);
}

}  // namespace

// IdMap (the index's id -> slot table) against std::unordered_map under random inserts,
// erases (tombstones) and rehashes; keys are read through a slot -> id array as in SdcIndex.
TEST(IdMap, MatchesUnorderedMap) {
  std::mt19937_64 rng(11);
  for (int round = 0; round < 4; ++round) {
    bebr::IdMap m;
    std::unordered_map<int64_t, int64_t> ref;
    std::vector<int64_t> ids;  // slot -> id (-1 once erased)
    const int64_t span = round % 2 ? 1 << 30 : 3000;  // sparse / dense ids
    for (int step = 0; step < 20000; ++step) {
      const int64_t id = static_cast<int64_t>(rng() % span);
      if (rng() % 3) {
        if (!ref.count(id)) {
          ids.push_back(id);
          m.insert(id, static_cast<int64_t>(ids.size()) - 1, ids.data());
          ref[id] = static_cast<int64_t>(ids.size()) - 1;
        }
      } else {
        const bool had = ref.erase(id) > 0;
        const int64_t s = m.find(id, ids.data());
        ASSERT_EQ(m.erase(id, ids.data()), had);
        if (had) ids[s] = -1;
      }
      const int64_t probe = static_cast<int64_t>(rng() % span);
      const auto it = ref.find(probe);
      ASSERT_EQ(m.find(probe, ids.data()), it == ref.end() ? -1 : it->second);
      ASSERT_EQ(m.size(), ref.size());
    }
    for (const auto& [id, slot] : ref) ASSERT_EQ(m.find(id, ids.data()), slot);
  }
}
