#include "python/kiln_torch/kiln_work.h"

#include <ATen/core/ivalue.h>
#include <fmt/format.h>

#include <stdexcept>

namespace kiln::torch_backend {

KilnWork::KilnWork(int rank, c10d::OpType type, const char* name, std::vector<at::Tensor> outputs,
                   std::vector<at::Tensor> keep, comm::WorkPtr last, std::function<void()> finish)
    : c10d::Work(rank, type),
      name_(name),
      outputs_(std::move(outputs)),
      keep_(std::move(keep)),
      last_(std::move(last)),
      finish_(std::move(finish)) {}

void KilnWork::complete(const Status& s) {
  std::exception_ptr error;
  if (s.is_ok()) {
    try {
      if (finish_) finish_();
    } catch (...) {
      error = std::current_exception();
    }
  } else {
    error = std::make_exception_ptr(
        std::runtime_error(fmt::format("kiln backend: rank {}: {}", rank_, s.to_string())));
  }
  c10::intrusive_ptr<c10::ivalue::Future> future;
  {
    std::lock_guard lock(mutex_);
    completed_ = true;
    exception_ = error;
    future = future_;
    finish_ = nullptr;  // the buffers go once done
    keep_.clear();
  }
  cv_.notify_all();
  if (future) settle(*future, error);
}

bool KilnWork::wait(std::chrono::milliseconds timeout) {
  // Kiln's wait runs the operation on this thread when the engine is idle
  // (no thread hand-off for a small synchronous collective).
  if (last_) {
    (void)last_->wait(timeout == kNoTimeout ? std::chrono::milliseconds::max() : timeout);
  }
  std::unique_lock lock(mutex_);
  if (timeout == kNoTimeout) {
    cv_.wait(lock, [&] { return completed_; });
  } else if (!cv_.wait_for(lock, timeout, [&] { return completed_; })) {
    TORCH_CHECK(false, "kiln backend: rank ", rank_, ": ", name_, " not complete after ",
                timeout.count(), " ms of Work.wait()");
  }
  if (exception_) std::rethrow_exception(exception_);
  return true;
}

c10::intrusive_ptr<c10::ivalue::Future> KilnWork::getFuture() {
  c10::intrusive_ptr<c10::ivalue::Future> future;
  std::exception_ptr error;
  {
    std::lock_guard lock(mutex_);
    if (future_) return future_;
    future_ = c10::make_intrusive<c10::ivalue::Future>(
        c10::ListType::create(c10::TensorType::get()));
    future = future_;
    if (!completed_) return future;
    error = exception_;
  }
  settle(*future, error);
  return future;
}

void KilnWork::settle(c10::ivalue::Future& future, const std::exception_ptr& error) {
  if (error) {
    future.setError(error);
  } else {
    future.markCompleted(c10::IValue(outputs_));
  }
}

}  // namespace kiln::torch_backend
