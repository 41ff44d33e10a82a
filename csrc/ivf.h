// IvfIndex: an inverted-file index over SDC codes behind bebr.IVFIndex.
//
// Layout: nlist coarse centroids (float, nlist x dim, in the code-value space of the stored
// codes, i.e. CodeSpec.values / scale) and one list per centroid. A list holds its items in
// slots: codes in 64-slot transposed blocks (layout.h; owned, or read in place from a mapped
// file until a change copies them), an id per slot (uint32 while every id of the index is
// below 2**32 - 1, else int64; "dead" once removed), an r-ordered alive mask per block, for
// cosine 64 r-ordered inverse norms per block, and the versions as runs (first slot, version):
// items added together share a version, so a list keeps one run per add of another version
// instead of 4 bytes per item. An item lives in exactly one list, the centroid with the
// largest inner product with its code values (ties to the smaller list).
//
// Spilled assignment (SOAR, Sun et al. 2023; optional, spill_lambda >= 0): every item is also
// stored in a second list, the one minimising ||x - c'||^2 + lambda <r, x - c'>^2 / ||r||^2
// with r = x - c(primary) (a residual as orthogonal as possible to the first one), marked in a
// per-block r-ordered "spilled" mask; a search keeps 2k per heap and drops the second copy of
// an id (both copies score the same), ids()/versions() count primary copies only. After a
// compaction a list holds its primary copies first, then the spilled ones (what the file
// stores, with the spilled count per list).
//
// Id table: id -> (list, slot), an open-addressing table of 8-byte entries whose keys are read
// from the lists' id arrays. It is built on the first call that looks an id up (remove,
// upsert, contains, get_codes, an add of ids below next_id) and kept up to date from then on;
// an index that is only filled with new ids and searched (a loaded serving index) never holds
// it. memory_bytes() counts what is held.
//
// Search: each query (and each of its per-version query codes) scores the centroids with its
// own code values and probes its nprobe best lists (ties to the smaller list); the (list,
// entry) pairs are sorted by list and each list is scanned once for all entries probing it
// (best first: by the best probe rank an entry gives the list; a single query scans its lists
// in probe order, so its heap threshold rises early and skips blocks; with several entries
// each first scans its 2 best lists alone, for the same reason), in groups of kMaxGroup,
// by the active SIMD kernel into one top-k heap per query (the same
// keys, calibration and tie rules as SdcIndex::search, so nprobe = nlist gives the flat
// index's results bit for bit). Threads take whole lists into their own heaps, merged at the
// end. The GIL is released by the bindings; a readers-writer lock orders changes and searches.
//
// Re-ranking (rerank_sq8 / rerank_float): the candidates of a search re-scored by the inner
// product (or cosine) of float queries with SQ8 rows (uint8 per dimension, value = lo + step *
// code) or float rows indexed by id, threads over queries.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "buffer.h"
#include "index.h"

namespace bebr {

class IvfIndex {
 public:
  // spill_lambda < 0: one list per item; >= 0: SOAR spilled assignment with that lambda.
  IvfIndex(int dim, int bits, Metric metric, int nlist, float spill_lambda = -1.f);
  ~IvfIndex();

  const Geometry& geometry() const { return geo_; }
  Metric metric() const { return metric_; }
  int nlist() const { return nlist_; }
  bool spilled() const { return spill_lambda_ >= 0.f; }
  float spill_lambda() const { return spill_lambda_; }
  bool trained() const;
  int64_t size() const;
  int64_t next_id() const;

  // Set the coarse centroids (nlist * dim floats); only while the index is empty.
  void set_centroids(const float* centroids);
  std::vector<float> centroids() const;
  // List of each of n packed codes (the centroid of largest inner product, ties to the smaller).
  void assign_lists(const uint8_t* codes, int64_t n, int32_t* out) const;

  // Same contracts as SdcIndex (std::invalid_argument, nothing changed, on bad ids).
  void add(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  void upsert(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  void remove(const int64_t* ids, int64_t n);
  void compact();

  // Search nq packed queries over the nprobe best lists of each query code; outputs (nq, k)
  // pre-allocated. nprobe is clamped to nlist.
  void search(const uint8_t* queries, int64_t nq, int k, int nprobe, int threads, const FilterSpec& filter,
              float* out_scores, int64_t* out_ids, int query_bits = 0,
              const VersionQueries& version_queries = {}) const;
  // The nprobe lists a search would probe for each of nq packed queries (nq x nprobe).
  void probe(const uint8_t* queries, int64_t nq, int nprobe, int query_bits, int32_t* out) const;

  std::map<int32_t, int64_t> versions() const;
  std::vector<int64_t> ids_of_version(int32_t v) const;
  std::vector<int64_t> ids() const;  // live ids, list by list in slot order
  bool contains(int64_t id) const;
  void get_codes(const int64_t* ids, int64_t n, uint8_t* out, int32_t* versions) const;
  std::vector<int64_t> list_sizes() const;
  // Bytes held in RAM (external, memory-mapped codes excluded): codes, ids, alive masks,
  // inverse norms, version runs, the id table (if built), centroids (capacities).
  size_t memory_bytes() const;
  // The same, by part: "codes", "ids", "norms", "masks", "versions", "id_table", "centroids",
  // "lists" (per-list headers).
  std::map<std::string, size_t> memory_breakdown() const;
  bool id_table_built() const;

  // ---- persistence (docs/FORMAT.md "Index file", kind IVFIndex): the lists' dense arrays,
  // concatenated in list order.
  // Compact every list, then copy out blocked codes, ids, per-slot versions and cosine inverse
  // norms (n_blocks * 64 per list), the live slots per list and (spilled index) the spilled
  // copies at the end of each list.
  void export_dense(std::vector<uint8_t>& codes, std::vector<int64_t>& ids, std::vector<int32_t>& versions,
                    std::vector<float>& invn, std::vector<int64_t>& sizes, std::vector<int64_t>& spilled_sizes);
  // Replace the content with export_dense's arrays (codes read in place if external: the caller
  // keeps them alive). Throws std::invalid_argument (nothing changed) on negative, too large or
  // repeated ids (also across lists) or a next_id out of [0, kMaxId + 1].
  // spilled_sizes: per list, how many of its last slots are spilled copies (nullptr: none).
  void assign_dense(const uint8_t* codes, bool external, const int64_t* ids, const int32_t* versions,
                    const float* invn, const int64_t* sizes, const int64_t* spilled_sizes, int64_t next_id);
  bool codes_external() const;

  struct List;
  class IdTable;

 private:
  void check_trained() const;
  // out2 (may be null): the spilled list of each code (spilled indexes).
  void assign_locked(const uint8_t* codes, int64_t n, int32_t* out, int32_t* out2 = nullptr) const;
  void top_lists(const Geometry& qgeo, const uint8_t* packed, int nprobe, float* scratch, int32_t* out) const;
  // top_lists of m <= 16 query codes at once (scratch: m * (dim + padded nlist) floats)
  void top_lists_many(const Geometry& qgeo, const uint8_t* const* packed, int m, int nprobe, float* scratch,
                      int32_t* out) const;
  // the nprobe best of nlist centroid scores (ties to the smaller list), best first
  void select_lists(const float* sc, int nprobe, int32_t* out) const;
  void check_new_ids(const int64_t* ids, int64_t n, bool allow_present) const;
  void add_locked(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  void remove_locked(const int64_t* ids, int64_t n);
  void compact_list(int l);
  void widen_ids();
  // The id table, built on first use (callers hold mu_, shared or exclusive).
  const IdTable& table() const;
  int64_t id_at(const List& L, int64_t s) const;

  Geometry geo_;
  Metric metric_;
  int nlist_;
  std::vector<float> centroids_;  // empty until trained
  std::vector<std::unique_ptr<List>> lists_;
  int64_t next_id_ = 0;
  int64_t size_ = 0;
  bool wide_ = false;  // ids stored as int64 (an id >= 2**32 - 1 was added)
  float spill_lambda_ = -1.f;
  std::vector<float> cnorm2_;  // squared centroid norms (spilled indexes)
  mutable std::unique_ptr<IdTable> table_;
  mutable std::atomic<bool> table_built_{false};
  mutable std::mutex table_mu_;  // builds the table under a shared lock of mu_
  mutable std::shared_mutex mu_;
};

// Re-rank nq rows of nc candidates (ids, -1 = none) by the float inner product (cosine if
// cosine) of queries (nq x d) with rows of an SQ8 table (n_rows x d uint8; value lo[j] +
// step[j] * code) or of a float table (n_rows x d); writes the best k per query (ties to the
// smaller id; scores -inf / ids -1 past the candidates). Throws std::invalid_argument if a
// candidate id is >= n_rows. threads >= 1 (split over queries).
void rerank_sq8(const int64_t* cand, int64_t nq, int nc, const uint8_t* rows, int64_t n_rows, int d,
                const float* lo, const float* step, const float* queries, bool cosine, int k, int threads,
                float* out_scores, int64_t* out_ids);
void rerank_float(const int64_t* cand, int64_t nq, int nc, const float* rows, int64_t n_rows, int d,
                  const float* queries, bool cosine, int k, int threads, float* out_scores, int64_t* out_ids);

}  // namespace bebr
