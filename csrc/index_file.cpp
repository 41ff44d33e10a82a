// SdcIndex::write_dense: the data area of an index file (docs/FORMAT.md, "Index file"),
// streamed to a file descriptor under the index's shared lock. Sections, each starting at a
// multiple of 64 bytes from the start of the data area and zero-padded to the next one:
//   codes    uint8   n_blocks * block_bytes  live slots densely in slot order, 64-slot blocks
//   ids      int64   n
//   versions int32   n
//   invn     float32 n_blocks * 64 (cosine; r order within a block, 0 past n), else 0
// Dense indexes stream their buffers as they are; an index with removed slots is compacted on
// the fly, one block at a time (the index itself is not changed).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <system_error>

#include "index.h"
#include "sha256.h"

namespace bebr {
namespace {

constexpr int64_t kAlign = 64;

// Writes at increasing positions of fd through a 1 MiB buffer (pwrite: the descriptor's own
// offset is left alone), hashing the bytes of the current section on the way.
class SectionWriter {
 public:
  SectionWriter(int fd, int64_t pos) : fd_(fd), pos_(pos) { buf_.reserve(kBuf); }

  void begin(SectionInfo& s, int64_t offset) {
    cur_ = &s;
    s.offset = offset;
    sha_ = Sha256();
    nbytes_ = 0;
  }
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    sha_.update(b, n);
    nbytes_ += static_cast<int64_t>(n);
    raw(b, n);
  }
  // Ends the section (nbytes, sha256) and pads it with zeros to the next multiple of 64.
  int64_t end() {
    cur_->nbytes = nbytes_;
    cur_->sha256 = sha_.hex();
    const int64_t padded = (nbytes_ + kAlign - 1) / kAlign * kAlign;
    static const uint8_t zeros[kAlign] = {};
    raw(zeros, static_cast<size_t>(padded - nbytes_));
    return cur_->offset + padded;
  }
  void flush() {
    size_t done = 0;
    while (done < buf_.size()) {
      const ssize_t w = ::pwrite(fd_, buf_.data() + done, buf_.size() - done, static_cast<off_t>(pos_));
      if (w < 0) {
        if (errno == EINTR) continue;
        throw std::system_error(errno, std::generic_category(), "writing the index file");
      }
      done += static_cast<size_t>(w);
      pos_ += w;
    }
    buf_.clear();
  }

 private:
  static constexpr size_t kBuf = size_t(1) << 20;
  void raw(const uint8_t* b, size_t n) {
    while (n) {
      const size_t take = std::min(n, kBuf - buf_.size());
      buf_.insert(buf_.end(), b, b + take);
      b += take;
      n -= take;
      if (buf_.size() == kBuf) flush();
    }
  }

  int fd_;
  int64_t pos_;
  std::vector<uint8_t> buf_;
  SectionInfo* cur_ = nullptr;
  Sha256 sha_;
  int64_t nbytes_ = 0;
};

}  // namespace

bool SdcIndex::codes_external() const {
  std::shared_lock lk(mu_);
  return external_;
}

size_t SdcIndex::memory_bytes() const {
  std::shared_lock lk(mu_);
  return (external_ ? 0 : owned_.capacity()) + ids_.capacity() * sizeof(int64_t) +
         versions_.capacity() * sizeof(int32_t) + alive_.capacity() * sizeof(uint64_t) +
         (invn_.capacity() + norm_min_.capacity()) * sizeof(float) + slot_of_.memory_bytes();
}

DenseFileInfo SdcIndex::write_dense(int fd, int64_t data_start) const {
  if (data_start < 0 || data_start % kAlign)
    throw std::invalid_argument("data_start must be a non-negative multiple of 64, got " + std::to_string(data_start));
  std::shared_lock lk(mu_);
  const bool dense = nalive_ == nslots_;
  const int64_t n = nalive_;
  const int64_t nb = (n + kBlock - 1) / kBlock;
  const size_t bb = static_cast<size_t>(geo_.block_bytes);
  const bool cosine = metric_ == Metric::kCosine;

  DenseFileInfo info;
  info.n = n;
  info.next_id = next_id_;
  auto section = [](const char* name, const char* dtype, int64_t count) {
    SectionInfo s;
    s.name = name;
    s.dtype = dtype;
    s.count = count;
    return s;
  };
  info.sections = {section("codes", "|u1", static_cast<int64_t>(nb * bb)), section("ids", "<i8", n),
                   section("versions", "<i4", n), section("invn", "<f4", cosine ? nb * kBlock : 0)};
  SectionWriter w(fd, data_start);
  int64_t off = 0;

  // codes
  w.begin(info.sections[0], off);
  if (dense) {
    if (nb) w.put(codes_, static_cast<size_t>(nb) * bb);
  } else {
    std::vector<uint8_t> blk(bb, 0);
    int64_t d = 0;
    for (int64_t s = 0; s < nslots_; ++s) {
      if (ids_[s] < 0) continue;
      const uint8_t* S = codes_ + (s / kBlock) * bb;
      const int si = static_cast<int>(s % kBlock), di = static_cast<int>(d % kBlock);
      for (int j = 0; j < geo_.item_bytes; ++j) blk[geo_.offset(di, j)] = S[geo_.offset(si, j)];
      if (++d % kBlock == 0) {
        w.put(blk.data(), bb);
        std::fill(blk.begin(), blk.end(), 0);
      }
    }
    if (d % kBlock) w.put(blk.data(), bb);
  }
  off = w.end();

  // ids, versions: the live entries in slot order
  w.begin(info.sections[1], off);
  if (dense) {
    if (n) w.put(ids_.data(), static_cast<size_t>(n) * sizeof(int64_t));
  } else {
    for (int64_t s = 0; s < nslots_; ++s)
      if (ids_[s] >= 0) w.put(&ids_[s], sizeof(int64_t));
  }
  off = w.end();
  w.begin(info.sections[2], off);
  if (dense) {
    if (n) w.put(versions_.data(), static_cast<size_t>(n) * sizeof(int32_t));
  } else {
    for (int64_t s = 0; s < nslots_; ++s)
      if (ids_[s] >= 0) w.put(&versions_[s], sizeof(int32_t));
  }
  off = w.end();

  // inverse norms, r order per block
  w.begin(info.sections[3], off);
  if (cosine) {
    if (dense) {
      if (nb) w.put(invn_.data(), static_cast<size_t>(nb * kBlock) * sizeof(float));
    } else {
      std::vector<float> blk(kBlock, 0.f);
      int64_t d = 0;
      for (int64_t s = 0; s < nslots_; ++s) {
        if (ids_[s] < 0) continue;
        blk[kR.r_of_item[d % kBlock]] = invn_[(s / kBlock) * kBlock + kR.r_of_item[s % kBlock]];
        if (++d % kBlock == 0) {
          w.put(blk.data(), kBlock * sizeof(float));
          std::fill(blk.begin(), blk.end(), 0.f);
        }
      }
      if (d % kBlock) w.put(blk.data(), kBlock * sizeof(float));
    }
  }
  w.end();
  w.flush();
  return info;
}

}  // namespace bebr
