// IvfIndex implementation: coarse assignment, list bookkeeping, the id table, the probed-list
// search and the re-ranking of candidates (see ivf.h for the layout).
#include "ivf.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <iterator>
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

// Centroids are stored in panels of 8 lists, dimension-major inside a panel: dimension j of
// centroid l at ct[cidx(dim, j, l)] = ct[(l / 8) * dim * 8 + j * 8 + l % 8], lp = nlist
// rounded up to 8 (zero columns). A query's scores against every centroid are then sums over
// j of x[j] * (8 lists' dimension j), vectorised over lists, each panel read as one
// contiguous stream (against a dimension-major table the layout alone measured no gain; it
// keeps a batch's 8-row tile on sequential loads).
int padded_lists(int nlist) { return (nlist + 7) / 8 * 8; }
inline size_t cidx(int dim, int j, int l) {
  return static_cast<size_t>(l / 8) * dim * 8 + static_cast<size_t>(j) * 8 + l % 8;
}

// out[i * lp + l] = sum_j x[i * dim + j] * ct[cidx(dim, j, l)] for m rows of x, each sum
// taken in j order, one multiply and one add per term (no FMA): the AVX2 version gives the
// same bits as the portable one.
void dot_cols_portable(const float* x, int m, const float* ct, int dim, int lp, float* out) {
  for (int i = 0; i < m; ++i) {
    float* o = out + static_cast<size_t>(i) * lp;
    std::fill_n(o, lp, 0.f);
    for (int j = 0; j < dim; ++j) {
      const float xv = x[static_cast<size_t>(i) * dim + j];
      for (int l = 0; l < lp; ++l) o[l] += xv * ct[cidx(dim, j, l)];
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void dot_cols_avx2(const float* x, int m, const float* ct, int dim, int lp,
                                                   float* out) {
  if (m == 1) {  // one query: 64 lists per pass in 8 accumulators
    int l0 = 0;
    for (; l0 + 64 <= lp; l0 += 64) {
      __m256 a[8];
      for (int v = 0; v < 8; ++v) a[v] = _mm256_setzero_ps();
      for (int j = 0; j < dim; ++j) {
        const __m256 xv = _mm256_broadcast_ss(x + j);
        for (int v = 0; v < 8; ++v)
          a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(xv, _mm256_loadu_ps(ct + cidx(dim, j, l0 + 8 * v))));
      }
      for (int v = 0; v < 8; ++v) _mm256_storeu_ps(out + l0 + 8 * v, a[v]);
    }
    for (; l0 < lp; l0 += 8) {
      __m256 a = _mm256_setzero_ps();
      for (int j = 0; j < dim; ++j)
        a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_broadcast_ss(x + j), _mm256_loadu_ps(ct + cidx(dim, j, l0))));
      _mm256_storeu_ps(out + l0, a);
    }
    return;
  }
  for (int i0 = 0; i0 < m; i0 += 8) {  // up to 8 rows share each load of 8 lists
    const int mb = std::min(8, m - i0);
    if (mb == 8) {  // a constant row count keeps the 8 accumulators in registers
      const float* xr = x + static_cast<size_t>(i0) * dim;
      for (int l0 = 0; l0 < lp; l0 += 8) {
        __m256 a[8];
        for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
        for (int j = 0; j < dim; ++j) {
          const __m256 c = _mm256_loadu_ps(ct + cidx(dim, j, l0));
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i)
            a[i] = _mm256_add_ps(a[i], _mm256_mul_ps(_mm256_broadcast_ss(xr + static_cast<size_t>(i) * dim + j), c));
        }
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + static_cast<size_t>(i0 + i) * lp + l0, a[i]);
      }
      continue;
    }
    for (int l0 = 0; l0 < lp; l0 += 8) {
      __m256 a[8];
      for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
      for (int j = 0; j < dim; ++j) {
        const __m256 c = _mm256_loadu_ps(ct + cidx(dim, j, l0));
        for (int i = 0; i < mb; ++i)
          a[i] = _mm256_add_ps(a[i], _mm256_mul_ps(_mm256_broadcast_ss(x + static_cast<size_t>(i0 + i) * dim + j), c));
      }
      for (int i = 0; i < mb; ++i) _mm256_storeu_ps(out + static_cast<size_t>(i0 + i) * lp + l0, a[i]);
    }
  }
}
#endif

void dot_cols(const float* x, int m, const float* ct, int dim, int lp, float* out) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return dot_cols_avx2(x, m, ct, dim, lp, out);
#endif
  dot_cols_portable(x, m, ct, dim, lp, out);
}

// Code values of a packed code as floats (dim of them).
void float_values(const Geometry& geo, const uint8_t* packed, float* out) {
  thread_local std::vector<int32_t> v;
  v.resize(geo.dim);
  scaled_values(geo, packed, v.data());
  for (int j = 0; j < geo.dim; ++j) out[j] = static_cast<float>(v[j]);
}

// Lists each entry of a multi-query search scans alone, its best ones, before the shared
// list-by-list pass: its heap's threshold is then near its final value when the shared pass
// starts (that pass visits an entry's lists in no useful order for it). Measured on 325k MiniLM
// codes, 192x2, nlist 1024, nprobe 192, 2,000 queries, 1 thread: 0 -> 1, 2, 4, 8 seed lists:
// +11%, +11%, +10%, +10% QPS.
constexpr int kSeedLists = 2;

constexpr uint32_t kDead32 = 0xFFFFFFFFu;  // a removed slot's narrow id
constexpr int kSlotBits = 40;              // id table entry: list << kSlotBits | slot
constexpr uint64_t kSlotMask = (uint64_t(1) << kSlotBits) - 1;

// Grow a vector to `need` elements with at most 1/8 spare capacity (a bulk add allocates
// exactly; repeated small adds still copy O(1) times per element).
template <class V>
void grow_to(V& v, size_t need) {
  if (need > v.capacity()) v.reserve(std::max(need, v.capacity() + v.capacity() / 8));
  if (need > v.size()) v.resize(need);
}

std::string id_str(int64_t id) { return std::to_string(id); }

}  // namespace

// One inverted list (see ivf.h for the layout).
struct IvfIndex::List {
  struct Run {
    int64_t begin;
    int32_t version;
  };
  CodeBuffer owned;
  const uint8_t* codes = nullptr;
  bool external = false;
  int64_t nslots = 0, nalive = 0;
  std::vector<uint32_t> ids32;  // narrow ids (kDead32 once removed)
  std::vector<int64_t> ids64;   // wide ids (-1 once removed)
  std::vector<uint64_t> alive;  // per block r-mask
  std::vector<float> invn;      // cosine: per block 64 r-ordered inverse norms
  // cosine: per block a lower bound of its live slots' norms, 1 / (largest inverse norm ever
  // stored in it since its last rewrite; 0: none), the kernels' block skip (ScanArgs::norm_min)
  std::vector<float> norm_min;
  std::vector<Run> runs;        // ascending begin, runs[0].begin == 0 when nslots > 0
  std::vector<uint64_t> spilled;  // spilled indexes: per block r-mask of the spilled copies

  bool is_spilled(int64_t s) const {
    return !spilled.empty() && ((spilled[s / kBlock] >> kR.r_of_item[s % kBlock]) & 1);
  }

  int64_t nblocks() const { return (nslots + kBlock - 1) / kBlock; }
  int32_t version_at(int64_t s) const {
    auto it = std::upper_bound(runs.begin(), runs.end(), s, [](int64_t v, const Run& r) { return v < r.begin; });
    return std::prev(it)->version;
  }
  int64_t run_end(size_t r) const { return r + 1 < runs.size() ? runs[r + 1].begin : nslots; }
  // norm_min of every block from invn (after a rewrite of the list)
  void refresh_norm_min() {
    norm_min.assign(invn.empty() ? 0 : static_cast<size_t>(nblocks()), 0.f);
    for (size_t b = 0; b < norm_min.size(); ++b) {
      float m = 0.f;
      for (int r = 0; r < kBlock; ++r) m = std::max(m, invn[b * kBlock + r]);
      norm_min[b] = m > 0.f ? 1.f / m : 0.f;
    }
  }
};

// id -> (list, slot): open addressing with linear probing over 8-byte entries, the key of an
// entry read from the lists' id arrays; the table is sized for a load of 0.6 to 0.8 (index
// mod capacity by a multiply-shift, so capacities need not be powers of two).
class IvfIndex::IdTable {
 public:
  static constexpr uint64_t kEmpty = ~uint64_t(0), kTomb = ~uint64_t(0) - 1;

  explicit IdTable(const IvfIndex& o) : o_(o) {}
  size_t size() const { return live_; }
  size_t memory_bytes() const { return t_.capacity() * sizeof(uint64_t); }

  // Table position of id, or -1.
  int64_t find_pos(int64_t id) const {
    if (t_.empty()) return -1;
    for (size_t e = home(id);; e = next(e)) {
      const uint64_t v = t_[e];
      if (v == kEmpty) return -1;
      if (v != kTomb && key(v) == id) return static_cast<int64_t>(e);
    }
  }
  // Table position of the entry `entry` of id (a spilled item has two), or -1.
  int64_t find_pos_of(int64_t id, uint64_t entry) const {
    if (t_.empty()) return -1;
    for (size_t e = home(id);; e = next(e)) {
      const uint64_t v = t_[e];
      if (v == kEmpty) return -1;
      if (v == entry) return static_cast<int64_t>(e);
    }
  }
  // Positions of every entry of id (at most max), returns how many.
  int find_all(int64_t id, int64_t* pos, int max) const {
    int c = 0;
    if (t_.empty()) return 0;
    for (size_t e = home(id); c < max; e = next(e)) {
      const uint64_t v = t_[e];
      if (v == kEmpty) break;
      if (v != kTomb && key(v) == id) pos[c++] = static_cast<int64_t>(e);
    }
    return c;
  }
  uint64_t at(int64_t pos) const { return t_[pos]; }
  void erase_at(int64_t pos) {
    t_[pos] = kTomb;
    --live_;
  }
  // Entry (list << kSlotBits | slot) of id, or kEmpty.
  uint64_t find(int64_t id) const {
    const int64_t p = find_pos(id);
    return p < 0 ? kEmpty : t_[p];
  }
  void set(int64_t pos, uint64_t entry) { t_[pos] = entry; }
  void reserve(size_t extra) {
    if (static_cast<double>(used_ + extra) > kMaxLoad * static_cast<double>(t_.size())) rehash(live_ + extra);
  }
  // Insert id (absent) at entry.
  void insert(int64_t id, uint64_t entry) {
    reserve(1);
    size_t e = home(id);
    while (t_[e] != kEmpty && t_[e] != kTomb) e = next(e);
    if (t_[e] == kEmpty) ++used_;
    t_[e] = entry;
    ++live_;
  }
  bool erase(int64_t id) {
    const int64_t p = find_pos(id);
    if (p < 0) return false;
    t_[p] = kTomb;
    --live_;
    return true;
  }

 private:
  static constexpr double kMaxLoad = 0.85, kRehashLoad = 0.7;
  int64_t key(uint64_t v) const { return o_.id_at(*o_.lists_[v >> kSlotBits], static_cast<int64_t>(v & kSlotMask)); }
  size_t home(int64_t id) const {  // splitmix64 finaliser, then multiply-shift into [0, cap)
    uint64_t z = static_cast<uint64_t>(id) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<size_t>((static_cast<unsigned __int128>(z) * t_.size()) >> 64);
  }
  size_t next(size_t e) const { return e + 1 == t_.size() ? 0 : e + 1; }
  void rehash(size_t want) {
    const size_t cap = std::max<size_t>(16, static_cast<size_t>(static_cast<double>(want) / kRehashLoad) + 1);
    std::vector<uint64_t> old;
    old.swap(t_);
    t_.assign(cap, kEmpty);
    used_ = live_ = 0;
    for (const uint64_t v : old)
      if (v != kEmpty && v != kTomb) {
        size_t e = home(key(v));
        while (t_[e] != kEmpty) e = next(e);
        t_[e] = v;
        ++used_;
        ++live_;
      }
  }

  const IvfIndex& o_;
  std::vector<uint64_t> t_;
  size_t used_ = 0, live_ = 0;
};

IvfIndex::IvfIndex(int dim, int bits, Metric metric, int nlist, float spill_lambda)
    : geo_(dim, bits), metric_(metric), nlist_(nlist), spill_lambda_(spill_lambda < 0.f ? -1.f : spill_lambda) {
  if (!std::isfinite(spill_lambda))
    throw std::invalid_argument("spill_lambda must be finite (< 0: no spilled assignment), got " +
                                std::to_string(spill_lambda));
  if (spill_lambda >= 0.f && nlist < 2) throw std::invalid_argument("a spilled assignment needs nlist >= 2");
  if (dim < 1 || dim > (1 << 16)) throw std::invalid_argument("dim must be in [1, 65536], got " + std::to_string(dim));
  if (bits < 1 || bits > 4) throw std::invalid_argument("bits must be in [1, 4], got " + std::to_string(bits));
  if (metric == Metric::kHamming) throw std::invalid_argument("an IVF index scores 'ip' or 'cosine', not 'hamming'");
  if (nlist < 1 || nlist > (1 << 22))
    throw std::invalid_argument("nlist must be in [1, 4194304], got " + std::to_string(nlist));
  lists_.reserve(nlist);
  for (int l = 0; l < nlist; ++l) lists_.push_back(std::make_unique<List>());
}

IvfIndex::~IvfIndex() = default;

int64_t IvfIndex::id_at(const List& L, int64_t s) const {
  if (wide_) return L.ids64[s];
  const uint32_t v = L.ids32[s];
  return v == kDead32 ? -1 : static_cast<int64_t>(v);
}

const IvfIndex::IdTable& IvfIndex::table() const {
  if (table_built_.load(std::memory_order_acquire)) return *table_;
  std::lock_guard<std::mutex> g(table_mu_);
  if (!table_built_.load(std::memory_order_relaxed)) {
    auto t = std::make_unique<IdTable>(*this);
    t->reserve(static_cast<size_t>(size_));
    for (int l = 0; l < nlist_; ++l) {
      const List& L = *lists_[l];
      for (int64_t s = 0; s < L.nslots; ++s) {
        const int64_t id = id_at(L, s);
        if (id >= 0) t->insert(id, static_cast<uint64_t>(l) << kSlotBits | static_cast<uint64_t>(s));
      }
    }
    table_ = std::move(t);
    table_built_.store(true, std::memory_order_release);
  }
  return *table_;
}

bool IvfIndex::id_table_built() const { return table_built_.load(); }

bool IvfIndex::trained() const {
  std::shared_lock lk(mu_);
  return !centroids_.empty();
}

int64_t IvfIndex::size() const {
  std::shared_lock lk(mu_);
  return size_;
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
  if (size_ != 0)
    throw std::invalid_argument("cannot set the centroids of a non-empty IVF index (" + std::to_string(size_) +
                                " items are assigned to the current ones)");
  const int lp = padded_lists(nlist_);
  std::vector<float> cp(static_cast<size_t>(geo_.dim) * lp, 0.f);
  for (int l = 0; l < nlist_; ++l)
    for (int j = 0; j < geo_.dim; ++j) {
      const float v = c[static_cast<size_t>(l) * geo_.dim + j];
      if (!std::isfinite(v))
        throw std::invalid_argument("centroid " + std::to_string(l) + " has a non-finite value at dim " + std::to_string(j));
      cp[cidx(geo_.dim, j, l)] = v;
    }
  centroids_.swap(cp);
  cnorm2_.assign(nlist_, 0.f);
  for (int l = 0; l < nlist_; ++l) {
    double q = 0;
    for (int j = 0; j < geo_.dim; ++j) q += static_cast<double>(c[static_cast<size_t>(l) * geo_.dim + j]) * c[static_cast<size_t>(l) * geo_.dim + j];
    cnorm2_[l] = static_cast<float>(q);
  }
}

std::vector<float> IvfIndex::centroids() const {
  std::shared_lock lk(mu_);
  std::vector<float> out;
  if (centroids_.empty()) return out;
  out.resize(static_cast<size_t>(nlist_) * geo_.dim);
  for (int l = 0; l < nlist_; ++l)
    for (int j = 0; j < geo_.dim; ++j) out[static_cast<size_t>(l) * geo_.dim + j] = centroids_[cidx(geo_.dim, j, l)];
  return out;
}

void IvfIndex::assign_lists(const uint8_t* codes, int64_t n, int32_t* out) const {
  std::shared_lock lk(mu_);
  check_trained();
  assign_locked(codes, n, out);
}

void IvfIndex::assign_locked(const uint8_t* codes, int64_t n, int32_t* out, int32_t* out2) const {
  const int lp = padded_lists(nlist_);
  constexpr int kTile = 8;  // items scored together over each centroid row (kept in L1)
  // tiles of kTile items on up to 2 threads once the work pays for a thread
  const int64_t ntiles = (n + kTile - 1) / kTile;
  const int T = n * static_cast<int64_t>(nlist_) * geo_.dim >= (int64_t(1) << 26) ? 2 : 1;
  std::vector<std::vector<float>> x(T, std::vector<float>(static_cast<size_t>(kTile) * geo_.dim)),
      sc(T, std::vector<float>(static_cast<size_t>(kTile) * lp)), c1(T, std::vector<float>(geo_.dim)),
      g(T, std::vector<float>(lp));
  constexpr int64_t kTilesPerItem = 64;
  parallel_items((ntiles + kTilesPerItem - 1) / kTilesPerItem, T, [&](int t, int64_t item) {
    for (int64_t tile = item * kTilesPerItem; tile < std::min(ntiles, (item + 1) * kTilesPerItem); ++tile) {
      const int64_t i0 = tile * kTile;
      const int m = static_cast<int>(std::min<int64_t>(kTile, n - i0));
      for (int i = 0; i < m; ++i) float_values(geo_, codes + (i0 + i) * geo_.code_bytes, x[t].data() + i * geo_.dim);
      dot_cols(x[t].data(), m, centroids_.data(), geo_.dim, lp, sc[t].data());
      for (int i = 0; i < m; ++i) {
        const float* s = sc[t].data() + static_cast<size_t>(i) * lp;
        int best = 0;
        for (int l = 1; l < nlist_; ++l)
          if (s[l] > s[best]) best = l;
        out[i0 + i] = best;
        if (!out2) continue;
        // SOAR: minimise ||x - c'||^2 + lambda <r, x - c'>^2 / ||r||^2, r = x - c_best;
        // <r, x - c'> = <r, x> - <x, c'> + <c_best, c'>
        const float* xi = x[t].data() + i * geo_.dim;
        double xx = 0;
        for (int j = 0; j < geo_.dim; ++j) {
          xx += static_cast<double>(xi[j]) * xi[j];
          c1[t][j] = centroids_[cidx(geo_.dim, j, best)];
        }
        dot_cols(c1[t].data(), 1, centroids_.data(), geo_.dim, lp, g[t].data());
        // x holds the scaled values (value * 2^(bits-1)); the centroids are in value / 2^(bits-1)
        const double f = 1.0 / static_cast<double>((1 << (geo_.bits - 1)) * (1 << (geo_.bits - 1)));
        xx *= f * f;
        const double rx = xx - f * s[best], rr = std::max(xx - 2.0 * f * s[best] + cnorm2_[best], 1e-12);
        int second = -1;
        double lbest = 0;
        for (int l = 0; l < nlist_; ++l) {
          if (l == best) continue;
          const double par = rx - f * s[l] + g[t][l];
          const double loss = xx - 2.0 * f * s[l] + cnorm2_[l] + spill_lambda_ * par * par / rr;
          if (second < 0 || loss < lbest) {
            second = l;
            lbest = loss;
          }
        }
        out2[i0 + i] = second;
      }
    }
  });
}

void IvfIndex::top_lists(const Geometry& qgeo, const uint8_t* packed, int nprobe, float* scratch, int32_t* out) const {
  top_lists_many(qgeo, &packed, 1, nprobe, scratch, out);
}

void IvfIndex::top_lists_many(const Geometry& qgeo, const uint8_t* const* packed, int m, int nprobe, float* scratch,
                              int32_t* out) const {
  const int lp = padded_lists(nlist_);
  float* x = scratch;
  float* sc = scratch + static_cast<size_t>(m) * geo_.dim;
  for (int i = 0; i < m; ++i) float_values(qgeo, packed[i], x + static_cast<size_t>(i) * geo_.dim);
  // one pass over the centroids for every 8 queries; the same sums, in the same order, as
  // one query's
  dot_cols(x, m, centroids_.data(), geo_.dim, lp, sc);
  for (int i = 0; i < m; ++i) select_lists(sc + static_cast<size_t>(i) * lp, nprobe, out + static_cast<size_t>(i) * nprobe);
}

void IvfIndex::select_lists(const float* sc, int nprobe, int32_t* out) const {
  // one 64-bit key per list, ascending = better: the score's bits mapped to an unsigned order
  // (larger score first), then the list (ties to the smaller); selecting and sorting plain
  // integers is several times faster than through a comparator reading the scores
  thread_local std::vector<uint64_t> keys;
  keys.resize(nlist_);
  for (int l = 0; l < nlist_; ++l) {
    uint32_t u;
    const float f = sc[l] + 0.f;  // -0 -> +0 (equal scores tie on the list)
    std::memcpy(&u, &f, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // float order as unsigned order
    keys[l] = (static_cast<uint64_t>(~u) << 32) | static_cast<uint32_t>(l);
  }
  if (nprobe < nlist_) std::nth_element(keys.begin(), keys.begin() + nprobe, keys.end());
  std::sort(keys.begin(), keys.begin() + nprobe);
  for (int p = 0; p < nprobe; ++p) out[p] = static_cast<int32_t>(keys[p] & 0xFFFFFFFFu);
}

void IvfIndex::probe(const uint8_t* queries, int64_t nq, int nprobe, int query_bits, int32_t* out) const {
  if (nprobe <= 0) throw std::invalid_argument("nprobe must be >= 1, got " + std::to_string(nprobe));
  std::shared_lock lk(mu_);
  check_trained();
  nprobe = std::min(nprobe, nlist_);
  const Geometry qgeo(geo_.dim, query_bits == 0 ? geo_.bits : query_bits);
  std::vector<float> scratch(geo_.dim + padded_lists(nlist_));
  for (int64_t q = 0; q < nq; ++q) top_lists(qgeo, queries + q * qgeo.code_bytes, nprobe, scratch.data(), out + q * nprobe);
}

// Same checks and messages as SdcIndex's; ids below next_id_ are looked up in the id table
// (ids at or above it cannot be present, so a fill with new ids never builds the table).
void IvfIndex::check_new_ids(const int64_t* ids, int64_t n, bool allow_present) const {
  std::unordered_map<int64_t, int64_t> seen;
  seen.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) throw std::invalid_argument("ids must be >= 0, got " + id_str(ids[i]) + " at position " + std::to_string(i));
    if (ids[i] > kMaxId)
      throw std::invalid_argument("ids must be <= 2**63 - 2 (2**63 - 1 is the 'no result' id), got " + id_str(ids[i]) +
                                  " at position " + std::to_string(i));
    if (!seen.emplace(ids[i], i).second)
      throw std::invalid_argument("duplicate id " + id_str(ids[i]) + " in ids (positions " +
                                  std::to_string(seen[ids[i]]) + " and " + std::to_string(i) + ")");
    if (!allow_present && ids[i] < next_id_ && table().find(ids[i]) != IdTable::kEmpty)
      throw std::invalid_argument("id " + id_str(ids[i]) + " is already in the index (use upsert to replace it)");
  }
}

void IvfIndex::add(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
  std::unique_lock lk(mu_);
  check_trained();
  std::vector<int64_t> gen;
  if (!ids) {
    if (n > kMaxId + 1 - next_id_)
      throw std::invalid_argument("cannot assign " + std::to_string(n) + " more ids: the next id is " +
                                  std::to_string(next_id_) + " and ids end at 2**63 - 2");
    gen.resize(n);
    for (int64_t i = 0; i < n; ++i) gen[i] = next_id_ + i;
    ids = gen.data();
  } else {
    check_new_ids(ids, n, false);
  }
  add_locked(codes, n, ids, version);
}

void IvfIndex::widen_ids() {
  for (auto& Lp : lists_) {
    List& L = *Lp;
    L.ids64.resize(L.nslots);
    for (int64_t s = 0; s < L.nslots; ++s) L.ids64[s] = L.ids32[s] == kDead32 ? -1 : static_cast<int64_t>(L.ids32[s]);
    std::vector<uint32_t>().swap(L.ids32);
  }
  wide_ = true;
}

void IvfIndex::add_locked(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  if (n == 0) return;
  if (!wide_)
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] >= static_cast<int64_t>(kDead32)) {
        widen_ids();
        break;
      }
  // entries: item i in its list dst[i]; spilled indexes also item i in dst[n + i]
  const int64_t ne = spilled() ? 2 * n : n;
  std::vector<int32_t> dst(ne);
  assign_locked(codes, n, dst.data(), spilled() ? dst.data() + n : nullptr);
  // group by list, keeping the input order inside each list (primary copies first)
  std::vector<int64_t> count(nlist_ + 1, 0);
  for (int64_t i = 0; i < ne; ++i) ++count[dst[i] + 1];
  for (int l = 0; l < nlist_; ++l) count[l + 1] += count[l];
  std::vector<int64_t> order(ne);
  {
    std::vector<int64_t> pos(count.begin(), count.end() - 1);
    for (int64_t i = 0; i < ne; ++i) order[pos[dst[i]]++] = i;
  }
  IdTable* tab = table_built_.load() ? table_.get() : nullptr;
  if (tab) tab->reserve(static_cast<size_t>(ne));
  for (int l = 0; l < nlist_; ++l) {
    const int64_t b = count[l], e = count[l + 1];
    if (b == e) continue;
    List& L = *lists_[l];
    const int64_t s0 = L.nslots, s1 = s0 + (e - b);
    // owned codes with room for s1 slots (a copy of external ones first)
    const size_t need = static_cast<size_t>((s1 + kBlock - 1) / kBlock) * geo_.block_bytes;
    const size_t have = static_cast<size_t>(L.nblocks()) * geo_.block_bytes;
    if (L.external) {
      CodeBuffer copy;
      copy.reserve(need);
      copy.resize(have);
      if (have) std::memcpy(copy.data(), L.codes, have);
      L.owned.swap(copy);
      L.external = false;
    }
    if (need > L.owned.capacity()) L.owned.reserve(std::max(need, L.owned.capacity() + L.owned.capacity() / 8));
    if (need > L.owned.size()) L.owned.resize(need);
    L.codes = L.owned.data();
    const int64_t nb = (s1 + kBlock - 1) / kBlock;
    grow_to(L.alive, static_cast<size_t>(nb));
    if (spilled()) grow_to(L.spilled, static_cast<size_t>(nb));
    if (metric_ == Metric::kCosine) {
      grow_to(L.invn, static_cast<size_t>(nb) * kBlock);
      grow_to(L.norm_min, static_cast<size_t>(nb));
    }
    if (wide_) grow_to(L.ids64, static_cast<size_t>(s1));
    else grow_to(L.ids32, static_cast<size_t>(s1));
    if (L.runs.empty() || L.runs.back().version != version) {
      if (L.runs.size() == L.runs.capacity()) L.runs.reserve(L.runs.size() + 1);  // exact: runs are few
      L.runs.push_back({s0, version});
    }
    uint8_t item[4 * 8192 + 64];
    for (int64_t j = b; j < e; ++j) {
      const int64_t s = s0 + (j - b), i = order[j] % n;
      const uint8_t* code = codes + i * geo_.code_bytes;
      uint8_t* B = L.owned.data() + (s / kBlock) * geo_.block_bytes;
      const int it = static_cast<int>(s % kBlock);
      encode_item(geo_, code, item);
      for (int q = 0; q < geo_.item_bytes; ++q) B[geo_.offset(it, q)] = item[q];
      if (metric_ == Metric::kCosine) {
        const float inv = inverse_norm(geo_, code);
        L.invn[(s / kBlock) * kBlock + kR.r_of_item[it]] = inv;
        // min over the block of 1 / inv = 1 / (max inv): the bound the kernels would compute
        float& nm = L.norm_min[s / kBlock];
        if (inv > 0.f) nm = nm > 0.f ? std::min(nm, 1.f / inv) : 1.f / inv;
      }
      if (wide_) L.ids64[s] = ids[i];
      else L.ids32[s] = static_cast<uint32_t>(ids[i]);
      L.alive[s / kBlock] |= uint64_t(1) << kR.r_of_item[it];
      if (order[j] >= n) L.spilled[s / kBlock] |= uint64_t(1) << kR.r_of_item[it];
    }
    L.nslots = s1;
    L.nalive += e - b;
    if (tab)
      for (int64_t j = b; j < e; ++j)
        tab->insert(ids[order[j] % n], static_cast<uint64_t>(l) << kSlotBits | static_cast<uint64_t>(s0 + (j - b)));
  }
  size_ += n;
  for (int64_t i = 0; i < n; ++i) next_id_ = std::max(next_id_, ids[i] + 1);
}

void IvfIndex::upsert(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  std::unique_lock lk(mu_);
  check_trained();
  check_new_ids(ids, n, true);
  std::vector<int64_t> present;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < next_id_ && table().find(ids[i]) != IdTable::kEmpty) present.push_back(ids[i]);
  // a replaced item may move to another list: remove, then add everything
  remove_locked(present.data(), static_cast<int64_t>(present.size()));
  add_locked(codes, n, ids, version);
}

void IvfIndex::remove(const int64_t* ids, int64_t n) {
  std::unique_lock lk(mu_);
  const IdTable& t = table();
  for (int64_t i = 0; i < n; ++i)
    if (t.find(ids[i]) == IdTable::kEmpty)
      throw std::invalid_argument("cannot remove id " + id_str(ids[i]) + " (position " + std::to_string(i) +
                                  "): it is not in the index");
  remove_locked(ids, n);
}

void IvfIndex::remove_locked(const int64_t* ids, int64_t n) {
  if (n == 0) return;
  table();
  IdTable& t = *table_;
  std::vector<int32_t> touched;
  for (int64_t i = 0; i < n; ++i) {
    int64_t pos[2];
    const int c = t.find_all(ids[i], pos, 2);
    if (c == 0) continue;  // duplicate in ids
    uint64_t ent[2];
    for (int u = 0; u < c; ++u) {
      ent[u] = t.at(pos[u]);
      t.erase_at(pos[u]);  // before the slot's id changes: entries are keyed by it
    }
    for (int u = 0; u < c; ++u) {
      const int l = static_cast<int>(ent[u] >> kSlotBits);
      const int64_t s = static_cast<int64_t>(ent[u] & kSlotMask);
      List& L = *lists_[l];
      if (wide_) L.ids64[s] = -1;
      else L.ids32[s] = kDead32;
      const uint64_t bit = uint64_t(1) << kR.r_of_item[s % kBlock];
      L.alive[s / kBlock] &= ~bit;
      if (!L.spilled.empty()) L.spilled[s / kBlock] &= ~bit;
      --L.nalive;
      touched.push_back(l);
    }
    --size_;
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  for (const int l : touched) {
    const List& L = *lists_[l];
    if (L.nslots - L.nalive > std::max<int64_t>(L.nslots / 2, 4 * kBlock)) compact_list(l);
  }
}

// Rewrite list l's live slots densely in slot order (caller holds mu_ exclusively).
void IvfIndex::compact_list(int l) {
  List& L = *lists_[l];
  // spilled indexes: primary copies first, then the spilled ones
  bool ordered = true;
  for (int64_t s = 1; s < L.nslots && ordered && !L.spilled.empty(); ++s)
    ordered = !(L.is_spilled(s - 1) && !L.is_spilled(s) && id_at(L, s) >= 0);
  if (L.nalive == L.nslots && ordered) return;  // nothing to do: also keeps external codes in place
  IdTable* tab = table_built_.load() ? table_.get() : nullptr;
  // the new slot order (old slots), and the table positions of their entries, found while
  // the entries still match the old slots
  std::vector<int64_t> src;
  src.reserve(L.nalive);
  for (int pass = 0; pass < (L.spilled.empty() ? 1 : 2); ++pass)
    for (int64_t s = 0; s < L.nslots; ++s)
      if (id_at(L, s) >= 0 && (L.spilled.empty() || L.is_spilled(s) == (pass == 1))) src.push_back(s);
  std::vector<int64_t> pos;
  if (tab) {
    pos.reserve(src.size());
    for (const int64_t s : src)
      pos.push_back(tab->find_pos_of(id_at(L, s), static_cast<uint64_t>(l) << kSlotBits | static_cast<uint64_t>(s)));
  }
  const int64_t nb_new = (L.nalive + kBlock - 1) / kBlock;
  CodeBuffer codes;
  codes.reserve(static_cast<size_t>(nb_new) * geo_.block_bytes);
  codes.resize(static_cast<size_t>(nb_new) * geo_.block_bytes);
  std::vector<uint32_t> ids32;
  std::vector<int64_t> ids64;
  if (wide_) ids64.reserve(L.nalive);
  else ids32.reserve(L.nalive);
  std::vector<uint64_t> alive(nb_new, 0);
  std::vector<float> invn(metric_ == Metric::kCosine ? nb_new * kBlock : 0, 0.f);
  std::vector<uint64_t> spill(L.spilled.empty() ? 0 : nb_new, 0);
  std::vector<List::Run> runs;
  int64_t d = 0;
  for (const int64_t s : src) {
    const int64_t id = id_at(L, s);
    const int32_t ver = L.version_at(s);
    if (runs.empty() || runs.back().version != ver) runs.push_back({d, ver});
    const int64_t sb = s / kBlock, db = d / kBlock;
    const int si = static_cast<int>(s % kBlock), di = static_cast<int>(d % kBlock);
    const uint8_t* S = L.codes + sb * geo_.block_bytes;
    uint8_t* D = codes.data() + db * geo_.block_bytes;
    for (int j = 0; j < geo_.item_bytes; ++j) D[geo_.offset(di, j)] = S[geo_.offset(si, j)];
    if (!invn.empty()) invn[db * kBlock + kR.r_of_item[di]] = L.invn[sb * kBlock + kR.r_of_item[si]];
    if (wide_) ids64.push_back(id);
    else ids32.push_back(static_cast<uint32_t>(id));
    alive[db] |= uint64_t(1) << kR.r_of_item[di];
    if (!spill.empty() && L.is_spilled(s)) spill[db] |= uint64_t(1) << kR.r_of_item[di];
    ++d;
  }
  L.owned.swap(codes);
  L.codes = L.owned.data();
  L.external = false;
  L.ids32.swap(ids32);
  L.ids64.swap(ids64);
  L.alive.swap(alive);
  L.invn.swap(invn);
  L.spilled.swap(spill);
  L.nslots = L.nalive;
  L.refresh_norm_min();
  runs.shrink_to_fit();
  L.runs.swap(runs);
  if (tab)
    for (int64_t s = 0; s < L.nslots; ++s) tab->set(pos[s], static_cast<uint64_t>(l) << kSlotBits | static_cast<uint64_t>(s));
}

void IvfIndex::compact() {
  std::unique_lock lk(mu_);
  for (int l = 0; l < nlist_; ++l) compact_list(l);
}

bool IvfIndex::codes_external() const {
  std::shared_lock lk(mu_);
  for (const auto& l : lists_)
    if (l->external) return true;
  return false;
}

std::map<int32_t, int64_t> IvfIndex::versions() const {
  std::shared_lock lk(mu_);
  std::map<int32_t, int64_t> m;
  for (const auto& Lp : lists_) {
    const List& L = *Lp;
    for (size_t r = 0; r < L.runs.size(); ++r)
      for (int64_t s = L.runs[r].begin; s < L.run_end(r); ++s)
        if (id_at(L, s) >= 0 && !L.is_spilled(s)) ++m[L.runs[r].version];
  }
  return m;
}

std::vector<int64_t> IvfIndex::ids_of_version(int32_t v) const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out;
  for (const auto& Lp : lists_) {
    const List& L = *Lp;
    for (size_t r = 0; r < L.runs.size(); ++r)
      if (L.runs[r].version == v)
        for (int64_t s = L.runs[r].begin; s < L.run_end(r); ++s)
          if (id_at(L, s) >= 0 && !L.is_spilled(s)) out.push_back(id_at(L, s));
  }
  return out;
}

std::vector<int64_t> IvfIndex::ids() const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out;
  out.reserve(size_);
  for (const auto& Lp : lists_)
    for (int64_t s = 0; s < Lp->nslots; ++s)
      if (id_at(*Lp, s) >= 0 && !Lp->is_spilled(s)) out.push_back(id_at(*Lp, s));
  return out;
}

bool IvfIndex::contains(int64_t id) const {
  std::shared_lock lk(mu_);
  if (id < 0 || id >= next_id_) return false;
  return table().find(id) != IdTable::kEmpty;
}

void IvfIndex::get_codes(const int64_t* ids, int64_t n, uint8_t* out, int32_t* versions) const {
  std::shared_lock lk(mu_);
  const IdTable& t = table();
  uint8_t item[4 * 8192 + 64];
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t e = t.find(ids[i]);
    if (e == IdTable::kEmpty) throw std::invalid_argument("id " + id_str(ids[i]) + " is not in the index");
    const List& L = *lists_[e >> kSlotBits];
    const int64_t s = static_cast<int64_t>(e & kSlotMask);
    const uint8_t* B = L.codes + (s / kBlock) * geo_.block_bytes;
    for (int j = 0; j < geo_.item_bytes; ++j) item[j] = B[geo_.offset(static_cast<int>(s % kBlock), j)];
    decode_item(geo_, item, out + i * geo_.code_bytes);
    if (versions) versions[i] = L.version_at(s);
  }
}

std::vector<int64_t> IvfIndex::list_sizes() const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out(nlist_);
  for (int l = 0; l < nlist_; ++l) out[l] = lists_[l]->nalive;
  return out;
}

std::map<std::string, size_t> IvfIndex::memory_breakdown() const {
  std::shared_lock lk(mu_);
  std::map<std::string, size_t> m{{"codes", 0}, {"ids", 0}, {"norms", 0}, {"masks", 0}, {"versions", 0}};
  for (const auto& Lp : lists_) {
    const List& L = *Lp;
    if (!L.external) m["codes"] += L.owned.capacity();
    m["ids"] += L.ids32.capacity() * sizeof(uint32_t) + L.ids64.capacity() * sizeof(int64_t);
    m["norms"] += (L.invn.capacity() + L.norm_min.capacity()) * sizeof(float);
    m["masks"] += (L.alive.capacity() + L.spilled.capacity()) * sizeof(uint64_t);
    m["versions"] += L.runs.capacity() * sizeof(List::Run);
  }
  m["id_table"] = table_built_.load() ? table_->memory_bytes() : 0;
  m["centroids"] = (centroids_.capacity() + cnorm2_.capacity()) * sizeof(float);
  m["lists"] = lists_.capacity() * sizeof(std::unique_ptr<List>) + lists_.size() * sizeof(List);
  return m;
}

size_t IvfIndex::memory_bytes() const {
  size_t b = 0;
  for (const auto& [k, v] : memory_breakdown()) b += v;
  return b;
}

void IvfIndex::export_dense(std::vector<uint8_t>& codes, std::vector<int64_t>& ids, std::vector<int32_t>& versions,
                            std::vector<float>& invn, std::vector<int64_t>& sizes,
                            std::vector<int64_t>& spilled_sizes) {
  std::unique_lock lk(mu_);
  sizes.assign(nlist_, 0);
  spilled_sizes.assign(spilled() ? nlist_ : 0, 0);
  for (int l = 0; l < nlist_; ++l) {
    compact_list(l);
    const List& L = *lists_[l];
    sizes[l] = L.nslots;
    if (spilled())
      for (int64_t s = 0; s < L.nslots; ++s) spilled_sizes[l] += L.is_spilled(s);
    codes.insert(codes.end(), L.codes, L.codes + static_cast<size_t>(L.nblocks()) * geo_.block_bytes);
    for (size_t r = 0; r < L.runs.size(); ++r)
      for (int64_t s = L.runs[r].begin; s < L.run_end(r); ++s) {
        ids.push_back(id_at(L, s));
        versions.push_back(L.runs[r].version);
      }
    if (metric_ == Metric::kCosine) invn.insert(invn.end(), L.invn.begin(), L.invn.begin() + L.nblocks() * kBlock);
  }
}

void IvfIndex::assign_dense(const uint8_t* codes, bool external, const int64_t* ids, const int32_t* versions,
                            const float* invn, const int64_t* sizes, const int64_t* spilled_sizes,
                            int64_t next_id) {
  std::unique_lock lk(mu_);
  if (next_id < 0 || next_id > kMaxId + 1)
    throw std::invalid_argument("next_id must be in [0, 2**63 - 1], got " + std::to_string(next_id));
  if (spilled() != (spilled_sizes != nullptr))
    throw std::invalid_argument(spilled() ? "a spilled index needs the spilled copies per list"
                                          : "spilled copies given for an index without spilled assignment");
  int64_t n = 0, nslots = 0;
  for (int l = 0; l < nlist_; ++l) {
    if (sizes[l] < 0) throw std::invalid_argument("list sizes must be >= 0");
    if (spilled_sizes && (spilled_sizes[l] < 0 || spilled_sizes[l] > sizes[l]))
      throw std::invalid_argument("spilled copies per list must be in [0, list size]");
    nslots += sizes[l];
    n += sizes[l] - (spilled_sizes ? spilled_sizes[l] : 0);
  }
  {  // every id valid and stored once as a primary copy, spilled copies of those only (sorted
     // copies, dropped again)
    std::vector<int64_t> prim, spill;
    prim.reserve(n);
    int64_t off = 0;
    for (int l = 0; l < nlist_; ++l) {
      const int64_t np = sizes[l] - (spilled_sizes ? spilled_sizes[l] : 0);
      prim.insert(prim.end(), ids + off, ids + off + np);
      spill.insert(spill.end(), ids + off + np, ids + off + sizes[l]);
      off += sizes[l];
    }
    std::sort(prim.begin(), prim.end());
    std::sort(spill.begin(), spill.end());
    for (int64_t i = 0; i < n; ++i)
      if (prim[i] < 0 || prim[i] > kMaxId || (i && prim[i] == prim[i - 1]))
        throw std::invalid_argument("stored ids are negative, too large or duplicated (id " + id_str(prim[i]) + ")");
    for (size_t i = 0; i < spill.size(); ++i)
      if ((i && spill[i] == spill[i - 1]) || !std::binary_search(prim.begin(), prim.end(), spill[i]))
        throw std::invalid_argument("a spilled copy of id " + id_str(spill[i]) + " is repeated or has no primary copy");
  }
  if (centroids_.empty() && n > 0) throw std::invalid_argument("an untrained IVF index cannot hold items");
  bool wide = false;
  for (int64_t i = 0; i < nslots; ++i) wide |= ids[i] >= static_cast<int64_t>(kDead32);
  std::vector<std::unique_ptr<List>> lists;
  lists.reserve(nlist_);
  int64_t off = 0, boff = 0;
  for (int l = 0; l < nlist_; ++l) {
    auto L = std::make_unique<List>();
    const int64_t nl = sizes[l], bl = (nl + kBlock - 1) / kBlock;
    const size_t nbytes = static_cast<size_t>(bl) * geo_.block_bytes;
    if (external) {
      L->codes = codes + boff * geo_.block_bytes;
      L->external = true;
    } else {
      L->owned.assign(codes + boff * geo_.block_bytes, nbytes);
      L->codes = L->owned.data();
    }
    if (wide) L->ids64.assign(ids + off, ids + off + nl);
    else {
      L->ids32.resize(nl);
      for (int64_t s = 0; s < nl; ++s) L->ids32[s] = static_cast<uint32_t>(ids[off + s]);
    }
    L->alive.assign(bl, 0);
    for (int64_t s = 0; s < nl; ++s) L->alive[s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
    if (metric_ == Metric::kCosine) L->invn.assign(invn + boff * kBlock, invn + (boff + bl) * kBlock);
    L->nslots = nl;
    L->refresh_norm_min();
    for (int64_t s = 0; s < nl; ++s)
      if (L->runs.empty() || L->runs.back().version != versions[off + s]) L->runs.push_back({s, versions[off + s]});
    L->runs.shrink_to_fit();
    if (spilled_sizes) {
      L->spilled.assign(bl, 0);
      for (int64_t s = nl - spilled_sizes[l]; s < nl; ++s) L->spilled[s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
    }
    L->nslots = L->nalive = nl;
    lists.push_back(std::move(L));
    off += nl;
    boff += bl;
  }
  lists_.swap(lists);
  wide_ = wide;
  size_ = n;
  next_id_ = next_id;
  for (int64_t i = 0; i < nslots; ++i) next_id_ = std::max(next_id_, ids[i] + 1);
  table_built_.store(false);
  table_.reset();
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
  if (nq == 0 || size_ == 0) return;
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
    std::vector<std::vector<float>> scratch(T, std::vector<float>(kEntItem * (geo_.dim + padded_lists(nlist_))));
    parallel_items(nitems, T, [&](int t, int64_t item) {
      const int64_t e0 = item * kEntItem, e1 = std::min(nent, (item + 1) * kEntItem);
      const uint8_t* packed[kEntItem];
      for (int64_t e = e0; e < e1; ++e) {
        build_query_lut(geo_, qgeo, packed_of(e), luts.data() + e * lut_bytes);
        packed[e - e0] = packed_of(e);
      }
      top_lists_many(qgeo, packed, static_cast<int>(e1 - e0), nprobe, scratch[t].data(), probes.data() + e0 * nprobe);
    });
  }
  // 2. Several entries: each first scans its `seed` best lists alone (its heap then holds good
  // items and a high threshold before the shared pass), then the other (list, entry) pairs,
  // sorted by list, each probed list scanned once for its entries. The order does not change
  // the results (the heaps keep the best keys under a total order).
  const int seed = nent > 1 ? std::min(nprobe, kSeedLists) : 0;
  std::vector<int64_t> start(nlist_ + 1, 0);
  for (int64_t e = 0; e < nent; ++e)
    for (int p = seed; p < nprobe; ++p) ++start[probes[e * nprobe + p] + 1];
  for (int l = 0; l < nlist_; ++l) start[l + 1] += start[l];
  std::vector<int64_t> pair_ent(static_cast<size_t>(start[nlist_]));
  {
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < nent; ++e)
      for (int p = seed; p < nprobe; ++p) pair_ent[pos[probes[e * nprobe + p]]++] = e;
  }
  // The probed lists, scanned best first: by the best rank any entry gives them (a single
  // query: its probe order), so that the heaps fill with good items early and their
  // thresholds then skip most blocks and pushes. The order does not change the results (the
  // heaps keep the best keys under a total order).
  std::vector<int32_t> work_lists;
  int64_t work = 0;  // block-entries
  {
    std::vector<int32_t> best_rank(nlist_, nprobe);
    for (int64_t e = 0; e < nent; ++e)
      for (int p = seed; p < nprobe; ++p) {
        int32_t& r = best_rank[probes[e * nprobe + p]];
        r = std::min(r, p);
      }
    for (int p = 0; p < (nent == 1 ? nprobe : 0); ++p) {
      const int l = probes[p];
      if (lists_[l]->nalive > 0) work_lists.push_back(l);
    }
    if (nent > 1) {
      for (int l = 0; l < nlist_; ++l)
        if (start[l + 1] > start[l] && lists_[l]->nalive > 0) work_lists.push_back(l);
      std::stable_sort(work_lists.begin(), work_lists.end(),
                       [&](int32_t x, int32_t y) { return best_rank[x] < best_rank[y]; });
    }
    for (const int l : work_lists) work += (start[l + 1] - start[l]) * lists_[l]->nblocks();
    for (int64_t e = 0; e < nent; ++e)
      for (int p = 0; p < seed; ++p) work += lists_[probes[e * nprobe + p]]->nblocks();
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

  const int64_t min_work = min_parallel_work();
  const int T = static_cast<int>(std::min<int64_t>(
      {threads, std::max<int64_t>(static_cast<int64_t>(work_lists.size()), seed > 0 ? nent : 0),
       std::max<int64_t>(1, work / min_work)}));
  // spilled: an id can enter a heap twice with the same key; 2k entries hold k distinct ids
  const int kh = spilled() ? 2 * k : k;
  TopKSet res(nq, kh);
  std::vector<TopKSet> local;
  for (int t = 1; t < T; ++t) local.emplace_back(nq, kh);
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / static_cast<int64_t>(geo_.block_bytes));

  // scan list l for the entries ents[0 .. ne) into thread t's heaps; next: the list this
  // thread most likely scans next (-1: none)
  auto scan_list = [&](int t, int l, const int64_t* ents, int64_t ne, int next) {
    const List& L = *lists_[l];
    if (L.nalive == 0) return;
    const int64_t n = L.nslots, nb = L.nblocks();
#if defined(__x86_64__)
    // the kernel prefetches blocks ahead inside a list only: start the next list's first block
    // while this one is scanned
    if (next >= 0) {
      const List& N = *lists_[next];
      const size_t bytes = std::min<size_t>(geo_.block_bytes, static_cast<size_t>(N.nblocks()) * geo_.block_bytes);
      for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(N.codes + off), _MM_HINT_T0);
    }
#endif
    TopK* heaps = t == 0 ? res.heaps.data() : local[t - 1].heaps.data();
    std::vector<uint64_t> fm;
    if (filter.any()) {
      fm.assign(nb, 0);
      for (int64_t s = 0; s < n; ++s) {
        const int64_t id = id_at(L, s);
        if (id >= 0 && allowed(id)) fm[s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
      }
    }
    std::vector<uint64_t> set_slots;  // nsets x nb
    if (vq.n > 0) {
      set_slots.assign(static_cast<size_t>(nsets) * nb, 0);
      for (size_t r = 0; r < L.runs.size(); ++r) {
        int set = 0;
        for (int v = 0; v < vq.n; ++v)
          if (L.runs[r].version == vq.versions[v]) set = 1 + v;
        for (int64_t s = L.runs[r].begin; s < L.run_end(r); ++s)
          set_slots[set * nb + s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
      }
    }
    ScanArgs base;
    base.geo = geo_;
    base.codes = L.codes;
    base.alive = L.alive.data();
    base.filter = fm.empty() ? nullptr : fm.data();
    // narrow ids are read as they are (a removed slot is never alive, so never pushed)
    base.ids = wide_ ? L.ids64.data() : nullptr;
    base.ids32 = wide_ ? nullptr : L.ids32.data();
    base.invn = L.invn.empty() ? nullptr : L.invn.data();
    base.norm_min = L.norm_min.empty() ? nullptr : L.norm_min.data();
    base.kind = metric_ == Metric::kCosine ? ScoreKind::kCosine : ScoreKind::kInnerProduct;
    base.qbits = query_bits;
    for (int64_t c0 = 0; c0 < nb; c0 += chunk) {
      ScanArgs a = base;
      a.block_begin = c0;
      a.block_end = std::min(nb, c0 + chunk);
      for (int64_t p0 = 0; p0 < ne; p0 += kMaxGroup) {
        QueryGroup qg;
        qg.g = static_cast<int>(std::min<int64_t>(kMaxGroup, ne - p0));
        for (int g = 0; g < qg.g; ++g) {
          const int64_t e = ents[p0 + g];
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
  };
  if (seed > 0)
    parallel_items(nent, std::max(T, 1), [&](int t, int64_t e) {
      for (int p = 0; p < seed; ++p)
        scan_list(t, probes[e * nprobe + p], &e, 1, p + 1 < seed ? probes[e * nprobe + p + 1] : -1);
    });
  parallel_items(static_cast<int64_t>(work_lists.size()), std::max(T, 1), [&](int t, int64_t item) {
    const int l = work_lists[item];
    scan_list(t, l, pair_ent.data() + start[l], start[l + 1] - start[l],
              item + 1 < static_cast<int64_t>(work_lists.size()) ? work_lists[item + 1] : -1);
  });
  for (auto& lh : local)
    for (int64_t q = 0; q < nq; ++q) res.heaps[q].merge_from(lh.heaps[q]);

  std::vector<std::pair<float, int64_t>> srt;
  for (int64_t q = 0; q < nq; ++q) {
    res.heaps[q].sorted(srt);
    float invq = 1.f;
    if (metric_ == Metric::kCosine && !scaled) invq = inverse_norm(qgeo, queries + q * qgeo.code_bytes);
    for (int i = 0, o = 0; i < kh && o < k; ++i) {
      if (srt[i].second == TopK::kNoId) break;
      if (i > 0 && srt[i].second == srt[i - 1].second) continue;  // the spilled copy
      out_ids[q * k + o] = srt[i].second;
      const float key = srt[i].first;
      out_scores[q * k + o] = metric_ == Metric::kIP ? static_cast<float>(key / s2) : key * invq;
      ++o;
    }
  }
}

namespace {

// <q', c> and ||lo + step * c||^2 of one SQ8 row c (qs = q * step precomputed), or <q, v> and
// ||v||^2 of one float row v (sq8 = false: rows are floats, qs = q).
float hsum8(const float* a) {
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

template <bool kSq8>
void row_dot_nn_portable(const void* row, const float* qs, const float* lo, const float* step, int d, float& dot,
                         float& nn) {
  float a[8] = {}, b[8] = {};
  int j = 0;
  for (; j + 8 <= d; j += 8)
    for (int u = 0; u < 8; ++u) {
      const float cv = kSq8 ? static_cast<float>(static_cast<const uint8_t*>(row)[j + u]) : static_cast<const float*>(row)[j + u];
      a[u] += qs[j + u] * cv;
      const float v = kSq8 ? lo[j + u] + step[j + u] * cv : cv;
      b[u] += v * v;
    }
  for (; j < d; ++j) {
    const float cv = kSq8 ? static_cast<float>(static_cast<const uint8_t*>(row)[j]) : static_cast<const float*>(row)[j];
    a[0] += qs[j] * cv;
    const float v = kSq8 ? lo[j] + step[j] * cv : cv;
    b[0] += v * v;
  }
  dot = hsum8(a);
  nn = hsum8(b);
}

#if defined(__x86_64__)
template <bool kSq8>
__attribute__((target("avx2,fma"))) void row_dot_nn_avx2(const void* row, const float* qs, const float* lo,
                                                         const float* step, int d, float& dot, float& nn) {
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= d; j += 8) {
    __m256 cv;
    if (kSq8)
      cv = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(row) + j))));
    else
      cv = _mm256_loadu_ps(static_cast<const float*>(row) + j);
    a = _mm256_fmadd_ps(_mm256_loadu_ps(qs + j), cv, a);
    const __m256 v = kSq8 ? _mm256_fmadd_ps(_mm256_loadu_ps(step + j), cv, _mm256_loadu_ps(lo + j)) : cv;
    b = _mm256_fmadd_ps(v, v, b);
  }
  alignas(32) float sa[8], sb[8];
  _mm256_store_ps(sa, a);
  _mm256_store_ps(sb, b);
  for (; j < d; ++j) {
    const float cv = kSq8 ? static_cast<float>(static_cast<const uint8_t*>(row)[j]) : static_cast<const float*>(row)[j];
    sa[0] += qs[j] * cv;
    const float v = kSq8 ? lo[j] + step[j] * cv : cv;
    sb[0] += v * v;
  }
  dot = hsum8(sa);
  nn = hsum8(sb);
}
#endif

template <bool kSq8>
void row_dot_nn(const void* row, const float* qs, const float* lo, const float* step, int d, float& dot, float& nn) {
#if defined(__x86_64__)
  static const bool fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (fma) return row_dot_nn_avx2<kSq8>(row, qs, lo, step, d, dot, nn);
#endif
  row_dot_nn_portable<kSq8>(row, qs, lo, step, d, dot, nn);
}

// Best k of each query's candidates by their float score (ties to the smaller id), threads
// over groups of queries. rows: n_rows x d, uint8 (SQ8: value lo + step * code) or float.
template <bool kSq8>
void rerank(const int64_t* cand, int64_t nq, int nc, const void* rows, int64_t n_rows, int d, const float* lo,
            const float* step, const float* queries, bool cosine, int k, int threads, float* out_scores,
            int64_t* out_ids) {
  if (k <= 0) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
  if (threads <= 0) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
  for (int64_t i = 0; i < nq * nc; ++i)
    if (cand[i] >= n_rows)
      throw std::invalid_argument("the refine rows are " + std::to_string(n_rows) + " but a candidate has id " +
                                  std::to_string(cand[i]) + " (rows must be indexed by id)");
  for (int64_t i = 0; i < nq * k; ++i) {
    out_scores[i] = -std::numeric_limits<float>::infinity();
    out_ids[i] = -1;
  }
  constexpr int64_t kQItem = 8;
  const int64_t nitems = (nq + kQItem - 1) / kQItem;
  const int64_t cost = nq * nc * static_cast<int64_t>(d);
  const int T = static_cast<int>(std::min<int64_t>({threads, nitems, std::max<int64_t>(1, cost / (1 << 20))}));
  const size_t row_bytes = static_cast<size_t>(d) * (kSq8 ? 1 : sizeof(float));
  parallel_items(nitems, T, [&](int, int64_t item) {
    std::vector<std::pair<float, int64_t>> c;
    std::vector<float> qs(d);
    for (int64_t q = item * kQItem; q < std::min(nq, (item + 1) * kQItem); ++q) {
      const float* x = queries + q * d;
      double qq = 0, ql = 0;
      for (int j = 0; j < d; ++j) {
        qs[j] = kSq8 ? x[j] * step[j] : x[j];
        qq += static_cast<double>(x[j]) * x[j];
        if (kSq8) ql += static_cast<double>(x[j]) * lo[j];
      }
      const float invq = qq > 0 ? static_cast<float>(1.0 / std::sqrt(qq)) : 0.f;
      c.clear();
#if defined(__x86_64__)
      // the candidate rows are scattered over the table (DRAM misses): request them all
      // before the first is scored
      for (int i = 0; i < nc; ++i) {
        const int64_t id = cand[q * nc + i];
        if (id < 0) continue;
        const char* p = static_cast<const char*>(rows) + id * row_bytes;
        for (uintptr_t x = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63); x < reinterpret_cast<uintptr_t>(p + row_bytes);
             x += 64)
          _mm_prefetch(reinterpret_cast<const char*>(x), _MM_HINT_T0);
      }
#endif
      for (int i = 0; i < nc; ++i) {
        const int64_t id = cand[q * nc + i];
        if (id < 0) continue;
        float dot, nn;
        row_dot_nn<kSq8>(static_cast<const uint8_t*>(rows) + id * row_bytes, qs.data(), lo, step, d, dot, nn);
        dot += static_cast<float>(ql);
        c.emplace_back(!cosine ? dot : nn > 0.f ? dot / std::sqrt(nn) * invq : 0.f, id);
      }
      auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      };
      const size_t m = std::min<size_t>(c.size(), static_cast<size_t>(k));
      std::partial_sort(c.begin(), c.begin() + m, c.end(), better);
      for (size_t i = 0; i < m; ++i) {
        out_scores[q * k + i] = c[i].first;
        out_ids[q * k + i] = c[i].second;
      }
    }
  });
}

}  // namespace

void rerank_sq8(const int64_t* cand, int64_t nq, int nc, const uint8_t* rows, int64_t n_rows, int d, const float* lo,
                const float* step, const float* queries, bool cosine, int k, int threads, float* out_scores,
                int64_t* out_ids) {
  rerank<true>(cand, nq, nc, rows, n_rows, d, lo, step, queries, cosine, k, threads, out_scores, out_ids);
}

void rerank_float(const int64_t* cand, int64_t nq, int nc, const float* rows, int64_t n_rows, int d,
                  const float* queries, bool cosine, int k, int threads, float* out_scores, int64_t* out_ids) {
  rerank<false>(cand, nq, nc, rows, n_rows, d, nullptr, nullptr, queries, cosine, k, threads, out_scores, out_ids);
}

}  // namespace bebr
