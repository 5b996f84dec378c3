#include "kiln/serve/capped_model.h"

#include <chrono>
#include <thread>

#include "kiln/base/check.h"
#include "kiln/base/deadline.h"

namespace kiln::serve {
namespace {

class CappedModel : public Model {
 public:
  CappedModel(std::unique_ptr<Model> inner, double capacity_rps)
      : inner_(std::move(inner)), seconds_per_request_(1.0 / capacity_rps) {}

  const ModelInfo& info() const override { return inner_->info(); }

  std::vector<Result<Output>> run(std::vector<Input>& batch) override {
    const auto start = Clock::now();
    std::vector<Result<Output>> out = inner_->run(batch);
    // Note [A replica's capacity, enforced]: the batch's service time, not
    // a synchronisation.
    std::this_thread::sleep_until(
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                    static_cast<double>(batch.size()) * seconds_per_request_)));
    return out;
  }

 private:
  std::unique_ptr<Model> inner_;
  double seconds_per_request_;
};

}  // namespace

std::unique_ptr<Model> cap_capacity(std::unique_ptr<Model> model, double capacity_rps) {
  KILN_CHECK_MSG(capacity_rps > 0, "cap_capacity needs a capacity above 0 req/s");
  return std::make_unique<CappedModel>(std::move(model), capacity_rps);
}

}  // namespace kiln::serve
