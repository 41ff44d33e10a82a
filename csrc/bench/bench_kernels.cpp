// Google Benchmark: SdcIndex search throughput per SIMD level (items scanned per second).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "dispatch.h"
#include "index.h"

namespace {

void BM_Search(benchmark::State& st, const std::string& level) {
  const int dim = 256, bits = static_cast<int>(st.range(0));
  const int64_t n = st.range(1), nq = st.range(2);
  bebr::set_simd_level(level);
  bebr::SdcIndex idx(dim, bits, bebr::Metric::kIP);
  const auto& g = idx.geometry();
  std::mt19937_64 rng(1);
  std::vector<uint8_t> codes(n * g.code_bytes), q(nq * g.code_bytes);
  for (auto& b : codes) b = static_cast<uint8_t>(rng());
  for (auto& b : q) b = static_cast<uint8_t>(rng());
  idx.add(codes.data(), n, nullptr, 0);
  std::vector<float> s(nq * 10);
  std::vector<int64_t> i(nq * 10);
  for (auto _ : st) {
    idx.search(q.data(), nq, 10, 1, {}, s.data(), i.data());
    benchmark::DoNotOptimize(i.data());
  }
  st.SetItemsProcessed(st.iterations() * n * nq);
  st.SetBytesProcessed(st.iterations() * n * g.code_bytes);
}

void register_all() {
  for (const auto& level : bebr::available_simd_levels()) {
    auto* b = benchmark::RegisterBenchmark(("search/" + level).c_str(), BM_Search, level);
    for (int bits : {1, 2, 4})
      for (int nq : {1, 16}) b->Args({bits, level == "scalar" ? 20000 : 200000, nq});
    b->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
