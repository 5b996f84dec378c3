// S3rverTest: the one gtest fixture for tests against a real s3rver. Each test
// gets a fresh LocalS3Server (its own port, directory and bucket), started on
// the test's main thread (s3rver dies with the thread that forked it); the
// test is skipped where s3rver is not installed. A derived fixture's SetUp
// calls S3rverTest::SetUp() first and returns if IsSkipped() or
// HasFatalFailure().
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>

#include "kiln/objstore/s3/local_s3rver.h"
#include "kiln/objstore/s3/s3_object_store.h"

namespace kiln::objstore::s3::testing {

class S3rverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!LocalS3Server::installed()) GTEST_SKIP() << LocalS3Server::kNotInstalled;
    auto server = LocalS3Server::start();
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    s3_ = std::move(server).value();
  }

  LocalS3Server& s3() { return *s3_; }

  // s3://BUCKET/PREFIX with `options` (default: the server's own); null,
  // with a test failure, if it does not open.
  std::unique_ptr<S3ObjectStore> open_store(const std::string& prefix,
                                            std::optional<S3Options> options = std::nullopt) {
    auto store = S3ObjectStore::open(s3_->url(prefix), options.value_or(s3_->options()));
    EXPECT_TRUE(store.is_ok()) << store.status().to_string();
    return store.is_ok() ? std::move(store).value() : nullptr;
  }

  std::unique_ptr<LocalS3Server> s3_;
};

}  // namespace kiln::objstore::s3::testing
