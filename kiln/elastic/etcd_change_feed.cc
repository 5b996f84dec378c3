#include "kiln/elastic/etcd_change_feed.h"

namespace kiln::elastic {
namespace {

class EtcdChangeFeed final : public ChangeFeed {
 public:
  explicit EtcdChangeFeed(std::shared_ptr<store::etcd::EtcdStore> store)
      : store_(std::move(store)) {}

  Status mark() override {
    KILN_ASSIGN_OR_RETURN(revision_, store_->revision(Deadline::after(store_->default_timeout())));
    return Status::ok();
  }

  Status wait(Deadline deadline) override { return store_->await_change(revision_, deadline); }

 private:
  std::shared_ptr<store::etcd::EtcdStore> store_;
  std::int64_t revision_ = 0;
};

}  // namespace

std::shared_ptr<ChangeFeed> etcd_change_feed(std::shared_ptr<store::etcd::EtcdStore> store) {
  return std::make_shared<EtcdChangeFeed>(std::move(store));
}

}  // namespace kiln::elastic
