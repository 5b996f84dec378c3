#include "kiln/objstore/bounded_uploaders.h"

#include <fmt/format.h>

#include <utility>

namespace kiln::objstore {

BoundedUploaders::BoundedUploaders(int parallelism, Deadline deadline, std::string what, Send send)
    : parallelism_(parallelism < 1 ? 1 : parallelism),
      deadline_(deadline),
      what_(std::move(what)),
      send_(std::move(send)) {}

BoundedUploaders::~BoundedUploaders() { stop(cancelled(what_ + ": stopped")); }

Status BoundedUploaders::hand_over(std::string name, std::string bytes) {
  {
    std::unique_lock<std::mutex> l(mu_);
    bool room = cv_.wait_until(l, deadline_.at(),
                               [&] { return in_flight_ < parallelism_ || !failed_.is_ok(); });
    if (!failed_.is_ok()) return failed_;
    if (!room) {
      return deadline_exceeded(
          fmt::format("{}: deadline passed with {} in flight", what_, in_flight_));
    }
    if (stop_) return failed_precondition(what_ + ": stopped");
    queue_.push_back(Piece{next_index_++, std::move(name), std::move(bytes)});
    ++in_flight_;
  }
  if (threads_.empty()) {
    for (int i = 0; i < parallelism_; ++i) threads_.emplace_back([this] { uploader(); });
  }
  cv_.notify_all();
  return Status::ok();
}

void BoundedUploaders::uploader() {
  while (true) {
    Piece piece;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      piece = std::move(queue_.front());
      queue_.pop_front();
      if (!failed_.is_ok()) {  // the upload is lost anyway: do not send more
        --in_flight_;
        cv_.notify_all();
        continue;
      }
    }
    Status s = send_(piece);
    std::lock_guard<std::mutex> l(mu_);
    if (!s.is_ok() && failed_.is_ok()) failed_ = s;
    piece.bytes.clear();
    spare_.push_back(std::move(piece.bytes));
    --in_flight_;
    cv_.notify_all();
  }
}

Status BoundedUploaders::drain() {
  std::unique_lock<std::mutex> l(mu_);
  bool drained = cv_.wait_until(l, deadline_.at(), [&] { return in_flight_ == 0; });
  if (!failed_.is_ok()) return failed_;
  if (!drained) {
    return deadline_exceeded(
        fmt::format("{}: deadline passed with {} in flight", what_, in_flight_));
  }
  return Status::ok();
}

void BoundedUploaders::stop(Status why) {
  {
    std::lock_guard<std::mutex> l(mu_);
    in_flight_ -= static_cast<int>(queue_.size());
    queue_.clear();  // pieces not yet sent never will be
    if (failed_.is_ok() && !why.is_ok()) failed_ = std::move(why);
    stop_ = true;
  }
  cv_.notify_all();
  // A piece being sent finishes (bounded by its own deadline).
  join();
}

void BoundedUploaders::join() {
  for (auto& t : threads_) t.join();
  threads_.clear();
}

std::string BoundedUploaders::take_spare() {
  std::lock_guard<std::mutex> l(mu_);
  if (spare_.empty()) return std::string();
  std::string s = std::move(spare_.back());
  spare_.pop_back();
  return s;
}

}  // namespace kiln::objstore
