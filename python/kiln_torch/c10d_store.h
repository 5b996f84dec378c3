// C10dStore: Kiln's Store interface over a PyTorch c10d::Store.
//
// The kiln backend forms its communicator through the store PyTorch hands
// every backend (env:// rendezvous: the TCPStore rank 0 hosts on
// MASTER_PORT, behind the group's PrefixStore), so `init_process_group("kiln")`
// works wherever "gloo" does: under torchrun, `kiln run` and `kiln launch`.
//
// Codes: DeadlineExceeded when a wait or get runs out of time (naming the
// keys), Unavailable for any other store failure (the store's message kept).
// Thread safety: as the wrapped store (TCPStore serialises its calls).
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "kiln/store/store.h"

namespace kiln::torch_backend {

class C10dStore final : public store::Store {
 public:
  explicit C10dStore(c10::intrusive_ptr<c10d::Store> store);

  Status set(std::string_view key, std::string_view value) override;
  Result<std::string> get(std::string_view key, Deadline deadline) override;
  Result<std::int64_t> add(std::string_view key, std::int64_t delta) override;
  Result<std::string> compare_set(std::string_view key, std::string_view expected,
                                  std::string_view desired) override;
  Status wait(std::span<const std::string> keys, Deadline deadline) override;
  Result<bool> erase(std::string_view key) override;
  Result<bool> check(std::span<const std::string> keys) override;

 private:
  c10::intrusive_ptr<c10d::Store> store_;
};

}  // namespace kiln::torch_backend
