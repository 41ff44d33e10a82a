// IvfIndex implementation: coarse assignment, list bookkeeping and the probed-list search
// (see ivf.h for the layout).
#include "ivf.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatch.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include "thread_pool.h"

namespace bebr {
namespace {

// centroid rows and query values are padded to a multiple of kPad floats: kPad partial sums
// (four 8-float vectors) keep the adds independent, so a dot is not bound by add latency
constexpr int kPad = 32;

int padded(int dim) { return (dim + kPad - 1) / kPad * kPad; }

// out[i * nlist + l] = <x_i, c_l> for m rows of x (each dp floats) and nlist centroid rows.
// kPad partial sums s[u] (u = j mod kPad) reduced in a fixed tree: the AVX2 version (four
// 8-lane accumulators, lane u of accumulator a = s[8a + u], multiply then add, no FMA) gives
// the same bits as the portable one.
inline float reduce_partials(float* s) {
  for (int w = kPad / 2; w >= 1; w /= 2)
    for (int u = 0; u < w; ++u) s[u] += s[u + w];
  return s[0];
}

void dot_rows_portable(const float* x, int m, const float* c, int nlist, int dp, float* out) {
  for (int l = 0; l < nlist; ++l) {
    const float* cl = c + static_cast<size_t>(l) * dp;
    for (int i = 0; i < m; ++i) {
      const float* xi = x + static_cast<size_t>(i) * dp;
      float s[kPad] = {};
      for (int j = 0; j < dp; j += kPad)
        for (int u = 0; u < kPad; ++u) s[u] += xi[j + u] * cl[j + u];
      out[static_cast<size_t>(i) * nlist + l] = reduce_partials(s);
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void dot_rows_avx2(const float* x, int m, const float* c, int nlist, int dp,
                                                   float* out) {
  for (int l = 0; l < nlist; ++l) {
    const float* cl = c + static_cast<size_t>(l) * dp;
    for (int i = 0; i < m; ++i) {
      const float* xi = x + static_cast<size_t>(i) * dp;
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int j = 0; j < dp; j += kPad)
        for (int v = 0; v < 4; ++v)
          a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(_mm256_loadu_ps(xi + j + 8 * v), _mm256_loadu_ps(cl + j + 8 * v)));
      alignas(32) float s[kPad];
      for (int v = 0; v < 4; ++v) _mm256_store_ps(s + 8 * v, a[v]);
      out[static_cast<size_t>(i) * nlist + l] = reduce_partials(s);
    }
  }
}
#endif

void dot_rows(const float* x, int m, const float* c, int nlist, int dp, float* out) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return dot_rows_avx2(x, m, c, nlist, dp, out);
#endif
  dot_rows_portable(x, m, c, nlist, dp, out);
}

// Code values of a packed code as floats, zero-padded to dp.
void float_values(const Geometry& geo, const uint8_t* packed, int dp, float* out) {
  thread_local std::vector<int32_t> v;
  v.resize(geo.dim);
  scaled_values(geo, packed, v.data());
  for (int j = 0; j < geo.dim; ++j) out[j] = static_cast<float>(v[j]);
  for (int j = geo.dim; j < dp; ++j) out[j] = 0.f;
}

// Run fn(t, item) for item in [0, nitems) on up to T threads (the caller is thread 0, helpers
// from the shared pool are 1..T-1); the first exception is rethrown once all claimed items end.
template <class Fn>
void parallel_items(int64_t nitems, int T, Fn&& fn) {
  if (nitems <= 0) return;
  if (T <= 1) {
    for (int64_t i = 0; i < nitems; ++i) fn(0, i);
    return;
  }
  struct Work {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::condition_variable cv;
    std::exception_ptr err;
  };
  auto work = std::make_shared<Work>();
  auto worker = [work, nitems, &fn](int t) {
    for (;;) {
      const int64_t item = work->next.fetch_add(1);
      if (item >= nitems) return;
      if (!work->failed.load()) {
        try {
          fn(t, item);
        } catch (...) {
          std::lock_guard<std::mutex> g(work->mu);
          if (!work->err) work->err = std::current_exception();
          work->failed.store(true);
        }
      }
      if (work->done.fetch_add(1) + 1 == nitems) {
        std::lock_guard<std::mutex> g(work->mu);
        work->cv.notify_all();
      }
    }
  };
  HelperPool::instance().post(std::make_shared<HelperPool::Task>(worker), T);
  worker(0);
  std::unique_lock<std::mutex> lk(work->mu);
  work->cv.wait(lk, [&] { return work->done.load() == nitems; });
  if (work->err) std::rethrow_exception(work->err);
}

}  // namespace

IvfIndex::IvfIndex(int dim, int bits, Metric metric, int nlist) : geo_(dim, bits), metric_(metric), nlist_(nlist) {
  if (metric == Metric::kHamming) throw std::invalid_argument("an IVF index scores 'ip' or 'cosine', not 'hamming'");
  if (nlist < 1 || nlist > (1 << 22))
    throw std::invalid_argument("nlist must be in [1, 4194304], got " + std::to_string(nlist));
  lists_.reserve(nlist);
  for (int l = 0; l < nlist; ++l) lists_.push_back(std::make_unique<SdcIndex>(dim, bits, metric));
}

bool IvfIndex::trained() const {
  std::shared_lock lk(mu_);
  return !centroids_.empty();
}

int64_t IvfIndex::size() const {
  std::shared_lock lk(mu_);
  return static_cast<int64_t>(gmap_.size());
}

int64_t IvfIndex::next_id() const {
  std::shared_lock lk(mu_);
  return next_id_;
}

void IvfIndex::check_trained() const {
  if (centroids_.empty()) throw std::invalid_argument("the IVF index is not trained (call train first)");
}

void IvfIndex::set_centroids(const float* c) {
  std::unique_lock lk(mu_);
  if (!(gmap_.size() == 0))
    throw std::invalid_argument("cannot set the centroids of a non-empty IVF index (" + std::to_string(gmap_.size()) +
                                " items are assigned to the current ones)");
  const int dp = padded(geo_.dim);
  std::vector<float> cp(static_cast<size_t>(nlist_) * dp, 0.f);
  for (int l = 0; l < nlist_; ++l)
    for (int j = 0; j < geo_.dim; ++j) {
      const float v = c[static_cast<size_t>(l) * geo_.dim + j];
      if (!std::isfinite(v))
        throw std::invalid_argument("centroid " + std::to_string(l) + " has a non-finite value at dim " + std::to_string(j));
      cp[static_cast<size_t>(l) * dp + j] = v;
    }
  centroids_.swap(cp);
}

std::vector<float> IvfIndex::centroids() const {
  std::shared_lock lk(mu_);
  std::vector<float> out;
  if (centroids_.empty()) return out;
  const int dp = padded(geo_.dim);
  out.resize(static_cast<size_t>(nlist_) * geo_.dim);
  for (int l = 0; l < nlist_; ++l)
    std::copy_n(centroids_.data() + static_cast<size_t>(l) * dp, geo_.dim, out.data() + static_cast<size_t>(l) * geo_.dim);
  return out;
}

void IvfIndex::assign_lists(const uint8_t* codes, int64_t n, int32_t* out) const {
  std::shared_lock lk(mu_);
  check_trained();
  assign_locked(codes, n, out);
}

void IvfIndex::assign_locked(const uint8_t* codes, int64_t n, int32_t* out) const {
  const int dp = padded(geo_.dim);
  constexpr int kTile = 8;  // items scored together over each centroid row (kept in L1)
  std::vector<float> x(static_cast<size_t>(kTile) * dp), sc(static_cast<size_t>(kTile) * nlist_);
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int m = static_cast<int>(std::min<int64_t>(kTile, n - i0));
    for (int i = 0; i < m; ++i) float_values(geo_, codes + (i0 + i) * geo_.code_bytes, dp, x.data() + i * dp);
    dot_rows(x.data(), m, centroids_.data(), nlist_, dp, sc.data());
    for (int i = 0; i < m; ++i) {
      const float* s = sc.data() + static_cast<size_t>(i) * nlist_;
      int best = 0;
      for (int l = 1; l < nlist_; ++l)
        if (s[l] > s[best]) best = l;
      out[i0 + i] = best;
    }
  }
}

void IvfIndex::top_lists(const Geometry& qgeo, const uint8_t* packed, int nprobe, float* scratch, int32_t* out) const {
  const int dp = padded(geo_.dim);
  float* x = scratch;
  float* sc = scratch + dp;
  float_values(qgeo, packed, dp, x);
  dot_rows(x, 1, centroids_.data(), nlist_, dp, sc);
  std::vector<int32_t> order(nlist_);
  for (int l = 0; l < nlist_; ++l) order[l] = l;
  auto better = [sc](int32_t a, int32_t b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); };
  if (nprobe < nlist_) std::nth_element(order.begin(), order.begin() + nprobe, order.end(), better);
  std::sort(order.begin(), order.begin() + nprobe, better);
  std::copy_n(order.data(), nprobe, out);
}

void IvfIndex::probe(const uint8_t* queries, int64_t nq, int nprobe, int query_bits, int32_t* out) const {
  if (nprobe <= 0) throw std::invalid_argument("nprobe must be >= 1, got " + std::to_string(nprobe));
  std::shared_lock lk(mu_);
  check_trained();
  nprobe = std::min(nprobe, nlist_);
  const Geometry qgeo(geo_.dim, query_bits == 0 ? geo_.bits : query_bits);
  std::vector<float> scratch(padded(geo_.dim) + nlist_);
  for (int64_t q = 0; q < nq; ++q) top_lists(qgeo, queries + q * qgeo.code_bytes, nprobe, scratch.data(), out + q * nprobe);
}

void IvfIndex::add(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  std::unique_lock lk(mu_);
  check_trained();
  std::vector<int64_t> gen;
  if (!ids) {
    gen.resize(n);
    for (int64_t i = 0; i < n; ++i) gen[i] = next_id_ + i;
    ids = gen.data();
  }
  // same checks and messages as SdcIndex::add
  std::unordered_map<int64_t, int64_t> seen;
  seen.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) throw std::invalid_argument("ids must be >= 0, got " + std::to_string(ids[i]) + " at position " + std::to_string(i));
    if (!seen.emplace(ids[i], i).second)
      throw std::invalid_argument("duplicate id " + std::to_string(ids[i]) + " in ids (positions " +
                                  std::to_string(seen[ids[i]]) + " and " + std::to_string(i) + ")");
    if (gmap_.contains(ids[i], gids_.data()))
      throw std::invalid_argument("id " + std::to_string(ids[i]) + " is already in the index (use upsert to replace it)");
  }
  add_locked(codes, n, ids, version);
}

void IvfIndex::add_locked(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  if (n == 0) return;
  std::vector<int32_t> dst(n);
  assign_locked(codes, n, dst.data());
  // group by list, keeping the input order inside each list
  std::vector<int64_t> count(nlist_ + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++count[dst[i] + 1];
  for (int l = 0; l < nlist_; ++l) count[l + 1] += count[l];
  std::vector<int64_t> order(n);
  {
    std::vector<int64_t> pos(count.begin(), count.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[pos[dst[i]]++] = i;
  }
  std::vector<uint8_t> c;
  std::vector<int64_t> d;
  for (int l = 0; l < nlist_; ++l) {
    const int64_t b = count[l], e = count[l + 1];
    if (b == e) continue;
    c.resize(static_cast<size_t>(e - b) * geo_.code_bytes);
    d.resize(e - b);
    for (int64_t j = b; j < e; ++j) {
      std::memcpy(c.data() + (j - b) * geo_.code_bytes, codes + order[j] * geo_.code_bytes, geo_.code_bytes);
      d[j - b] = ids[order[j]];
    }
    lists_[l]->add(c.data(), e - b, d.data(), version);
  }
  const int64_t s0 = static_cast<int64_t>(gids_.size());
  gids_.resize(s0 + n);
  glist_.resize(s0 + n);
  gmap_.reserve(static_cast<size_t>(n), gids_.data());
  for (int64_t i = 0; i < n; ++i) {
    gids_[s0 + i] = ids[i];
    glist_[s0 + i] = dst[i];
    gmap_.insert(ids[i], s0 + i, gids_.data());
    next_id_ = std::max(next_id_, ids[i] + 1);
  }
}

void IvfIndex::upsert(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  std::unique_lock lk(mu_);
  check_trained();
  std::unordered_map<int64_t, int64_t> seen;
  seen.reserve(static_cast<size_t>(n));
  std::vector<int64_t> present;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) throw std::invalid_argument("ids must be >= 0, got " + std::to_string(ids[i]) + " at position " + std::to_string(i));
    if (!seen.emplace(ids[i], i).second)
      throw std::invalid_argument("duplicate id " + std::to_string(ids[i]) + " in ids (positions " +
                                  std::to_string(seen[ids[i]]) + " and " + std::to_string(i) + ")");
    if (gmap_.contains(ids[i], gids_.data())) present.push_back(ids[i]);
  }
  // a replaced item may move to another list: remove, then add everything
  remove_locked(present.data(), static_cast<int64_t>(present.size()));
  add_locked(codes, n, ids, version);
}

void IvfIndex::remove(const int64_t* ids, int64_t n) {
  std::unique_lock lk(mu_);
  for (int64_t i = 0; i < n; ++i)
    if (!gmap_.contains(ids[i], gids_.data()))
      throw std::invalid_argument("cannot remove id " + std::to_string(ids[i]) + " (position " + std::to_string(i) +
                                  "): it is not in the index");
  remove_locked(ids, n);
}

void IvfIndex::remove_locked(const int64_t* ids, int64_t n) {
  if (n == 0) return;
  std::unordered_map<int32_t, std::vector<int64_t>> by_list;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = gmap_.find(ids[i], gids_.data());
    if (s < 0) continue;  // duplicate in ids
    by_list[glist_[s]].push_back(ids[i]);
    gmap_.erase(ids[i], gids_.data());  // before gids_[s] changes: entries are keyed by it
    gids_[s] = -1;
    ++gdead_;
  }
  for (auto& [l, v] : by_list) lists_[l]->remove(v.data(), static_cast<int64_t>(v.size()));
  if (gdead_ > std::max<int64_t>(static_cast<int64_t>(gids_.size()) / 2, 256)) rebuild_map();
}

void IvfIndex::rebuild_map() {
  std::vector<int64_t> ids;
  std::vector<int32_t> lst;
  ids.reserve(gmap_.size());
  lst.reserve(gmap_.size());
  for (size_t s = 0; s < gids_.size(); ++s)
    if (gids_[s] >= 0) {
      ids.push_back(gids_[s]);
      lst.push_back(glist_[s]);
    }
  gids_.swap(ids);
  glist_.swap(lst);
  gdead_ = 0;
  gmap_.clear();
  gmap_.reserve(gids_.size(), gids_.data());
  for (size_t s = 0; s < gids_.size(); ++s) gmap_.insert(gids_[s], static_cast<int64_t>(s), gids_.data());
}

void IvfIndex::compact() {
  std::unique_lock lk(mu_);
  for (auto& l : lists_) l->compact();
  if (gdead_) rebuild_map();
}

void IvfIndex::finish_assign(int64_t next_id) {
  // caller holds lock()
  gids_.clear();
  glist_.clear();
  gdead_ = 0;
  gmap_.clear();
  next_id_ = next_id;
  for (int l = 0; l < nlist_; ++l) {
    const SdcIndex& L = *lists_[l];
    for (int64_t s = 0; s < L.nslots_; ++s) {
      const int64_t id = L.ids_[s];
      if (id < 0) continue;
      gids_.push_back(id);
      glist_.push_back(l);
    }
  }
  gmap_.reserve(gids_.size(), gids_.data());
  for (size_t s = 0; s < gids_.size(); ++s) {
    if (gmap_.contains(gids_[s], gids_.data()))
      throw std::invalid_argument("id " + std::to_string(gids_[s]) + " is stored in two lists");
    gmap_.insert(gids_[s], static_cast<int64_t>(s), gids_.data());
    next_id_ = std::max(next_id_, gids_[s] + 1);
  }
}

bool IvfIndex::codes_external() const {
  std::shared_lock lk(mu_);
  for (const auto& l : lists_)
    if (l->codes_external()) return true;
  return false;
}

std::map<int32_t, int64_t> IvfIndex::versions() const {
  std::shared_lock lk(mu_);
  std::map<int32_t, int64_t> m;
  for (const auto& l : lists_)
    for (const auto& [v, c] : l->versions()) m[v] += c;
  return m;
}

std::vector<int64_t> IvfIndex::ids_of_version(int32_t v) const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out;
  for (const auto& l : lists_) {
    const auto part = l->ids_of_version(v);
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

std::vector<int64_t> IvfIndex::ids() const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out;
  out.reserve(gmap_.size());
  for (const auto& l : lists_) {
    const auto part = l->ids();
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

bool IvfIndex::contains(int64_t id) const {
  std::shared_lock lk(mu_);
  return gmap_.contains(id, gids_.data());
}

void IvfIndex::get_codes(const int64_t* ids, int64_t n, uint8_t* out, int32_t* versions) const {
  std::shared_lock lk(mu_);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = gmap_.find(ids[i], gids_.data());
    if (s < 0) throw std::invalid_argument("id " + std::to_string(ids[i]) + " is not in the index");
    lists_[glist_[s]]->get_codes(ids + i, 1, out + i * geo_.code_bytes, versions ? versions + i : nullptr);
  }
}

std::vector<int64_t> IvfIndex::list_sizes() const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out(nlist_);
  for (int l = 0; l < nlist_; ++l) out[l] = lists_[l]->size();
  return out;
}

size_t IvfIndex::memory_bytes() const {
  std::shared_lock lk(mu_);
  size_t b = centroids_.size() * sizeof(float) + gids_.capacity() * sizeof(int64_t) +
             glist_.capacity() * sizeof(int32_t) + gmap_.memory_bytes() + lists_.size() * sizeof(SdcIndex);
  for (const auto& l : lists_) b += l->memory_bytes();
  return b;
}

void IvfIndex::export_dense(std::vector<uint8_t>& codes, std::vector<int64_t>& ids, std::vector<int32_t>& versions,
                            std::vector<float>& invn, std::vector<int64_t>& sizes) {
  std::unique_lock lk(mu_);
  sizes.assign(nlist_, 0);
  for (int l = 0; l < nlist_; ++l) {
    SdcIndex& L = *lists_[l];
    L.compact();
    std::shared_lock ll(L.mu_);
    sizes[l] = L.nslots_;
    codes.insert(codes.end(), L.codes_, L.codes_ + L.codes_nbytes());
    ids.insert(ids.end(), L.ids_.begin(), L.ids_.begin() + L.nslots_);
    versions.insert(versions.end(), L.versions_.begin(), L.versions_.begin() + L.nslots_);
    if (metric_ == Metric::kCosine)
      invn.insert(invn.end(), L.invn_.begin(), L.invn_.begin() + (L.nslots_ + kBlock - 1) / kBlock * kBlock);
  }
}

void IvfIndex::search(const uint8_t* queries, int64_t nq, int k, int nprobe, int threads, const FilterSpec& filter,
                      float* out_scores, int64_t* out_ids, int query_bits, const VersionQueries& vq) const {
  // argument checks: those of SdcIndex::search, plus nprobe
  if (k <= 0) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
  if (nprobe <= 0) throw std::invalid_argument("nprobe must be >= 1, got " + std::to_string(nprobe));
  if (threads <= 0) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
  if (query_bits == 0) query_bits = geo_.bits;
  const int max_qbits = geo_.nibbles ? 7 : 4;
  if (query_bits < 1 || query_bits > max_qbits)
    throw std::invalid_argument("query_bits must be in [1, " + std::to_string(max_qbits) + "] over " +
                                std::to_string(geo_.bits) + "-bit codes, got " + std::to_string(query_bits));
  const Geometry qgeo(geo_.dim, query_bits);
  for (int v = 0; v < vq.n; ++v)
    for (int w = 0; w < v; ++w)
      if (vq.versions[v] == vq.versions[w])
        throw std::invalid_argument("version queries given twice for version " + std::to_string(vq.versions[v]));
  for (int v = 0; v < vq.n; ++v) {
    const float a = vq.scale ? vq.scale[v] : 1.f, b = vq.shift ? vq.shift[v] : 0.f;
    if (!(a > 0.f) || !std::isfinite(a) || !std::isfinite(b))
      throw std::invalid_argument("score calibration of version " + std::to_string(vq.versions[v]) +
                                  " must have a finite scale > 0 and a finite shift, got scale " +
                                  std::to_string(a) + ", shift " + std::to_string(b));
  }
  for (int64_t i = 0; i < nq * k; ++i) {
    out_scores[i] = -std::numeric_limits<float>::infinity();
    out_ids[i] = -1;
  }
  std::shared_lock lk(mu_);
  check_trained();
  if (nq == 0 || (gmap_.size() == 0)) return;
  nprobe = std::min(nprobe, nlist_);
  const KernelTable& kt = active_kernels();
  const size_t lut_bytes = static_cast<size_t>(2 * geo_.plane_bytes) * 16;
  const int nsets = 1 + vq.n;
  std::vector<const uint8_t*> qsets(nsets, queries);
  for (int v = 0; v < vq.n; ++v) qsets[1 + v] = vq.codes[v];
  const int64_t nent = nq * nsets;  // entry e = q * nsets + set
  auto packed_of = [&](int64_t e) { return qsets[e % nsets] + (e / nsets) * qgeo.code_bytes; };

  // 1. per entry: query table and probed lists (threaded over entries)
  std::vector<uint8_t> luts(static_cast<size_t>(nent) * lut_bytes);
  std::vector<int32_t> probes(static_cast<size_t>(nent) * nprobe);
  {
    constexpr int64_t kEntItem = 16;
    const int64_t nitems = (nent + kEntItem - 1) / kEntItem;
    const int64_t cost = nent * static_cast<int64_t>(nlist_) * geo_.dim;  // multiply-adds
    const int T = static_cast<int>(std::min<int64_t>({threads, nitems, std::max<int64_t>(1, cost / (1 << 20))}));
    std::vector<std::vector<float>> scratch(T, std::vector<float>(padded(geo_.dim) + nlist_));
    parallel_items(nitems, T, [&](int t, int64_t item) {
      for (int64_t e = item * kEntItem; e < std::min(nent, (item + 1) * kEntItem); ++e) {
        build_query_lut(geo_, qgeo, packed_of(e), luts.data() + e * lut_bytes);
        top_lists(qgeo, packed_of(e), nprobe, scratch[t].data(), probes.data() + e * nprobe);
      }
    });
  }
  // 2. (list, entry) pairs sorted by list: each probed list is scanned once for its entries
  std::vector<int64_t> start(nlist_ + 1, 0);
  for (int64_t i = 0; i < nent * nprobe; ++i) ++start[probes[i] + 1];
  for (int l = 0; l < nlist_; ++l) start[l + 1] += start[l];
  std::vector<int64_t> pair_ent(static_cast<size_t>(nent) * nprobe);
  {
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < nent; ++e)
      for (int p = 0; p < nprobe; ++p) pair_ent[pos[probes[e * nprobe + p]]++] = e;
  }
  std::vector<int32_t> work_lists;
  int64_t work = 0;  // block-entries
  for (int l = 0; l < nlist_; ++l)
    if (start[l + 1] > start[l] && lists_[l]->nslots_ > 0) {
      work_lists.push_back(l);
      work += (start[l + 1] - start[l]) * ((lists_[l]->nslots_ + kBlock - 1) / kBlock);
    }

  const double s2 = static_cast<double>(1 << (query_bits - 1)) * (1 << (geo_.bits - 1));
  const bool scaled = vq.n > 0 && metric_ == Metric::kCosine;
  std::vector<float> qinv;
  if (scaled) {
    qinv.resize(static_cast<size_t>(nent));
    for (int64_t e = 0; e < nent; ++e) qinv[e] = inverse_norm(qgeo, packed_of(e));
  }
  // filter: sorted id lists, looked up per scanned slot
  std::vector<int64_t> allow(filter.allow_ids, filter.allow_ids + std::max<int64_t>(0, filter.n_allow_ids));
  std::vector<int64_t> excl(filter.exclude_ids, filter.exclude_ids + std::max<int64_t>(0, filter.n_exclude_ids));
  std::sort(allow.begin(), allow.end());
  std::sort(excl.begin(), excl.end());
  auto allowed = [&](int64_t id) {
    bool ok = true;
    if (filter.n_allow_ids >= 0) ok = std::binary_search(allow.begin(), allow.end(), id);
    if (ok && filter.allow_mask_len >= 0) ok = id < filter.allow_mask_len && filter.allow_mask[id];
    if (ok && filter.n_exclude_ids >= 0) ok = !std::binary_search(excl.begin(), excl.end(), id);
    if (ok && filter.exclude_mask_len >= 0) ok = !(id < filter.exclude_mask_len && filter.exclude_mask[id]);
    return ok;
  };

  constexpr int64_t kMinWork = 4096;
  const int T = static_cast<int>(std::min<int64_t>(
      {threads, static_cast<int64_t>(work_lists.size()), std::max<int64_t>(1, work / kMinWork)}));
  TopKSet res(nq, k);
  std::vector<TopKSet> local;
  for (int t = 1; t < T; ++t) local.emplace_back(nq, k);
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / static_cast<int64_t>(geo_.block_bytes));

  parallel_items(static_cast<int64_t>(work_lists.size()), std::max(T, 1), [&](int t, int64_t item) {
    const int l = work_lists[item];
    const SdcIndex& L = *lists_[l];
    const int64_t n = L.nslots_, nb = (n + kBlock - 1) / kBlock;
    const int64_t* ids = L.ids_.data();
    TopK* heaps = t == 0 ? res.heaps.data() : local[t - 1].heaps.data();
    std::vector<uint64_t> fm;
    if (filter.any()) {
      fm.assign(nb, 0);
      for (int64_t s = 0; s < n; ++s)
        if (ids[s] >= 0 && allowed(ids[s])) fm[s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
    }
    std::vector<uint64_t> set_slots;  // nsets x nb
    if (vq.n > 0) {
      set_slots.assign(static_cast<size_t>(nsets) * nb, 0);
      const int32_t* vers = L.versions_.data();
      for (int64_t s = 0; s < n; ++s) {
        int set = 0;
        for (int v = 0; v < vq.n; ++v)
          if (vers[s] == vq.versions[v]) set = 1 + v;
        set_slots[set * nb + s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
      }
    }
    ScanArgs base;
    base.geo = geo_;
    base.codes = L.codes_;
    base.alive = L.alive_.data();
    base.filter = fm.empty() ? nullptr : fm.data();
    base.ids = ids;
    base.invn = L.invn_.empty() ? nullptr : L.invn_.data();
    base.kind = metric_ == Metric::kCosine ? ScoreKind::kCosine : ScoreKind::kInnerProduct;
    base.qbits = query_bits;
    const int64_t e0 = start[l], e1 = start[l + 1];
    for (int64_t c0 = 0; c0 < nb; c0 += chunk) {
      ScanArgs a = base;
      a.block_begin = c0;
      a.block_end = std::min(nb, c0 + chunk);
      for (int64_t p0 = e0; p0 < e1; p0 += kMaxGroup) {
        QueryGroup qg;
        qg.g = static_cast<int>(std::min<int64_t>(kMaxGroup, e1 - p0));
        for (int g = 0; g < qg.g; ++g) {
          const int64_t e = pair_ent[p0 + g];
          const int set = static_cast<int>(e % nsets);
          qg.packed[g] = packed_of(e);
          qg.lut[g] = luts.data() + e * lut_bytes;
          qg.slots[g] = set_slots.empty() ? nullptr : set_slots.data() + set * nb;
          qg.heap[g] = static_cast<int>(e / nsets);
          if (scaled) qg.key_scale[g] = qinv[e];
          if (set > 0) {
            if (vq.scale) qg.key_scale[g] *= vq.scale[set - 1];
            if (vq.shift) qg.key_shift[g] = metric_ == Metric::kIP ? static_cast<float>(vq.shift[set - 1] * s2) : vq.shift[set - 1];
          }
        }
        kt.scan(a, qg, heaps);
      }
    }
  });
  for (auto& lh : local)
    for (int64_t q = 0; q < nq; ++q) res.heaps[q].merge_from(lh.heaps[q]);

  std::vector<std::pair<float, int64_t>> srt;
  for (int64_t q = 0; q < nq; ++q) {
    res.heaps[q].sorted(srt);
    float invq = 1.f;
    if (metric_ == Metric::kCosine && !scaled) invq = inverse_norm(qgeo, queries + q * qgeo.code_bytes);
    for (int i = 0; i < k; ++i) {
      if (srt[i].second == TopK::kNoId) break;
      out_ids[q * k + i] = srt[i].second;
      const float key = srt[i].first;
      out_scores[q * k + i] = metric_ == Metric::kIP ? static_cast<float>(key / s2) : key * invq;
    }
  }
}

}  // namespace bebr
