// BoundedUploaders: the bounded queue of uploader threads behind both
// streaming uploads, a multipart upload's parts (s3/s3_object_writer.h) and
// a stream's chunk objects (chunked_objects.h).
//
// The caller's thread fills a buffer and hands it over as the next piece;
// hand_over() blocks only while `parallelism` pieces are queued or being
// sent, so at most (parallelism + 1) pieces are held, the caller's own
// included. `parallelism` threads (started with the first piece) send
// pieces in turn with `send`. The first failure is kept: pieces queued after
// it are dropped unsent, and hand_over() and drain() return it. Buffers of
// pieces sent are kept for reuse (take_spare): their pages are mapped
// already, so refilling one costs no page faults.
//
// One thread hands over, drains and stops; the uploader threads are the
// object's own.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::objstore {

class BoundedUploaders {
 public:
  struct Piece {
    std::size_t index = 0;  // in hand-over order, from 0
    std::string name;       // what the caller calls it (a chunk's key)
    std::string bytes;      // `send` may move them out
  };
  // Sends one piece; runs on an uploader thread, several at once.
  using Send = std::function<Status(Piece&)>;

  // `what` names the upload in errors ("chunked upload to s3://b/p").
  BoundedUploaders(int parallelism, Deadline deadline, std::string what, Send send);
  // stop().
  ~BoundedUploaders();
  BoundedUploaders(const BoundedUploaders&) = delete;
  BoundedUploaders& operator=(const BoundedUploaders&) = delete;

  // Queues a piece once fewer than `parallelism` are in flight. Returns the
  // first failure instead, or DeadlineExceeded.
  Status hand_over(std::string name, std::string bytes);
  // Waits until every piece handed over is sent; the first failure, or
  // DeadlineExceeded.
  Status drain();
  // Drops the pieces not yet sent (failing the upload with `why` unless it
  // failed already), waits for those being sent, joins the threads.
  // Idempotent.
  void stop(Status why);
  // A buffer of a piece sent (cleared, capacity kept), or an empty string.
  std::string take_spare();
  std::size_t pieces() const { return next_index_; }

 private:
  void uploader();
  void join();

  const int parallelism_;
  const Deadline deadline_;
  const std::string what_;
  const Send send_;

  // The caller's thread only.
  std::size_t next_index_ = 0;
  std::vector<std::thread> threads_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Piece> queue_;         // guarded by mu_
  int in_flight_ = 0;               // guarded by mu_: queued + being sent
  std::vector<std::string> spare_;  // guarded by mu_
  Status failed_;                   // guarded by mu_: the first failure
  bool stop_ = false;               // guarded by mu_
};

}  // namespace kiln::objstore
