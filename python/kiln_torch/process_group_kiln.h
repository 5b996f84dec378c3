// ProcessGroupKiln: PyTorch's c10d ProcessGroup on Kiln's communicator, so
// that `torch.distributed.init_process_group("kiln")` (after
// `import kiln_torch`) runs DDP, ZeroRedundancyOptimizer and ordinary
// scripts on Kiln's collectives (shared memory on a host, TCP between).
//
// Operations: allreduce (sum, avg, min, max, product), allreduce_coalesced,
// broadcast, reduce, allgather, _allgather_base, reduce_scatter,
// _reduce_scatter_base, alltoall, alltoall_base (even or uneven splits),
// barrier, send, recv; for float32, float64, float16, bfloat16, int32,
// int64 and uint8 CPU tensors. Anything else raises at the call, naming it.
//
// Every call returns at once with a Work; operations run in issue order on
// the communicator's engine (kiln/comm/communicator.h). A Work keeps its
// tensors alive until done, completes its future (DDP's comm hooks) on the
// thread that finished it, and raises from wait() with Kiln's error, which
// names the operation and the failed peer. The timeout given to
// init_process_group bounds every operation: a dead peer fails the
// operations at once, a stopped one when the timeout passes; after a
// failure every later operation fails too (re-form the group).
//
// Thread safety: calls may come from any thread (DDP's autograd hooks);
// each call's operations are issued together, in call order.
//
// Two ranks that talk over TCP can get a second communicator, so that each
// connection carries one direction of large allreduces (duplex.h, Note [One
// stream per direction for two ranks]) when KILN_TORCH_DUPLEX=1.
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "kiln/comm/communicator.h"
#include "python/kiln_torch/duplex.h"

namespace kiln::torch_backend {

class ProcessGroupKiln : public c10d::ProcessGroup {
 public:
  // Forms the communicator through `store` (blocks until every rank joined
  // or `timeout` passed; raises naming the cause).
  ProcessGroupKiln(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                   std::chrono::milliseconds timeout);
  ~ProcessGroupKiln() override;

  const std::string getBackendName() const override { return "kiln"; }

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors,
                                           const c10d::BroadcastOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(
      std::vector<at::Tensor>& tensors, const c10d::AllreduceCoalescedOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors,
                                        const c10d::ReduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                           std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                                 const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outputs,
                                                std::vector<std::vector<at::Tensor>>& inputs,
                                                const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(
      at::Tensor& output, at::Tensor& input, const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<int64_t>& output_split_sizes,
                                               std::vector<int64_t>& input_split_sizes,
                                               const c10d::AllToAllOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs,
                                          std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dst_rank,
                                      int tag) override;
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int src_rank,
                                      int tag) override;

  // "rank 1/4, shm:3, 1 host": how the communicator connected ("..., one
  // stream per direction" with a second connection for the duplex allreduce).
  std::string describe() const {
    return comm_->describe() + (duplex_ ? ", one stream per direction" : "");
  }

 private:
  // Issues the operations `issue` returns, as one unit, and returns a Work
  // done when the last of them is. On success `finish` runs first (copies
  // out of staging buffers); `outputs` are the Work's result. `keep` holds
  // every tensor the operations read or write until they are done.
  c10::intrusive_ptr<c10d::Work> submit(c10d::OpType type, const char* name,
                                        std::vector<at::Tensor> outputs,
                                        std::vector<at::Tensor> keep,
                                        const std::function<std::vector<comm::WorkPtr>()>& issue,
                                        std::function<void()> finish = nullptr);

  // Uneven alltoall: `send_counts[r]` elements at `send_offsets[r]` go to
  // rank r; `recv_counts[r]` from rank r land at `recv_offsets[r]`.
  std::vector<comm::WorkPtr> alltoallv(const at::Tensor& send, const at::Tensor& recv,
                                       const std::vector<int64_t>& send_counts,
                                       const std::vector<int64_t>& recv_counts);

  // A second communicator and the duplex allreduce over both, for two ranks
  // on TCP (every rank agrees whether there is one).
  void pair_streams();

  struct FailAll;  // Note [A failure fails both communicators]

  std::unique_ptr<comm::Communicator> comm_;
  std::unique_ptr<comm::Communicator> reverse_;  // null unless pair_streams() made one
  std::unique_ptr<Duplex> duplex_;               // over comm_ and reverse_
  std::shared_ptr<FailAll> fail_all_;            // null without reverse_
  std::mutex issue_mu_;                          // one call's operations are issued together
};

}  // namespace kiln::torch_backend
