// HelperPool: a process-wide set of sleeping helper threads for search. Waking a sleeping
// thread is fast even on a loaded machine, whereas a newly created thread can wait a whole
// scheduler period before it first runs. Posting never blocks and a task is best-effort: the
// caller always works through its own items (see SdcIndex::search), so a helper that picks a
// task up late, or never (busy with another search, or after fork()), only costs speed.
// The pool is intentionally leaked (helpers detached): nothing to join at interpreter exit.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace bebr {

class HelperPool {
 public:
  using Task = std::function<void(int)>;  // called with helper index t in [1, nthreads)

  static HelperPool& instance() {
    static HelperPool* pool = new HelperPool();
    return *pool;
  }

  // Offer `task` to helpers 1..nthreads-1 (spawning helpers up to that count once).
  void post(std::shared_ptr<Task> task, int nthreads) {
    {
      std::lock_guard<std::mutex> g(mu_);
      while (spawned_ < nthreads - 1 && spawned_ < kMaxHelpers) {
        const int index = ++spawned_;
        std::thread([this, index] { loop(index); }).detach();
      }
      task_ = std::move(task);
      task_threads_ = nthreads;
      ++gen_;
    }
    cv_.notify_all();
  }

 private:
  static constexpr int kMaxHelpers = 255;

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Task> task;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        if (index < task_threads_) task = task_;
      }
      if (task) (*task)(index);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Task> task_;
  int task_threads_ = 0;
  uint64_t gen_ = 0;
  int spawned_ = 0;
};

}  // namespace bebr
