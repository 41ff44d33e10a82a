// IvfIndex: an inverted-file index over SDC codes behind bebr.IVFIndex.
//
// Layout: nlist coarse centroids (float, nlist x dim, in the code-value space of the stored
// codes, i.e. CodeSpec.values / scale) and one SdcIndex per list (its own 64-slot transposed
// block store, ids, versions, alive masks and cosine inverse norms: layout.h). An item lives in
// exactly one list, the centroid with the largest inner product with its code values (ties to
// the smaller list). A global id -> list table (gids_/glist_ slots keyed by an IdMap) finds an
// item's list for remove / upsert / get_codes.
//
// Search: each query (and each of its per-version query codes) scores the centroids with its
// own code values and probes its nprobe best lists (ties to the smaller list); the (list,
// entry) pairs are sorted by list and each list is scanned once for all entries probing it,
// in groups of kMaxGroup, by the active SIMD kernel into one top-k heap per query (the same
// keys, calibration and tie rules as SdcIndex::search, so nprobe = nlist gives the flat
// index's results bit for bit). Threads take whole lists into their own heaps, merged at the
// end. The GIL is released by the bindings; a readers-writer lock orders changes and searches.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "id_map.h"
#include "index.h"

namespace bebr {

class IvfIndex {
 public:
  IvfIndex(int dim, int bits, Metric metric, int nlist);

  const Geometry& geometry() const { return geo_; }
  Metric metric() const { return metric_; }
  int nlist() const { return nlist_; }
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
  // Bytes held in RAM (or mapped): codes, per-slot ids / versions / norms / masks, id tables,
  // centroids.
  size_t memory_bytes() const;
  // Compact every list, then copy out its dense arrays (blocked codes, ids, versions, cosine
  // inverse norms), lists concatenated in list order, and the live items per list.
  void export_dense(std::vector<uint8_t>& codes, std::vector<int64_t>& ids, std::vector<int32_t>& versions,
                    std::vector<float>& invn, std::vector<int64_t>& sizes);

  // ---- persistence: lists are exported / assigned one by one through SdcIndex's dense API,
  // then finish_assign() rebuilds the id table (throws std::invalid_argument on an id in two
  // lists) and sets next_id.
  SdcIndex& list(int l) { return *lists_[l]; }
  const SdcIndex& list(int l) const { return *lists_[l]; }
  void finish_assign(int64_t next_id);
  bool codes_external() const;
  // Exclusive lock for persistence sequences done from outside (export / assign).
  std::unique_lock<std::shared_mutex> lock() const { return std::unique_lock<std::shared_mutex>(mu_); }

 private:
  void check_trained() const;
  void assign_locked(const uint8_t* codes, int64_t n, int32_t* out) const;
  void top_lists(const Geometry& qgeo, const uint8_t* packed, int nprobe, float* scratch, int32_t* out) const;
  void add_locked(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  void remove_locked(const int64_t* ids, int64_t n);
  void rebuild_map();

  Geometry geo_;
  Metric metric_;
  int nlist_;
  std::vector<float> centroids_;  // empty until trained
  std::vector<std::unique_ptr<SdcIndex>> lists_;
  int64_t next_id_ = 0;
  // id -> list: slots of gids_/glist_ (gids_ -1 once removed), keyed through gids_
  std::vector<int64_t> gids_;
  std::vector<int32_t> glist_;
  int64_t gdead_ = 0;
  IdMap gmap_;
  mutable std::shared_mutex mu_;
};

}  // namespace bebr
