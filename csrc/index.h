// SdcIndex: the mutable, versioned store of blocked codes behind bebr.Index / bebr.HammingIndex.
//
// Storage (layout.h): codes in 64-slot transposed blocks (owned, or an external read-only
// buffer such as an mmapped file, copied into owned memory on the first change that touches
// codes); per slot an int64 id (-1 once removed) and an int32 version; per block an r-ordered
// alive mask; for cosine per block 64 r-ordered inverse norms. Removal tombstones a slot;
// compact() (also run automatically when more than half the slots are dead) rewrites the live
// slots densely in slot order.
//
// Concurrency: a readers-writer lock; searches and write_dense share it, mutations take it
// exclusively, so a search or a save running while another thread adds sees the index either
// before or after the add. Ids without a caller's ids are assigned under the same lock.
#pragma once
#include <atomic>
#include <cstdint>
#include <limits>
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

// Largest item id: 2**63 - 1 is the "no result" sentinel of the top-k heaps (TopK::kNoId).
constexpr int64_t kMaxId = std::numeric_limits<int64_t>::max() - 1;

// One section of an index file as write_dense wrote it (docs/FORMAT.md, "Index file"):
// numpy dtype string, element count, byte offset from the start of the data area (a multiple of
// 64), byte length and the SHA-256 (hex) of those bytes.
struct SectionInfo {
  std::string name, dtype;
  int64_t count = 0, offset = 0, nbytes = 0;
  std::string sha256;
};
struct DenseFileInfo {
  int64_t n = 0, next_id = 0;
  std::vector<SectionInfo> sections;  // codes, ids, versions, invn
};

// How the calling thread's last search ran: threads planned (1 + helpers offered work), threads
// that processed at least one work item, work items, and how the work was split ("none",
// "queries": groups of queries over the whole database, "database": chunks of blocks).
struct SearchStats {
  int workers = 0;
  int active_workers = 0;
  int64_t items = 0;
  const char* split = "none";
};
SearchStats last_search_stats();

// A search starts one more thread per min_parallel_work() block-queries (blocks scanned x
// queries), up to its `threads`. Default 4096 (~256K item-queries: below that a thread costs
// more than it saves); lower it to run the threaded paths on small indexes (tests).
int64_t min_parallel_work();
void set_min_parallel_work(int64_t work);  // throws std::invalid_argument if work < 1

class SdcIndex {
 public:
  SdcIndex(int dim, int bits, Metric metric);

  const Geometry& geometry() const { return geo_; }
  Metric metric() const { return metric_; }
  int64_t size() const;
  int64_t next_id() const;

  // Add n codes (public packed layout). ids may be null: next_id() .. next_id()+n-1, read and
  // taken under the lock (concurrent adds get distinct ids); returns the first id assigned
  // (next_id() at the call when ids is null, else -1).
  // Throws std::invalid_argument (nothing changed) on negative, duplicate, present or too
  // large (> kMaxId) ids.
  int64_t add(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
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
  // prune > 0: plane pruning (ScanArgs::prune in kernels.h; 2-bit codes only): a block's low
  // plane is skipped where no item could enter the top-k with its low-plane sum `prune`
  // standard deviations above its random-bit mean; returned scores stay exact, but an item
  // lying further out can be missed, and results may depend on `threads`. 0: exact search.
  void search(const uint8_t* queries, int64_t nq, int k, int threads, const FilterSpec& filter,
              float* out_scores, int64_t* out_ids, int query_bits = 0,
              const VersionQueries& version_queries = {}, float prune = 0.f) const;

  std::map<int32_t, int64_t> versions() const;
  std::vector<int64_t> ids_of_version(int32_t v) const;
  std::vector<int64_t> ids() const;  // live ids in slot order
  bool contains(int64_t id) const;
  // Packed codes of ids (throws std::invalid_argument if one is absent).
  void get_codes(const int64_t* ids, int64_t n, uint8_t* out, int32_t* versions) const;

  // ---- persistence ----
  // Write the data area of an index file to the open file descriptor fd at byte data_start,
  // under the shared lock (a concurrent add/remove waits; searches run on): the live slots
  // densely in slot order, sections codes (blocked), ids (int64), versions (int32) and invn
  // (float32, cosine only: n_blocks * 64 r-ordered, else empty), each at a multiple of 64
  // from data_start, zero-padded to the next one, streamed in pieces with their SHA-256
  // computed on the way (no copy of the index). Returns what the header needs. Throws
  // std::system_error if a write fails.
  DenseFileInfo write_dense(int fd, int64_t data_start) const;
  // Replace the content with n dense live slots. codes: n_blocks*block_bytes bytes; if
  // external, the index reads it in place (caller keeps it alive) until a change copies it.
  // Throws std::invalid_argument (nothing changed) on negative, too large or duplicated ids
  // or a next_id out of [0, kMaxId + 1].
  void assign(const uint8_t* codes, bool external, int64_t n, const int64_t* ids,
              const int32_t* versions, const float* invn, int64_t next_id);
  bool codes_external() const;
  // Bytes of memory the index owns (code buffer, ids, versions, alive masks, inverse norms,
  // id map; capacities), excluding external (memory-mapped) codes.
  size_t memory_bytes() const;

 private:
  friend class IvfIndex;  // ivf.cpp scans and exports each list's blocks in place
  size_t codes_nbytes() const;
  void ensure_owned_capacity(int64_t slots);
  void write_slot(int64_t slot, const uint8_t* code);
  void check_new_ids(const int64_t* ids, int64_t n, bool allow_present) const;
  void append(const uint8_t* codes, int64_t n, const int64_t* ids, int32_t version);
  void compact_locked();
  void refresh_norm_min();  // norm_min_ from invn_
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
  std::vector<float> norm_min_;  // cosine: per block a lower bound of its slots' norms (search skip test)
  IdMap slot_of_;  // id -> slot (entries keyed through ids_)
  mutable std::shared_mutex mu_;
};

// Test hook: a search throws std::runtime_error from the worker that takes this work item
// (-1: never). Used by the C++ tests to check that worker exceptions reach the caller.
extern std::atomic<int64_t> testing_fail_item;

// Inverse L2 norm of the scaled values of one packed code (1/sqrt(sum v^2)).
float inverse_norm(const Geometry& geo, const uint8_t* packed);

}  // namespace bebr
