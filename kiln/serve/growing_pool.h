// GrowingThreadPool: the thread pool behind a cpp-httplib server set up by
// start_http_front (http_front.h; kiln serve's own fronts are EventFronts
// now, event_front.h). httplib's own ThreadPool starts all its threads at once.
//
// Note [A pool that grows]: an httplib server needs a thread per keep-alive
// connection (it serves one on a pool thread until it idles for 5 s),
// but not while its weights load, and not while idle. Starting 512 threads
// at once costs CPU and 512 stack mappings at the moment the replica is
// loading its model. (It was suspected of slowing a node-cache hit's model
// build; measured, that was page faults of the model's fresh memory, not
// thread starts: docs/perf.md, issue 20, session 6.) This pool
// starts `min_threads` and adds one whenever a job arrives and no thread is
// free for it, up to `max_threads`; threads are never retired (a
// keep-alive connection holds one anyway). Queued jobs run before
// shutdown() returns, as in httplib's pool.
#pragma once

#include <httplib.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::serve {

class GrowingThreadPool : public httplib::TaskQueue {
 public:
  GrowingThreadPool(std::size_t min_threads, std::size_t max_threads);
  ~GrowingThreadPool() override;

  void enqueue(std::function<void()> fn) override;
  void shutdown() override;

  // Threads started so far.
  std::size_t threads() const;

 private:
  void work();

  const std::size_t max_threads_;
  mutable std::mutex mutex_;
  std::condition_variable cond_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  std::size_t idle_ = 0;  // threads not running a job (waiting, or not started yet)
  std::size_t started_ = 0;
  bool shutdown_ = false;
};

}  // namespace kiln::serve
