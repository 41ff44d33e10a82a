// GoogleTest: IvfIndex's probed-list scan against SdcIndex (the flat scan) at every SIMD level:
// probing every list gives the flat results bit for bit; a partial probe returns exactly the
// flat results restricted to the probed lists' items; threads change nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "index.h"
#include "ivf.h"

namespace {

using bebr::Metric;

std::vector<uint8_t> codes_of(std::mt19937_64& rng, const bebr::Geometry& g, int64_t n) {
  std::vector<uint8_t> c(static_cast<size_t>(n) * g.code_bytes);
  for (int64_t i = 0; i < n; ++i)
    for (int t = 0; t < g.bits; ++t)
      for (int p = 0; p < g.plane_bytes; ++p) {
        uint8_t b = static_cast<uint8_t>(rng());
        const int valid = g.dim - 8 * p;
        if (valid < 8) b &= static_cast<uint8_t>((1u << valid) - 1);
        c[i * g.code_bytes + t * g.plane_bytes + p] = b;
      }
  return c;
}

struct Pair {
  bebr::SdcIndex flat;
  bebr::IvfIndex ivf;
  std::vector<uint8_t> codes;
  Pair(int dim, int bits, Metric m, int nlist, int64_t n, std::mt19937_64& rng)
      : flat(dim, bits, m), ivf(dim, bits, m, nlist) {
    codes = codes_of(rng, flat.geometry(), n);
    std::normal_distribution<float> nd;
    std::vector<float> c(static_cast<size_t>(nlist) * dim);
    for (auto& v : c) v = nd(rng);
    ivf.set_centroids(c.data());
    flat.add(codes.data(), n, nullptr, 0);
    ivf.add(codes.data(), n, nullptr, 0);
  }
};

class IvfLevels : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override { bebr::set_simd_level(bebr::available_simd_levels().back()); }
};

TEST_P(IvfLevels, FullProbeEqualsFlatScan) {
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(11);
  for (int bits : {1, 2, 3, 4})
    for (Metric m : {Metric::kIP, Metric::kCosine}) {
      Pair s(33 + 8 * bits, bits, m, 7, 900, rng);
      const int qbits = bits <= 2 ? 4 : 7;
      const bebr::Geometry qg(s.flat.geometry().dim, qbits);
      auto q = codes_of(rng, qg, 5);
      const int k = 17;
      std::vector<float> fs(5 * k), is(5 * k);
      std::vector<int64_t> fi(5 * k), ii(5 * k);
      s.flat.search(q.data(), 5, k, 1, {}, fs.data(), fi.data(), qbits);
      for (int threads : {1, 3}) {
        s.ivf.search(q.data(), 5, k, 7, threads, {}, is.data(), ii.data(), qbits);
        EXPECT_EQ(fi, ii) << "bits " << bits;
        EXPECT_EQ(fs, is) << "bits " << bits;
      }
    }
}

TEST_P(IvfLevels, PartialProbeIsTheFlatScanOfTheProbedLists) {
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(12);
  Pair s(64, 2, Metric::kIP, 9, 1500, rng);
  const bebr::Geometry qg(64, 4);
  auto q = codes_of(rng, qg, 1);
  std::vector<int32_t> lists(3), assign(1500);
  s.ivf.probe(q.data(), 1, 3, 4, lists.data());
  s.ivf.assign_lists(s.codes.data(), 1500, assign.data());
  std::vector<int64_t> allow;
  for (int64_t i = 0; i < 1500; ++i)
    if (std::count(lists.begin(), lists.end(), assign[i])) allow.push_back(i);
  bebr::FilterSpec f;
  f.allow_ids = allow.data();
  f.n_allow_ids = static_cast<int64_t>(allow.size());
  const int k = 25;
  std::vector<float> fs(k), is(k);
  std::vector<int64_t> fi(k), ii(k);
  s.flat.search(q.data(), 1, k, 1, f, fs.data(), fi.data(), 4);
  s.ivf.search(q.data(), 1, k, 3, 1, {}, is.data(), ii.data(), 4);
  EXPECT_EQ(fi, ii);
  EXPECT_EQ(fs, is);
}

// Narrow ids (read by the kernels in place, ScanArgs::ids32) and wide ids (an id >= 2^32 - 1
// widens the index) give the flat index's results, single queries (lists scanned in probe
// order) and batches, cosine lists with their per-block norm bounds, after removals and a
// compaction.
TEST_P(IvfLevels, NarrowAndWideIdsMatchTheFlatScan) {
  bebr::set_simd_level(GetParam());
  std::mt19937_64 rng(12);
  for (bool wide : {false, true})
    for (Metric m : {Metric::kIP, Metric::kCosine}) {
      const int dim = 64, bits = 2, nlist = 5;
      const int64_t n = 1500;
      bebr::SdcIndex flat(dim, bits, m);
      bebr::IvfIndex ivf(dim, bits, m, nlist);
      auto codes = codes_of(rng, flat.geometry(), n);
      std::normal_distribution<float> nd;
      std::vector<float> c(static_cast<size_t>(nlist) * dim);
      for (auto& v : c) v = nd(rng);
      ivf.set_centroids(c.data());
      std::vector<int64_t> ids(n);
      for (int64_t i = 0; i < n; ++i) ids[i] = wide ? (int64_t(1) << 40) + 5 * i : 5 * i;
      flat.add(codes.data(), n, ids.data(), 0);
      ivf.add(codes.data(), n, ids.data(), 0);
      const bebr::Geometry qg(dim, 4);
      auto q = codes_of(rng, qg, 6);
      for (int round = 0; round < 3; ++round) {
        if (round == 1) {
          std::vector<int64_t> rm;
          for (int64_t i = 0; i < n; i += 3) rm.push_back(ids[i]);
          flat.remove(rm.data(), static_cast<int64_t>(rm.size()));
          ivf.remove(rm.data(), static_cast<int64_t>(rm.size()));
        }
        if (round == 2) ivf.compact();
        for (int nq : {1, 6}) {
          const int k = 9;
          std::vector<float> fs(nq * k), is(nq * k);
          std::vector<int64_t> fi(nq * k), ii(nq * k);
          flat.search(q.data(), nq, k, 1, {}, fs.data(), fi.data(), 4);
          ivf.search(q.data(), nq, k, nlist, 1, {}, is.data(), ii.data(), 4);
          EXPECT_EQ(fi, ii) << "wide " << wide << " round " << round << " nq " << nq;
          EXPECT_EQ(fs, is) << "wide " << wide << " round " << round << " nq " << nq;
        }
      }
    }
}

INSTANTIATE_TEST_SUITE_P(All, IvfLevels, ::testing::ValuesIn(bebr::available_simd_levels()));

TEST(IvfIndex, RejectsBadArguments) {
  EXPECT_THROW(bebr::IvfIndex(8, 1, Metric::kIP, 0), std::invalid_argument);
  EXPECT_THROW(bebr::IvfIndex(8, 1, Metric::kHamming, 4), std::invalid_argument);
  bebr::IvfIndex idx(8, 1, Metric::kIP, 2);
  std::vector<uint8_t> c(1, 0);
  EXPECT_THROW(idx.add(c.data(), 1, nullptr, 0), std::invalid_argument);  // untrained
  std::vector<float> s(1);
  std::vector<int64_t> i(1);
  EXPECT_THROW(idx.search(c.data(), 1, 1, 1, 1, {}, s.data(), i.data()), std::invalid_argument);
  std::vector<float> cent(16, 0.f);
  idx.set_centroids(cent.data());
  EXPECT_THROW(idx.search(c.data(), 1, 1, 0, 1, {}, s.data(), i.data()), std::invalid_argument);
  EXPECT_THROW(idx.search(c.data(), 1, 0, 1, 1, {}, s.data(), i.data()), std::invalid_argument);
}

TEST(IvfIndex, IdTableIsBuiltOnFirstLookupAndFollowsCompaction) {
  std::mt19937_64 rng(21);
  Pair s(40, 2, Metric::kCosine, 5, 2000, rng);
  EXPECT_FALSE(s.ivf.id_table_built());
  EXPECT_EQ(s.ivf.memory_breakdown().at("id_table"), 0u);
  EXPECT_EQ(s.ivf.memory_breakdown().at("ids"), 4u * 2000);  // narrow ids
  std::vector<int64_t> rm;
  for (int64_t i = 0; i < 2000; i += 3) rm.push_back(i);
  s.ivf.remove(rm.data(), static_cast<int64_t>(rm.size()));
  s.flat.remove(rm.data(), static_cast<int64_t>(rm.size()));
  EXPECT_TRUE(s.ivf.id_table_built());
  s.ivf.compact();  // slots move: the table follows
  for (int64_t id = 0; id < 2000; ++id) EXPECT_EQ(s.ivf.contains(id), id % 3 != 0) << id;
  std::vector<uint8_t> a(s.flat.geometry().code_bytes), b(a.size());
  for (int64_t id : {1, 2, 1999}) {
    s.ivf.get_codes(&id, 1, a.data(), nullptr);
    s.flat.get_codes(&id, 1, b.data(), nullptr);
    EXPECT_EQ(a, b) << id;
  }
}

TEST(Rerank, Sq8BestFirstTiesToSmallerIdAndSkipsEmptyCandidates) {
  // 3 rows of d = 9 (the AVX2 body and its scalar tail); rows 0 and 2 score the same
  const int d = 9;
  std::vector<uint8_t> rows(3 * d, 0);
  for (int j = 0; j < d; ++j) rows[0 * d + j] = rows[2 * d + j] = 2, rows[1 * d + j] = 1;
  std::vector<float> lo(d, 0.f), step(d, 0.5f), q(d, 1.f);
  const std::vector<int64_t> cand = {2, -1, 1, 0};
  std::vector<float> sc(3);
  std::vector<int64_t> id(3);
  bebr::rerank_sq8(cand.data(), 1, 4, rows.data(), 3, d, lo.data(), step.data(), q.data(), false, 3, 1, sc.data(),
                   id.data());
  EXPECT_EQ(id, (std::vector<int64_t>{0, 2, 1}));
  EXPECT_FLOAT_EQ(sc[0], 9.f);
  EXPECT_FLOAT_EQ(sc[2], 4.5f);
  std::vector<float> sc5(5);
  std::vector<int64_t> id5(5);
  bebr::rerank_sq8(cand.data(), 1, 4, rows.data(), 3, d, lo.data(), step.data(), q.data(), true, 5, 2, sc5.data(),
                   id5.data());
  EXPECT_EQ(id5, (std::vector<int64_t>{0, 1, 2, -1, -1}));  // cosine: all 1, ties by id
  EXPECT_EQ(sc5[4], -std::numeric_limits<float>::infinity());
  const std::vector<int64_t> bad = {3};
  EXPECT_THROW(bebr::rerank_sq8(bad.data(), 1, 1, rows.data(), 3, d, lo.data(), step.data(), q.data(), false, 1, 1,
                                sc.data(), id.data()),
               std::invalid_argument);
}

}  // namespace
