// GoogleTest: SIMD level selection from CPU features, SHA-256, SdcIndex ids (assignment under
// the lock, the largest id), write_dense (the index file's data area) and the search thread
// plan (min_parallel_work, last_search_stats).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dispatch.h"
#include "index.h"
#include "sha256.h"

namespace {

using bebr::Metric;
using bebr::SdcIndex;
using Levels = std::vector<std::string>;

// ---------------------------------------------------------------- level selection
constexpr uint64_t kBase = bebr::kSse3 | bebr::kSsse3 | bebr::kSse41 | bebr::kSse42 | bebr::kPopcnt |
                           bebr::kXsave | bebr::kAvx | bebr::kAvx2 | bebr::kOsYmm | bebr::kOsZmm;
constexpr uint64_t kSkylakeX = kBase | bebr::kAvx512F | bebr::kAvx512Bw | bebr::kAvx512Dq | bebr::kAvx512Vl;
constexpr uint64_t kCascadeLake = kSkylakeX | bebr::kAvx512Vnni;  // also Cooper Lake: no BITALG
constexpr uint64_t kIceLake = kCascadeLake | bebr::kAvx512Bitalg | bebr::kAvx512Vbmi;
constexpr uint64_t kSapphireRapids = kIceLake | bebr::kAmxTile | bebr::kAmxInt8 | bebr::kOsAmx;
constexpr uint64_t kZen3 = kBase;
constexpr uint64_t kZen4 = kIceLake;  // AVX-512 with VNNI, BITALG, VBMI; no AMX

TEST(LevelsFor, CpuModels) {
  EXPECT_EQ(bebr::levels_for(0), (Levels{"scalar"}));
  EXPECT_EQ(bebr::levels_for(kZen3), (Levels{"scalar", "avx2"}));
  EXPECT_EQ(bebr::levels_for(kSkylakeX), (Levels{"scalar", "avx2"}));
  EXPECT_EQ(bebr::levels_for(kCascadeLake), (Levels{"scalar", "avx2"}));
  EXPECT_EQ(bebr::levels_for(kIceLake), (Levels{"scalar", "avx2", "avx512"}));
  EXPECT_EQ(bebr::levels_for(kZen4), (Levels{"scalar", "avx2", "avx512"}));
  EXPECT_EQ(bebr::levels_for(kSapphireRapids), (Levels{"scalar", "avx2", "avx512", "amx"}));
}

TEST(LevelsFor, OsStateAndEveryCompiledFeatureRequired) {
  // the OS must save the vector state: no ymm -> no avx2, no zmm -> no avx512, no tiles -> no amx
  EXPECT_EQ(bebr::levels_for(kIceLake & ~bebr::kOsYmm), (Levels{"scalar"}));
  EXPECT_EQ(bebr::levels_for(kIceLake & ~bebr::kOsZmm), (Levels{"scalar", "avx2"}));
  EXPECT_EQ(bebr::levels_for(kSapphireRapids & ~bebr::kOsAmx), (Levels{"scalar", "avx2", "avx512"}));
  // dropping any one feature of a level's compile flags drops that level (and those above)
  for (uint64_t bit = 1; bit <= bebr::kOsAmx; bit <<= 1) {
    const Levels got = bebr::levels_for(kSapphireRapids & ~bit);
    if (bebr::kLevelAvx2 & bit) EXPECT_EQ(got, (Levels{"scalar"})) << bit;
    else if (bebr::kLevelAvx512 & bit) EXPECT_EQ(got, (Levels{"scalar", "avx2"})) << bit;
    else EXPECT_EQ(got, (Levels{"scalar", "avx2", "avx512"})) << bit;
  }
}

TEST(LevelsFor, AvailableLevelsFollowThisCpu) {
  const Levels pure = bebr::levels_for(bebr::cpu_features());
  const Levels avail = bebr::available_simd_levels();
  // compiled-in levels only, never one the CPU lacks
  for (const auto& l : avail) EXPECT_NE(std::find(pure.begin(), pure.end(), l), pure.end()) << l;
  EXPECT_EQ(avail.front(), "scalar");
}

// ---------------------------------------------------------------- SHA-256
std::string sha(const std::string& s, size_t piece = 0) {
  bebr::Sha256 h;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  if (!piece) piece = s.size() ? s.size() : 1;
  for (size_t i = 0; i < s.size(); i += piece) h.update(p + i, std::min(piece, s.size() - i));
  return h.hex();
}

TEST(Sha256, KnownVectors) {  // FIPS 180-4 examples
  EXPECT_EQ(sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  for (size_t piece : {size_t(1), size_t(63), size_t(64), size_t(65), size_t(4096), size_t(0)})
    EXPECT_EQ(sha(million, piece), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") << piece;
}

// ---------------------------------------------------------------- ids
std::vector<uint8_t> zeros(const SdcIndex& idx, int64_t n) {
  return std::vector<uint8_t>(static_cast<size_t>(n) * idx.geometry().code_bytes, 0);
}

TEST(SdcIndexIds, ConcurrentAddsWithoutIdsGetDistinctIds) {
  SdcIndex idx(16, 1, Metric::kIP);
  constexpr int kThreads = 4, kRounds = 200, kBatch = 7;
  std::vector<std::vector<int64_t>> firsts(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      auto c = zeros(idx, kBatch);
      for (int r = 0; r < kRounds; ++r) firsts[t].push_back(idx.add(c.data(), kBatch, nullptr, t));
    });
  for (auto& t : ts) t.join();
  std::vector<int64_t> all;
  for (auto& f : firsts)
    for (int64_t x : f)
      for (int j = 0; j < kBatch; ++j) all.push_back(x + j);
  std::sort(all.begin(), all.end());
  ASSERT_EQ(static_cast<int64_t>(all.size()), idx.size());
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<int64_t>(i));
  EXPECT_EQ(idx.next_id(), idx.size());
}

TEST(SdcIndexIds, LargestIdAndNoOverflow) {
  SdcIndex idx(16, 1, Metric::kIP);
  auto c = zeros(idx, 2);
  int64_t sentinel = std::numeric_limits<int64_t>::max();
  EXPECT_THROW(idx.add(c.data(), 1, &sentinel, 0), std::invalid_argument);
  EXPECT_THROW(idx.upsert(c.data(), 1, &sentinel, 0), std::invalid_argument);
  EXPECT_EQ(idx.size(), 0);
  int64_t top = bebr::kMaxId;
  idx.add(c.data(), 1, &top, 0);
  EXPECT_EQ(idx.next_id(), std::numeric_limits<int64_t>::max());  // kMaxId + 1, no overflow
  EXPECT_THROW(idx.add(c.data(), 1, nullptr, 0), std::invalid_argument);  // no id left to assign
  EXPECT_EQ(idx.size(), 1);
  std::vector<float> s(1);
  std::vector<int64_t> i(1);
  idx.search(c.data(), 1, 1, 1, {}, s.data(), i.data());
  EXPECT_EQ(i[0], bebr::kMaxId);  // a real result, not the -1 of an empty one
  // assign refuses the sentinel and an out-of-range next_id
  SdcIndex other(16, 1, Metric::kIP);
  std::vector<uint8_t> blk(other.geometry().block_bytes, 0);
  int32_t v = 0;
  EXPECT_THROW(other.assign(blk.data(), false, 1, &sentinel, &v, nullptr, 0), std::invalid_argument);
  int64_t one = 1;
  EXPECT_THROW(other.assign(blk.data(), false, 1, &one, &v, nullptr, -5), std::invalid_argument);
}

// ---------------------------------------------------------------- write_dense
struct TmpFile {
  std::string path;
  int fd = -1;
  TmpFile() {
    char tmpl[] = "/tmp/bebr_test_XXXXXX";
    fd = mkstemp(tmpl);
    path = tmpl;
  }
  ~TmpFile() {
    close(fd);
    std::remove(path.c_str());
  }
  std::vector<uint8_t> read_all() const {
    std::vector<uint8_t> out(static_cast<size_t>(lseek(fd, 0, SEEK_END)));
    EXPECT_EQ(pread(fd, out.data(), out.size(), 0), static_cast<ssize_t>(out.size()));
    return out;
  }
};

TEST(WriteDense, SectionsRoundTripThroughAssign) {
  std::mt19937_64 rng(5);
  for (Metric m : {Metric::kIP, Metric::kCosine}) {
    for (bool removals : {false, true}) {
      SdcIndex idx(40, 2, m);
      const bebr::Geometry& g = idx.geometry();
      const int64_t n = 300;
      std::vector<uint8_t> codes(n * g.code_bytes);
      for (auto& b : codes) b = static_cast<uint8_t>(rng());
      idx.add(codes.data(), n, nullptr, 3);
      if (removals) {
        std::vector<int64_t> rm;
        for (int64_t i = 0; i < n; i += 3) rm.push_back(i);
        idx.remove(rm.data(), static_cast<int64_t>(rm.size()));  // tombstones, not compacted
      }
      TmpFile f;
      const bebr::DenseFileInfo info = idx.write_dense(f.fd, 128);
      EXPECT_EQ(info.n, idx.size());
      EXPECT_EQ(info.next_id, n);
      const std::vector<uint8_t> file = f.read_all();
      ASSERT_EQ(info.sections.size(), 4u);
      const uint8_t* sec[4];
      for (int s = 0; s < 4; ++s) {
        const auto& e = info.sections[s];
        EXPECT_EQ(e.offset % 64, 0);
        sec[s] = file.data() + 128 + e.offset;
        bebr::Sha256 h;
        h.update(sec[s], static_cast<size_t>(e.nbytes));
        EXPECT_EQ(h.hex(), e.sha256) << e.name;
      }
      const auto& last = info.sections.back();
      EXPECT_EQ(static_cast<int64_t>(file.size()), 128 + last.offset + (last.nbytes + 63) / 64 * 64);
      SdcIndex back(40, 2, m);
      back.assign(sec[0], false, info.n, reinterpret_cast<const int64_t*>(sec[1]),
                  reinterpret_cast<const int32_t*>(sec[2]), reinterpret_cast<const float*>(sec[3]), info.next_id);
      EXPECT_EQ(back.ids(), idx.ids());
      EXPECT_EQ(back.versions(), idx.versions());
      std::vector<uint8_t> q(codes.begin(), codes.begin() + 5 * g.code_bytes);
      const int k = 10;
      std::vector<float> s1(5 * k), s2(5 * k);
      std::vector<int64_t> i1(5 * k), i2(5 * k);
      idx.search(q.data(), 5, k, 1, {}, s1.data(), i1.data());
      back.search(q.data(), 5, k, 1, {}, s2.data(), i2.data());
      EXPECT_EQ(i1, i2);
      EXPECT_EQ(s1, s2);
    }
  }
}

TEST(WriteDense, ConsistentWhileAnotherThreadAddsAndRemoves) {
  SdcIndex idx(64, 1, Metric::kCosine);
  std::mt19937_64 rng(9);
  std::vector<uint8_t> c(500 * idx.geometry().code_bytes);
  for (auto& b : c) b = static_cast<uint8_t>(rng() | 1);
  idx.add(c.data(), 500, nullptr, 0);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop) {
      const int64_t first = idx.add(c.data(), 500, nullptr, 0);
      std::vector<int64_t> rm;
      for (int64_t i = first; i < first + 500; i += 2) rm.push_back(i);
      idx.remove(rm.data(), static_cast<int64_t>(rm.size()));
    }
  });
  for (int round = 0; round < 15; ++round) {
    TmpFile f;
    const bebr::DenseFileInfo info = idx.write_dense(f.fd, 0);
    const std::vector<uint8_t> file = f.read_all();
    const auto& ids = info.sections[1];
    ASSERT_EQ(ids.count, info.n);
    SdcIndex back(64, 1, Metric::kCosine);
    back.assign(file.data() + info.sections[0].offset, false, info.n,
                reinterpret_cast<const int64_t*>(file.data() + ids.offset),
                reinterpret_cast<const int32_t*>(file.data() + info.sections[2].offset),
                reinterpret_cast<const float*>(file.data() + info.sections[3].offset), info.next_id);
    EXPECT_EQ(back.size(), info.n);
  }
  stop = true;
  writer.join();
}

// ---------------------------------------------------------------- thresholds
class Levels_ : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override { bebr::set_simd_level(bebr::available_simd_levels().back()); }
};

// A calibration that maps one version's scores far below the int32 range: the heap threshold
// then lies far below every integer score of the other items (before: a float -> int32 cast
// out of range, undefined behaviour, caught by the sanitizer build).
TEST_P(Levels_, OutOfRangeCalibratedThresholds) {
  SdcIndex idx(64, 2, Metric::kIP);
  std::mt19937_64 rng(13);
  const int64_t n = 256;  // 4 blocks, versions 1 and 2 alternating
  std::vector<uint8_t> c(n * idx.geometry().code_bytes);
  for (auto& b : c) b = static_cast<uint8_t>(rng());
  for (int64_t i = 0; i < n; ++i) idx.upsert(c.data() + i * idx.geometry().code_bytes, 1, &i, 1 + int32_t(i % 2));
  const int k = 5;
  int32_t vers[1] = {1};
  const uint8_t* vcodes[1] = {c.data()};
  for (float shift : {-1e30f, 1e30f, -3e9f, 3e9f}) {
    float scale[1] = {1.f}, sh[1] = {shift};
    bebr::VersionQueries vq{1, vers, vcodes, scale, sh};
    std::vector<float> s(k), want_s(k);
    std::vector<int64_t> i(k), want_i(k);
    bebr::set_simd_level("scalar");
    idx.search(c.data(), 1, k, 1, {}, want_s.data(), want_i.data(), 0, vq);
    bebr::set_simd_level(GetParam());
    idx.search(c.data(), 1, k, 1, {}, s.data(), i.data(), 0, vq);
    EXPECT_EQ(i, want_i) << shift;
    EXPECT_EQ(s, want_s) << shift;
    for (int j = 0; j < k; ++j) EXPECT_EQ(want_i[j] % 2, shift < 0 ? 1 : 0) << shift;  // version 2 / 1 first
  }
}
// Plane pruning decides alike at every level (the scalar reference's decisions), and an
// allowance above every low-plane sum is the exact search; a negative one is refused.
TEST_P(Levels_, PlanePruningMatchesScalar) {
  for (Metric metric : {Metric::kIP, Metric::kCosine}) {
    SdcIndex idx(96, 2, metric);
    std::mt19937_64 rng(17);
    const int64_t n = 64 * 30 + 7;
    std::vector<uint8_t> c(n * idx.geometry().code_bytes);
    for (auto& b : c) b = static_cast<uint8_t>(rng());
    idx.add(c.data(), n, nullptr, 0);
    const int k = 10;
    std::vector<uint8_t> q(3 * 4 * 12);
    for (auto& b : q) b = static_cast<uint8_t>(rng());
    for (int nq : {1, 3})  // one query: the seeded scan (kernels.h SeedPicker); three: a group
    for (float prune : {0.5f, 2.f, 1e6f}) {
      std::vector<float> s(nq * k), want_s(nq * k), exact_s(nq * k);
      std::vector<int64_t> i(nq * k), want_i(nq * k), exact_i(nq * k);
      bebr::set_simd_level("scalar");
      idx.search(q.data(), nq, k, 1, {}, want_s.data(), want_i.data(), 4, {}, prune);
      bebr::set_simd_level(GetParam());
      idx.search(q.data(), nq, k, 1, {}, s.data(), i.data(), 4, {}, prune);
      EXPECT_EQ(i, want_i) << prune;
      EXPECT_EQ(s, want_s) << prune;
      if (prune > 1e5f) {
        idx.search(q.data(), nq, k, 1, {}, exact_s.data(), exact_i.data(), 4);
        EXPECT_EQ(i, exact_i);
        EXPECT_EQ(s, exact_s);
      }
    }
    std::vector<float> s(k);
    std::vector<int64_t> i(k);
    EXPECT_THROW(idx.search(q.data(), 1, k, 1, {}, s.data(), i.data(), 4, {}, -1.f), std::invalid_argument);
  }
}
INSTANTIATE_TEST_SUITE_P(AllLevels, Levels_, ::testing::ValuesIn(bebr::available_simd_levels()));

// ---------------------------------------------------------------- thread plan
TEST(SearchStats, MinParallelWorkDecidesTheWorkers) {
  SdcIndex idx(1024, 2, Metric::kIP);  // 16 KiB blocks: 16 per cache chunk
  const int64_t n = 64 * 40;            // 40 blocks: 3 chunks
  std::mt19937_64 rng(1);
  std::vector<uint8_t> c(n * idx.geometry().code_bytes);
  for (auto& b : c) b = static_cast<uint8_t>(rng());
  idx.add(c.data(), n, nullptr, 0);
  const int k = 5;
  auto search = [&](int64_t nq, int threads) {
    std::vector<float> s(nq * k);
    std::vector<int64_t> i(nq * k);
    idx.search(c.data(), nq, k, threads, {}, s.data(), i.data());
    return i;
  };
  EXPECT_THROW(bebr::set_min_parallel_work(0), std::invalid_argument);
  const int64_t saved = bebr::min_parallel_work();
  EXPECT_EQ(saved, 4096);
  const auto one = search(1, 1);
  EXPECT_EQ(search(1, 4), one);  // 40 block-queries: under 4096, one thread
  EXPECT_EQ(bebr::last_search_stats().workers, 1);
  bebr::set_min_parallel_work(10);
  EXPECT_EQ(search(1, 4), one);  // 40 / 10: four threads over chunks of the database
  EXPECT_EQ(bebr::last_search_stats().workers, 4);
  EXPECT_EQ(bebr::last_search_stats().items, 3);
  EXPECT_STREQ(bebr::last_search_stats().split, "database");
  const int64_t nq = 200;
  const auto many = search(nq, 1);
  EXPECT_EQ(bebr::last_search_stats().workers, 1);
  EXPECT_EQ(search(nq, 3), many);  // query groups of 16 over the whole database
  const bebr::SearchStats st = bebr::last_search_stats();
  EXPECT_EQ(st.workers, 3);
  EXPECT_STREQ(st.split, "queries");
  EXPECT_GE(st.active_workers, 1);
  EXPECT_LE(st.active_workers, 3);
  bebr::set_min_parallel_work(saved);
}

}  // namespace
