// KilnWork: the c10d Work of one ProcessGroupKiln call (process_group_kiln.h).
//
// Done when the call's last Kiln operation is (a communicator's operations
// finish in issue order), after `finish` copied results out of staging
// buffers. wait() runs the operation on the caller's thread when Kiln's
// engine is idle and raises Kiln's error; getFuture()'s future completes on
// the thread that finished the operation. Any thread may wait or poll.
#pragma once

#include <torch/csrc/distributed/c10d/Work.hpp>

#include <functional>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/work.h"

namespace kiln::torch_backend {

class KilnWork : public c10d::Work {
 public:
  // `keep` holds every tensor the operations read or write until done.
  KilnWork(int rank, c10d::OpType type, const char* name, std::vector<at::Tensor> outputs,
           std::vector<at::Tensor> keep, comm::WorkPtr last, std::function<void()> finish);

  // Called once, on the thread that finished the last operation, with the
  // first failure among the call's operations (or ok).
  void complete(const Status& s);

  bool wait(std::chrono::milliseconds timeout) override;
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;
  std::vector<at::Tensor> result() override { return outputs_; }

 private:
  void settle(c10::ivalue::Future& future, const std::exception_ptr& error);

  const char* name_;
  const std::vector<at::Tensor> outputs_;
  std::vector<at::Tensor> keep_;  // guarded by mutex_
  comm::WorkPtr last_;
  std::function<void()> finish_;                    // guarded by mutex_
  c10::intrusive_ptr<c10::ivalue::Future> future_;  // guarded by mutex_
};

}  // namespace kiln::torch_backend
