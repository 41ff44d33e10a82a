// SdcIndex: the mutable, versioned store of blocked codes behind bebr.Index / bebr.HammingIndex.
//
// Storage (layout.h): codes in 64-slot transposed blocks (owned, or an external read-only
// buffer such as an mmapped file, copied into owned memory on the first change that touches
// codes); per slot an int64 id (-1 once removed) and an int32 version; per block an r-ordered
// alive mask; for cosine per block 64 r-ordered inverse norms. Removal tombstones a slot;
// compact() (also run automatically when more than half the slots are dead) rewrites the live
// slots densely in slot order.
//
// Concurrency: a readers-writer lock; searches share it, mutations take it exclusively, so a
// search running while another thread adds sees the index either before or after the add.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <shared_mutex>
#include <string>
#include <vector>

#include "buffer.h"
#include "id_map.h"
#include "kernels.h"

namespace bebr {

enum class Metric : int { kIP = 0, kCosine = 1, kHamming = 2 };

// Optional id filter of a search: allow-list and/or exclude-list, each as ids or as a boolean
// mask indexed by id (ids at or past the mask's length read as false).
struct FilterSpec {
  const int64_t* allow_ids = nullptr;
  int64_t n_allow_ids = -1;  // -1: not given
  const uint8_t* allow_mask = nullptr;
  int64_t allow_mask_len = -1;
  const int64_t* exclude_ids = nullptr;
  int64_t n_exclude_ids = -1;
  const uint8_t* exclude_mask = nullptr;
  int64_t exclude_mask_len = -1;
  bool any() const {
    return n_allow_ids >= 0 || allow_mask_len >= 0 || n_exclude_ids >= 0 || exclude_mask_len >= 0;
  }
};

// Optional per-version query codes of a search: items whose version is versions[v] are
// scored with codes[v] (nq queries, same packing as the main queries) instead of the main
// queries; each query keeps one top-k over all versions, in one pass over the codes.
struct VersionQueries {
  int n = 0;
  const int32_t* versions = nullptr;
  const uint8_t* const* codes = nullptr;
  // Optional per-version score calibration (nullptr: none): the items of versions[v] score
  // scale[v] * score + shift[v] (score as search returns it), so that one query's scores under
  // different codes compare (a query head's cosine mapped onto the new version's own scale).
  const float* scale = nullptr;
  const float* shift = nullptr;
};

class SdcIndex {
 public:
  SdcIndex(int dim, int bits, Metric metric);

  const Geometry& geometry() const { return geo_; }
  Metric metric() const { return metric_; }
  int64_t size() const;
  int64_t next_id() const;

  // Add n codes (public packed layout). ids may be null: next_id() .. next_id()+n-1.
  // Throws std::invalid_argument (nothing changed) on negative, duplicate or present ids.
  void add(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  // Replace the codes/version of present ids, add the others.
  void upsert(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  // Remove ids; throws std::invalid_argument (nothing changed) if any is not present.
  void remove(const int64_t* ids, int64_t n);
  // Rewrite live slots densely.
  void compact();

  // Search nq packed queries; outputs (nq, k) must be pre-allocated. threads >= 1.
  // query_bits: bits per dimension of the query codes (packed at (dim, query_bits), 1..4 over 1-2-bit codes, 1..7 over 3-4-bit
  // codes; 0 =
  // the index's bits). Scores are exact for any mix: ip = sum_j q_j d_j of the code values.
  void search(const uint8_t* queries, int64_t nq, int k, int threads, const FilterSpec& filter,
              float* out_scores, int64_t* out_ids, int query_bits = 0,
              const VersionQueries& version_queries = {}) const;

  std::map<int32_t, int64_t> versions() const;
  std::vector<int64_t> ids_of_version(int32_t v) const;
  std::vector<int64_t> ids() const;  // live ids in slot order
  bool contains(int64_t id) const;
  // Packed codes of ids (throws std::invalid_argument if one is absent).
  void get_codes(const int64_t* ids, int64_t n, uint8_t* out, int32_t* versions) const;

  // ---- persistence (compact first; then every slot < size() is live) ----
  // Copies of the dense arrays; codes_view() points into the index (valid while unchanged).
  const uint8_t* codes_data() const { return codes_; }
  size_t codes_nbytes() const;
  const std::vector<int64_t>& slot_ids() const { return ids_; }
  const std::vector<int32_t>& slot_versions() const { return versions_; }
  const std::vector<float>& slot_invn() const { return invn_; }
  const std::vector<uint64_t>& slot_alive() const { return alive_; }  // per block r-mask of live slots
  size_t id_map_bytes() const { return slot_of_.memory_bytes(); }
  // Replace the content with n dense live slots. codes: n_blocks*block_bytes bytes; if
  // external, the index reads it in place (caller keeps it alive) until a change copies it.
  void assign(const uint8_t* codes, bool external, int64_t n, const int64_t* ids,
              const int32_t* versions, const float* invn, int64_t next_id);
  bool codes_external() const { return external_; }
  int64_t n_slots() const { return nslots_; }

 private:
  void ensure_owned_capacity(int64_t slots);
  void write_slot(int64_t slot, const uint8_t* code);
  void check_new_ids(const int64_t* ids, int64_t n, bool allow_present) const;
  void append(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  void compact_locked();
  std::vector<uint64_t> build_filter(const FilterSpec& f) const;

  Geometry geo_;
  Metric metric_;
  CodeBuffer owned_;
  const uint8_t* codes_ = nullptr;
  bool external_ = false;
  int64_t nslots_ = 0;
  int64_t nalive_ = 0;
  int64_t next_id_ = 0;
  std::vector<int64_t> ids_;
  std::vector<int32_t> versions_;
  std::vector<uint64_t> alive_;
  std::vector<float> invn_;
  IdMap slot_of_;  // id -> slot (entries keyed through ids_)
  mutable std::shared_mutex mu_;
};

// Test hook: a search throws std::runtime_error from the worker that takes this work item
// (-1: never). Used by the C++ tests to check that worker exceptions reach the caller.
extern std::atomic<int64_t> testing_fail_item;

// Inverse L2 norm of the scaled values of one packed code (1/sqrt(sum v^2)).
float inverse_norm(const Geometry& geo, const uint8_t* packed);

}  // namespace bebr
