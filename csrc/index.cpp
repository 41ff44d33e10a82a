// SdcIndex implementation: storage management, filters, threaded search (see index.h).
#include "index.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <cstring>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "dispatch.h"
#include "thread_pool.h"

namespace bebr {

std::atomic<int64_t> testing_fail_item{-1};

namespace {
std::atomic<int64_t> g_min_parallel_work{4096};
thread_local SearchStats t_last_search;
}  // namespace

SearchStats last_search_stats() { return t_last_search; }
int64_t min_parallel_work() { return g_min_parallel_work.load(std::memory_order_relaxed); }
void set_min_parallel_work(int64_t work) {
  if (work < 1) throw std::invalid_argument("min_parallel_work must be >= 1, got " + std::to_string(work));
  g_min_parallel_work.store(work, std::memory_order_relaxed);
}

float inverse_norm(const Geometry& geo, const uint8_t* packed) {
  // sum_j v_j^2 = sum_{s,t} w_s w_t (dim - 2 popcount(d_s ^ d_t))
  const int P = geo.plane_bytes, b = geo.bits;
  int64_t s = 0;
  for (int x = 0; x < b; ++x)
    for (int y = 0; y < b; ++y) {
      // 8 bytes per popcount (at the baseline ISA each is a libgcc call)
      int pc = 0, p = 0;
      for (; p + 8 <= P; p += 8) {
        uint64_t u, v;
        std::memcpy(&u, packed + x * P + p, 8);
        std::memcpy(&v, packed + y * P + p, 8);
        pc += __builtin_popcountll(u ^ v);
      }
      for (; p < P; ++p) pc += __builtin_popcount(packed[x * P + p] ^ packed[y * P + p]);
      // a product, not a shift: dim - 2 pc may be negative
      s += static_cast<int64_t>(geo.dim - 2 * pc) * (int64_t(1) << ((b - 1 - x) + (b - 1 - y)));
    }
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
}

SdcIndex::SdcIndex(int dim, int bits, Metric metric) : geo_(dim, bits), metric_(metric) {
  if (dim < 1 || dim > (1 << 16)) throw std::invalid_argument("dim must be in [1, 65536], got " + std::to_string(dim));
  if (bits < 1 || bits > 4) throw std::invalid_argument("bits must be in [1, 4], got " + std::to_string(bits));
  if (metric == Metric::kHamming && bits != 1) throw std::invalid_argument("hamming metric needs bits == 1");
}

int64_t SdcIndex::size() const {
  std::shared_lock lk(mu_);
  return nalive_;
}

int64_t SdcIndex::next_id() const {
  std::shared_lock lk(mu_);
  return next_id_;
}

size_t SdcIndex::codes_nbytes() const {
  return static_cast<size_t>((nslots_ + kBlock - 1) / kBlock) * geo_.block_bytes;
}

void SdcIndex::ensure_owned_capacity(int64_t slots) {
  const size_t need = static_cast<size_t>((slots + kBlock - 1) / kBlock) * geo_.block_bytes;
  if (external_) {
    CodeBuffer copy;
    copy.reserve(std::max(need, codes_nbytes()));
    copy.resize(codes_nbytes());
    if (codes_nbytes()) std::memcpy(copy.data(), codes_, codes_nbytes());
    owned_.swap(copy);
    external_ = false;
  }
  if (owned_.size() < need) owned_.resize(need);
  codes_ = owned_.data();
  const int64_t nb = (slots + kBlock - 1) / kBlock;
  if (static_cast<int64_t>(alive_.size()) < nb) alive_.resize(nb, 0);
  if (metric_ == Metric::kCosine && static_cast<int64_t>(invn_.size()) < nb * kBlock) {
    invn_.resize(nb * kBlock, 0.f);
    norm_min_.resize(nb, 0.f);
  }
}

void SdcIndex::write_slot(int64_t slot, const uint8_t* code) {
  const int64_t blk = slot / kBlock;
  const int it = static_cast<int>(slot % kBlock);
  uint8_t* B = owned_.data() + blk * geo_.block_bytes;
  uint8_t item[4 * 8192 + 64];
  encode_item(geo_, code, item);
  for (int j = 0; j < geo_.item_bytes; ++j) B[geo_.offset(it, j)] = item[j];
  if (metric_ == Metric::kCosine) {
    const float v = inverse_norm(geo_, code);
    invn_[blk * kBlock + kR.r_of_item[it]] = v;
    // 1 / the block's largest inverse norm; 0 for a block not written yet (no bound). A
    // replaced slot's old value may stay: still a lower bound.
    const float nm = 1.f / v;
    norm_min_[blk] = norm_min_[blk] > 0.f ? std::min(norm_min_[blk], nm) : nm;
  }
}

void SdcIndex::refresh_norm_min() {
  const int64_t nb = static_cast<int64_t>(invn_.size()) / kBlock;
  norm_min_.assign(nb, 0.f);
  for (int64_t b = 0; b < nb; ++b) {
    float m = 0.f;
    for (int r = 0; r < kBlock; ++r) m = invn_[b * kBlock + r] > m ? invn_[b * kBlock + r] : m;
    norm_min_[b] = m > 0.f ? 1.f / m : 0.f;
  }
}

void SdcIndex::check_new_ids(const int64_t* ids, int64_t n, bool allow_present) const {
  std::unordered_map<int64_t, int64_t> seen;
  seen.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) throw std::invalid_argument("ids must be >= 0, got " + std::to_string(ids[i]) + " at position " + std::to_string(i));
    if (ids[i] > kMaxId)
      throw std::invalid_argument("ids must be <= 2**63 - 2 (2**63 - 1 is the 'no result' id), got " +
                                  std::to_string(ids[i]) + " at position " + std::to_string(i));
    if (!seen.emplace(ids[i], i).second)
      throw std::invalid_argument("duplicate id " + std::to_string(ids[i]) + " in ids (positions " +
                                  std::to_string(seen[ids[i]]) + " and " + std::to_string(i) + ")");
    if (!allow_present && slot_of_.contains(ids[i], ids_.data()))
      throw std::invalid_argument("id " + std::to_string(ids[i]) + " is already in the index (use upsert to replace it)");
  }
}

void SdcIndex::append(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  ensure_owned_capacity(nslots_ + n);
  ids_.resize(nslots_ + n);
  versions_.resize(nslots_ + n);
  slot_of_.reserve(static_cast<size_t>(n), ids_.data());  // entries point at old slots only
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = nslots_ + i;
    write_slot(s, codes + i * geo_.code_bytes);
    ids_[s] = ids[i];
    versions_[s] = version;
    alive_[s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
    slot_of_.insert(ids[i], s, ids_.data());
    next_id_ = std::max(next_id_, ids[i] + 1);
  }
  nslots_ += n;
  nalive_ += n;
}

int64_t SdcIndex::add(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
  std::unique_lock lk(mu_);
  std::vector<int64_t> gen;
  int64_t first = -1;
  if (!ids) {
    // next_id_ <= kMaxId + 1, so kMaxId + 1 - next_id_ cannot overflow
    if (n > kMaxId + 1 - next_id_)
      throw std::invalid_argument("cannot assign " + std::to_string(n) + " more ids: the next id is " +
                                  std::to_string(next_id_) + " and ids end at 2**63 - 2");
    first = next_id_;
    gen.resize(n);
    for (int64_t i = 0; i < n; ++i) gen[i] = next_id_ + i;
    ids = gen.data();
  }
  check_new_ids(ids, n, false);
  if (n) append(codes, n, ids, version);
  return first;
}

void SdcIndex::upsert(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version) {
  std::unique_lock lk(mu_);
  check_new_ids(ids, n, true);
  std::vector<int64_t> new_pos;
  bool touched = false;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = slot_of_.find(ids[i], ids_.data());
    if (slot < 0) {
      new_pos.push_back(i);
      continue;
    }
    if (!touched) {
      ensure_owned_capacity(nslots_);  // copy-on-write of external codes
      touched = true;
    }
    write_slot(slot, codes + i * geo_.code_bytes);
    versions_[slot] = version;
  }
  if (!new_pos.empty()) {
    std::vector<uint8_t> c(new_pos.size() * geo_.code_bytes);
    std::vector<int64_t> d(new_pos.size());
    for (size_t j = 0; j < new_pos.size(); ++j) {
      std::copy_n(codes + new_pos[j] * geo_.code_bytes, geo_.code_bytes, c.data() + j * geo_.code_bytes);
      d[j] = ids[new_pos[j]];
    }
    append(c.data(), static_cast<int64_t>(d.size()), d.data(), version);
  }
}

void SdcIndex::remove(const int64_t* ids, int64_t n) {
  std::unique_lock lk(mu_);
  for (int64_t i = 0; i < n; ++i)
    if (!slot_of_.contains(ids[i], ids_.data()))
      throw std::invalid_argument("cannot remove id " + std::to_string(ids[i]) + " (position " + std::to_string(i) +
                                  "): it is not in the index");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = slot_of_.find(ids[i], ids_.data());
    if (s < 0) continue;  // duplicate in ids
    alive_[s / kBlock] &= ~(uint64_t(1) << kR.r_of_item[s % kBlock]);
    slot_of_.erase(ids[i], ids_.data());  // before ids_[s] changes: entries are keyed by it
    ids_[s] = -1;
    --nalive_;
  }
  if (nslots_ - nalive_ > std::max<int64_t>(nslots_ / 2, 4 * kBlock)) compact_locked();
}

void SdcIndex::compact() {
  std::unique_lock lk(mu_);
  compact_locked();
}

void SdcIndex::compact_locked() {
  if (nalive_ == nslots_) return;  // nothing dead: also keeps external codes in place
  const int64_t nb_new = (nalive_ + kBlock - 1) / kBlock;
  CodeBuffer codes;
  codes.resize(static_cast<size_t>(nb_new) * geo_.block_bytes);
  std::vector<int64_t> ids(nalive_);
  std::vector<int32_t> vers(nalive_);
  std::vector<uint64_t> alive(nb_new, 0);
  std::vector<float> invn(metric_ == Metric::kCosine ? nb_new * kBlock : 0, 0.f);
  int64_t d = 0;
  for (int64_t s = 0; s < nslots_; ++s) {
    if (ids_[s] < 0) continue;
    const int64_t sb = s / kBlock, db = d / kBlock;
    const int si = static_cast<int>(s % kBlock), di = static_cast<int>(d % kBlock);
    const uint8_t* S = codes_ + sb * geo_.block_bytes;
    uint8_t* D = codes.data() + db * geo_.block_bytes;
    for (int j = 0; j < geo_.item_bytes; ++j) D[geo_.offset(di, j)] = S[geo_.offset(si, j)];
    if (!invn.empty()) invn[db * kBlock + kR.r_of_item[di]] = invn_[sb * kBlock + kR.r_of_item[si]];
    ids[d] = ids_[s];
    vers[d] = versions_[s];
    alive[db] |= uint64_t(1) << kR.r_of_item[di];
    ++d;
  }
  owned_.swap(codes);
  codes_ = owned_.data();
  external_ = false;
  ids_.swap(ids);
  versions_.swap(vers);
  alive_.swap(alive);
  invn_.swap(invn);
  refresh_norm_min();
  nslots_ = nalive_;
  slot_of_.clear();
  slot_of_.reserve(static_cast<size_t>(nslots_), ids_.data());
  for (int64_t s = 0; s < nslots_; ++s) slot_of_.insert(ids_[s], s, ids_.data());
}

void SdcIndex::assign(const uint8_t* codes, bool external, int64_t n, const int64_t* ids,
                      const int32_t* versions, const float* invn, int64_t next_id) {
  std::unique_lock lk(mu_);
  const int64_t nb = (n + kBlock - 1) / kBlock;
  const size_t nbytes = static_cast<size_t>(nb) * geo_.block_bytes;
  if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
  if (next_id < 0 || next_id > kMaxId + 1)
    throw std::invalid_argument("next_id must be in [0, 2**63 - 1], got " + std::to_string(next_id));
  IdMap map;  // slot i <-> ids[i], the values ids_ gets below
  map.reserve(static_cast<size_t>(n), ids);
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] > kMaxId || map.contains(ids[i], ids))
      throw std::invalid_argument("stored ids are negative, too large or duplicated (id " + std::to_string(ids[i]) + ")");
    map.insert(ids[i], i, ids);
  }
  slot_of_ = std::move(map);
  if (external) {
    owned_.release();
    codes_ = codes;
  } else {
    owned_.assign(codes, nbytes);
    codes_ = owned_.data();
  }
  external_ = external;
  ids_.assign(ids, ids + n);
  versions_.assign(versions, versions + n);
  alive_.assign(nb, 0);
  for (int64_t s = 0; s < n; ++s) alive_[s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
  if (metric_ == Metric::kCosine) invn_.assign(invn, invn + nb * kBlock);
  else invn_.clear();
  refresh_norm_min();
  nslots_ = nalive_ = n;
  next_id_ = next_id;
  for (int64_t i = 0; i < n; ++i) next_id_ = std::max(next_id_, ids[i] + 1);
}

std::vector<uint64_t> SdcIndex::build_filter(const FilterSpec& f) const {
  const int64_t nb = (nslots_ + kBlock - 1) / kBlock;
  std::vector<uint64_t> m(nb, 0);
  const bool has_allow = f.n_allow_ids >= 0 || f.allow_mask_len >= 0;
  if (!has_allow) std::fill(m.begin(), m.end(), ~uint64_t(0));
  auto set_slot = [&](int64_t s, bool on) {
    const uint64_t bit = uint64_t(1) << kR.r_of_item[s % kBlock];
    if (on) m[s / kBlock] |= bit;
    else m[s / kBlock] &= ~bit;
  };
  if (f.n_allow_ids >= 0)
    for (int64_t i = 0; i < f.n_allow_ids; ++i) {
      const int64_t s = slot_of_.find(f.allow_ids[i], ids_.data());
      if (s >= 0) set_slot(s, true);
    }
  if (f.allow_mask_len >= 0) {
    // allow-mask combined with an allow-list: an id must be in both
    const bool both = f.n_allow_ids >= 0;
    for (int64_t s = 0; s < nslots_; ++s) {
      const int64_t id = ids_[s];
      const bool ok = id >= 0 && id < f.allow_mask_len && f.allow_mask[id];
      if (!ok) set_slot(s, false);
      else if (!both) set_slot(s, true);
    }
  }
  if (f.n_exclude_ids >= 0)
    for (int64_t i = 0; i < f.n_exclude_ids; ++i) {
      const int64_t s = slot_of_.find(f.exclude_ids[i], ids_.data());
      if (s >= 0) set_slot(s, false);
    }
  if (f.exclude_mask_len >= 0)
    for (int64_t s = 0; s < nslots_; ++s) {
      const int64_t id = ids_[s];
      if (id >= 0 && id < f.exclude_mask_len && f.exclude_mask[id]) set_slot(s, false);
    }
  return m;
}

void SdcIndex::search(const uint8_t* queries, int64_t nq, int k, int threads, const FilterSpec& filter,
                      float* out_scores, int64_t* out_ids, int query_bits,
                      const VersionQueries& vq, float prune) const {
  if (k <= 0) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
  if (!(prune >= 0.f) || !std::isfinite(prune))
    throw std::invalid_argument("prune must be a finite number >= 0 (0: exact), got " + std::to_string(prune));
  if (threads <= 0) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
  if (query_bits == 0) query_bits = geo_.bits;
  // a byte row's two LUT entries (planes, each <= 2 B0) fit a byte up to 4-bit queries
  // (2 * 120); int8 query values (nibbles) up to 7-bit ones
  const int max_qbits = geo_.nibbles ? 7 : 4;
  if (query_bits < 1 || query_bits > max_qbits)
    throw std::invalid_argument("query_bits must be in [1, " + std::to_string(max_qbits) + "] over " +
                                std::to_string(geo_.bits) + "-bit codes, got " + std::to_string(query_bits));
  if (metric_ == Metric::kHamming && query_bits != 1)
    throw std::invalid_argument("hamming metric needs query_bits == 1");
  const Geometry qgeo(geo_.dim, query_bits);
  for (int v = 0; v < vq.n; ++v)
    for (int w = 0; w < v; ++w)
      if (vq.versions[v] == vq.versions[w])
        throw std::invalid_argument("version queries given twice for version " + std::to_string(vq.versions[v]));
  if (vq.n > 0 && metric_ == Metric::kHamming) throw std::invalid_argument("a Hamming index has no version queries");
  for (int v = 0; v < vq.n; ++v) {
    const float a = vq.scale ? vq.scale[v] : 1.f, b = vq.shift ? vq.shift[v] : 0.f;
    if (!(a > 0.f) || !std::isfinite(a) || !std::isfinite(b))
      throw std::invalid_argument("score calibration of version " + std::to_string(vq.versions[v]) +
                                  " must have a finite scale > 0 and a finite shift, got scale " +
                                  std::to_string(a) + ", shift " + std::to_string(b));
  }
  const float pad = metric_ == Metric::kHamming ? std::numeric_limits<float>::infinity()
                                                : -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < nq * k; ++i) {
    out_scores[i] = pad;
    out_ids[i] = -1;
  }
  t_last_search = SearchStats{};
  std::shared_lock lk(mu_);
  if (nq == 0 || nalive_ == 0) return;
  const KernelTable& kt = active_kernels();
  const int64_t nb = (nslots_ + kBlock - 1) / kBlock;
  const size_t lut_bytes = static_cast<size_t>(2 * geo_.plane_bytes) * 16;
  // query sets: 0 = the main queries, 1 + v = the codes for version vq.versions[v]
  const int nsets = 1 + vq.n;
  std::vector<const uint8_t*> qsets(nsets, queries);
  for (int v = 0; v < vq.n; ++v) qsets[1 + v] = vq.codes[v];
  std::vector<uint8_t> luts(static_cast<size_t>(nsets) * nq * lut_bytes);
  for (int set = 0; set < nsets; ++set)
    for (int64_t q = 0; q < nq; ++q)
      build_query_lut(geo_, qgeo, qsets[set] + q * qgeo.code_bytes, luts.data() + (set * nq + q) * lut_bytes);
  // plane pruning: each table's low-plane allowance, once per query
  std::vector<int64_t> margins;
  if (prune_applies(geo_, query_bits, prune)) {
    margins.resize(static_cast<size_t>(nsets) * nq);
    for (size_t i = 0; i < margins.size(); ++i) margins[i] = prune_margin(geo_, luts.data() + i * lut_bytes, prune);
  }
  // per set, the r-masks of the slots it scores: version v's slots, the main set the others
  std::vector<std::vector<uint64_t>> set_slots;
  if (vq.n > 0) {
    set_slots.assign(nsets, std::vector<uint64_t>(nb, 0));
    for (int64_t s = 0; s < nslots_; ++s) {
      int set = 0;
      for (int v = 0; v < vq.n; ++v)
        if (versions_[s] == vq.versions[v]) set = 1 + v;
      set_slots[set][s / kBlock] |= uint64_t(1) << kR.r_of_item[s % kBlock];
    }
  }
  // ip: a score is its integer key / s2 (s2 = the product of the two codes' level scales)
  const double s2 = static_cast<double>(1 << (query_bits - 1)) * (1 << (geo_.bits - 1));
  // cosine with version queries: each entry's keys carry its own query norm in the heap
  const bool scaled = vq.n > 0 && metric_ == Metric::kCosine;
  std::vector<float> qinv;
  if (scaled) {
    qinv.resize(static_cast<size_t>(nsets) * nq);
    for (int set = 0; set < nsets; ++set)
      for (int64_t q = 0; q < nq; ++q) qinv[set * nq + q] = inverse_norm(qgeo, qsets[set] + q * qgeo.code_bytes);
  }
  std::vector<uint64_t> fm;
  if (filter.any()) fm = build_filter(filter);

  ScanArgs base;
  base.geo = geo_;
  base.codes = codes_;
  base.alive = alive_.data();
  base.filter = fm.empty() ? nullptr : fm.data();
  base.ids = ids_.data();
  base.invn = invn_.empty() ? nullptr : invn_.data();
  base.norm_min = norm_min_.empty() ? nullptr : norm_min_.data();
  base.kind = metric_ == Metric::kCosine ? ScoreKind::kCosine : ScoreKind::kInnerProduct;
  base.qbits = query_bits;
  base.prune = prune;

  // Matrix-unit levels (AMX) score a whole batch of queries per loaded block: the batch's
  // int8 query matrix is built once here.
  const bool batched = kt.scan_batch != nullptr && nq >= kBatchMinQueries && geo_.bits >= kBatchMinBits &&
                       vq.n == 0;
  QueryBatch qbatch;
  CodeBuffer qbuf;  // 64-byte aligned: AMX tile rows must not straddle cache lines
  std::vector<int32_t> qsums;
  if (batched) {
    qbatch.nq = nq;
    qbatch.rows = (nq + 31) / 32 * 32;
    qbatch.kpad = (8 * geo_.chunks + 63) / 64 * 64;
    qbuf.resize(static_cast<size_t>(qbatch.rows) * qbatch.kpad);
    int8_t* qmat = reinterpret_cast<int8_t*>(qbuf.data());
    qsums.resize(nq);
    build_query_batch(geo_, qgeo, queries, qbatch, qmat, qsums.data());
    qbatch.a = qmat;
    qbatch.sums = qsums.data();
  }

  // Blocks per cache chunk: each chunk is scanned for every query group while it sits in L2.
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / static_cast<int64_t>(geo_.block_bytes));
  auto run = [&](int64_t q0, int64_t q1, int64_t b0, int64_t b1, TopK* heaps) {
    if (batched) {  // every block is loaded once for all the queries in [q0, q1)
      ScanArgs a = base;
      a.block_begin = b0;
      a.block_end = b1;
      QueryBatch qb = qbatch;
      qb.nq = q1 - q0;
      qb.rows = (qb.nq + 31) / 32 * 32;
      qb.a = qbatch.a + q0 * qbatch.kpad;
      qb.sums = qsums.data() + q0;
      kt.scan_batch(a, qb, heaps);
      return;
    }
    // entries (query, set) in groups of kMaxGroup; every entry of query q feeds heap q - q0.
    // One group reads each block once whatever the chunks: its whole range in one call (the
    // seeded plane pruning of one entry picks its seeds over the whole range)
    const int64_t nent = (q1 - q0) * nsets;
    const int64_t step = nent <= kMaxGroup ? std::max<int64_t>(1, b1 - b0) : chunk;
    for (int64_t c0 = b0; c0 < b1; c0 += step) {
      ScanArgs a = base;
      a.block_begin = c0;
      a.block_end = std::min(b1, c0 + step);
      for (int64_t e0 = 0; e0 < nent; e0 += kMaxGroup) {
        QueryGroup qg;
        qg.g = static_cast<int>(std::min<int64_t>(kMaxGroup, nent - e0));
        for (int g = 0; g < qg.g; ++g) {
          const int64_t q = q0 + (e0 + g) / nsets;
          const int set = static_cast<int>((e0 + g) % nsets);
          qg.packed[g] = qsets[set] + q * qgeo.code_bytes;
          qg.lut[g] = luts.data() + (set * nq + q) * lut_bytes;
          qg.slots[g] = set_slots.empty() ? nullptr : set_slots[set].data();
          qg.heap[g] = static_cast<int>(q - q0);
          if (!margins.empty()) qg.prune_margin[g] = margins[set * nq + q];
          if (scaled) qg.key_scale[g] = qinv[set * nq + q];
          if (set > 0) {  // calibration: score -> a * score + b, in key units
            if (vq.scale) qg.key_scale[g] *= vq.scale[set - 1];
            if (vq.shift) qg.key_shift[g] = metric_ == Metric::kIP ? static_cast<float>(vq.shift[set - 1] * s2) : vq.shift[set - 1];
          }
        }
        kt.scan(a, qg, heaps);
      }
    }
  };

  TopKSet res(nq, k);
  // Starting a thread costs far more than a small scan (and much more on a loaded machine):
  // every thread gets at least kMinWork block-queries (~256K item-queries) or is not started.
  // (min_parallel_work(), 4096 unless changed)
  const int64_t min_work = min_parallel_work();
  const int T = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, nb * nq / min_work)));
  // Many queries: threads take groups of kQueryItem queries over the whole database (each
  // chunk of blocks reused from cache by the group's queries). Few queries: threads take
  // chunks of blocks for all queries into their own heaps, merged at the end. Work items
  // are handed out dynamically and the calling thread works too, so a thread that the OS
  // schedules late (loaded machine) delays nothing.
  // (a batched level splits queries only in items of 64: fewer and it reads the codes again)
  const int64_t kQueryItem = batched ? 64 : 4 * kMaxGroup;
  const bool split_queries = T > 1 && nq >= kQueryItem * T;
  const int64_t nitems = T == 1 ? 1 : split_queries ? (nq + kQueryItem - 1) / kQueryItem : (nb + chunk - 1) / chunk;
  std::vector<TopKSet> local;
  if (T > 1 && !split_queries)
    for (int t = 1; t < T; ++t) local.emplace_back(nq, k);
  auto process = [&](int t, int64_t item) {
    if (item == testing_fail_item.load(std::memory_order_relaxed))
      throw std::runtime_error("injected failure in search work item " + std::to_string(item));
    if (T == 1) {
      run(0, nq, 0, nb, res.heaps.data());
    } else if (split_queries) {
      const int64_t q0 = item * kQueryItem, q1 = std::min(nq, q0 + kQueryItem);
      run(q0, q1, 0, nb, res.heaps.data() + q0);
    } else {
      const int64_t b0 = item * chunk, b1 = std::min(nb, b0 + chunk);
      run(0, nq, b0, b1, t == 0 ? res.heaps.data() : local[t - 1].heaps.data());
    }
  };
  const int active = parallel_items(nitems, T, process);
  t_last_search.workers = T;
  t_last_search.active_workers = active;
  t_last_search.items = nitems;
  t_last_search.split = T == 1 ? "none" : split_queries ? "queries" : "database";
  for (auto& l : local)
    for (int64_t q = 0; q < nq; ++q) res.heaps[q].merge_from(l.heaps[q]);

  std::vector<std::pair<float, int64_t>> srt;
  for (int64_t q = 0; q < nq; ++q) {
    res.heaps[q].sorted(srt);
    float invq = 1.f;
    // (the same integer sum of squares as inverse_norm's popcounts, without a libgcc popcount
    // call per byte at the baseline ISA)
    if (metric_ == Metric::kCosine && !scaled)
      invq = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sum_squares(qgeo, queries + q * qgeo.code_bytes))));
    for (int i = 0; i < k; ++i) {
      if (srt[i].second == TopK::kNoId) break;
      out_ids[q * k + i] = srt[i].second;
      const float key = srt[i].first;
      float sc;
      switch (metric_) {
        case Metric::kIP: sc = static_cast<float>(key / s2); break;
        case Metric::kCosine: sc = key * invq; break;
        default: sc = (static_cast<float>(geo_.dim) - key) * 0.5f; break;
      }
      out_scores[q * k + i] = sc;
    }
  }
}

std::map<int32_t, int64_t> SdcIndex::versions() const {
  std::shared_lock lk(mu_);
  std::map<int32_t, int64_t> m;
  for (int64_t s = 0; s < nslots_; ++s)
    if (ids_[s] >= 0) ++m[versions_[s]];
  return m;
}

std::vector<int64_t> SdcIndex::ids_of_version(int32_t v) const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out;
  for (int64_t s = 0; s < nslots_; ++s)
    if (ids_[s] >= 0 && versions_[s] == v) out.push_back(ids_[s]);
  return out;
}

std::vector<int64_t> SdcIndex::ids() const {
  std::shared_lock lk(mu_);
  std::vector<int64_t> out;
  out.reserve(nalive_);
  for (int64_t s = 0; s < nslots_; ++s)
    if (ids_[s] >= 0) out.push_back(ids_[s]);
  return out;
}

bool SdcIndex::contains(int64_t id) const {
  std::shared_lock lk(mu_);
  return slot_of_.contains(id, ids_.data());
}

void SdcIndex::get_codes(const int64_t* ids, int64_t n, uint8_t* out, int32_t* versions) const {
  std::shared_lock lk(mu_);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = slot_of_.find(ids[i], ids_.data());
    if (s < 0) throw std::invalid_argument("id " + std::to_string(ids[i]) + " is not in the index");
    const uint8_t* B = codes_ + (s / kBlock) * geo_.block_bytes;
    uint8_t item[4 * 8192 + 64];
    for (int j = 0; j < geo_.item_bytes; ++j) item[j] = B[geo_.offset(static_cast<int>(s % kBlock), j)];
    decode_item(geo_, item, out + i * geo_.code_bytes);
    if (versions) versions[i] = versions_[s];
  }
}

}  // namespace bebr
