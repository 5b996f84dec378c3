#include "kiln/base/status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace kiln {
namespace {

Result<int> half(int x) {
  if (x % 2 != 0) return invalid_argument("odd");
  return x / 2;
}

Result<int> quarter(int x) {
  KILN_ASSIGN_OR_RETURN(int h, half(x));
  KILN_ASSIGN_OR_RETURN(int q, half(h));
  return q;
}

TEST(Status, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.is_ok());
  EXPECT_EQ(s.to_string(), "OK");
}

TEST(Status, CarriesCodeMessageAndContext) {
  Status s = unavailable("connect refused").with_context("store get 'k'");
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.to_string(), "Unavailable: store get 'k': connect refused");
}

TEST(Status, ErrnoMapsToActionableCodes) {
  EXPECT_EQ(errno_status("x", ECONNREFUSED).code(), Code::kUnavailable);
  EXPECT_EQ(errno_status("x", ENOSPC).code(), Code::kResourceExhausted);
  EXPECT_EQ(errno_status("x", ENOENT).code(), Code::kNotFound);
  EXPECT_NE(errno_status("write /tmp/f", ENOSPC).message().find("write /tmp/f"), std::string::npos);
}

TEST(Result, PropagatesThroughMacros) {
  EXPECT_EQ(quarter(8).value(), 2);
  Result<int> r = quarter(6);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

TEST(Result, OkStatusIsNotAValue) {
  Result<int> r{Status::ok()};
  EXPECT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
}

}  // namespace
}  // namespace kiln
