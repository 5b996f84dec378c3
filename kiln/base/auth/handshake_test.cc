#include "kiln/base/auth/handshake.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace kiln::auth {
namespace {

const std::string kToken = "0123456789abcdef0123456789abcdef";

// Runs the three messages between two ends; returns (acceptor, initiator) results.
std::pair<Status, Status> run(const std::string& acceptor_token, const std::string& initiator_token,
                              const std::string& acceptor_purpose = "store",
                              const std::string& initiator_purpose = "store") {
  Acceptor a(acceptor_token, acceptor_purpose);
  Initiator i(initiator_token, initiator_purpose);
  auto challenge = a.challenge();
  EXPECT_TRUE(challenge.is_ok());
  auto proof = i.answer(*challenge);
  if (!proof.is_ok()) return {Status::ok(), proof.status()};
  Status accepted = a.check_proof(*proof);
  return {accepted, i.check_verdict(a.verdict(accepted.is_ok()))};
}

TEST(Handshake, SameTokenAuthenticatesBothEnds) {
  auto [a, i] = run(kToken, kToken);
  EXPECT_TRUE(a.is_ok()) << a.to_string();
  EXPECT_TRUE(i.is_ok()) << i.to_string();
}

TEST(Handshake, WrongTokenIsRefusedByTheAcceptor) {
  auto [a, i] = run(kToken, "ffffffffffffffffffffffffffffffff");
  EXPECT_EQ(a.code(), Code::kFailedPrecondition);
  EXPECT_NE(a.message().find("does not hold this job's token"), std::string::npos);
  EXPECT_EQ(i.code(), Code::kFailedPrecondition);
}

TEST(Handshake, NoTokenAgainstATokenIsRefusedBeforeAnyProof) {
  auto [a, i] = run(kToken, "");
  EXPECT_EQ(i.code(), Code::kFailedPrecondition);
  EXPECT_NE(i.message().find("KILN_JOB_TOKEN"), std::string::npos);
}

TEST(Handshake, AnInitiatorWithATokenRefusesAnOpenAcceptor) {
  auto [a, i] = run("", kToken);
  EXPECT_EQ(i.code(), Code::kFailedPrecondition);
}

TEST(Handshake, OpenOnBothEndsIsAccepted) {
  auto [a, i] = run("", "");
  EXPECT_TRUE(a.is_ok());
  EXPECT_TRUE(i.is_ok());
}

TEST(Handshake, APurposeMismatchFails) {
  auto [a, i] = run(kToken, kToken, "comm g1 1->0", "comm g1 2->0");
  EXPECT_EQ(a.code(), Code::kFailedPrecondition);
}

TEST(Handshake, AProofRecordedOnOneConnectionDoesNotOpenAnother) {
  Acceptor first(kToken, "store");
  Initiator honest(kToken, "store");
  auto proof = honest.answer(*first.challenge());
  ASSERT_TRUE(proof.is_ok());
  ASSERT_TRUE(first.check_proof(*proof).is_ok());
  // The attacker replays the recorded proof to a new connection, which
  // challenges with a fresh nonce.
  Acceptor second(kToken, "store");
  ASSERT_TRUE(second.challenge().is_ok());
  EXPECT_EQ(second.check_proof(*proof).code(), Code::kFailedPrecondition);
}

TEST(Handshake, AVerdictIsNotAProof) {
  // Reflection: a rogue acceptor cannot pass the initiator's own proof off
  // as its verdict.
  Acceptor a(kToken, "store");
  Initiator i(kToken, "store");
  auto proof = i.answer(*a.challenge());
  ASSERT_TRUE(proof.is_ok());
  std::string forged = std::string(1, '\1') + proof->substr(kNonceBytes);
  EXPECT_EQ(i.check_verdict(forged).code(), Code::kFailedPrecondition);
}

TEST(Handshake, MalformedMessagesAreErrorsNotCrashes) {
  Initiator i(kToken, "store");
  EXPECT_EQ(i.answer("short").status().code(), Code::kDataLoss);
  EXPECT_EQ(i.answer(std::string(kChallengeBytes, '\7')).status().code(), Code::kDataLoss);
  Acceptor a(kToken, "store");
  ASSERT_TRUE(a.challenge().is_ok());
  EXPECT_EQ(a.check_proof("x").code(), Code::kFailedPrecondition);
  EXPECT_EQ(i.check_verdict("").code(), Code::kDataLoss);
}

TEST(Hmac, MatchesRfc4231TestCase2) {
  std::string mac = hmac_sha256("Jefe", "what do ya want for nothing?");
  std::string hex;
  for (unsigned char c : mac) hex += fmt::format("{:02x}", c);
  EXPECT_EQ(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(Hmac, MacsEqualComparesSizeAndBytes) {
  EXPECT_TRUE(macs_equal("abc", "abc"));
  EXPECT_FALSE(macs_equal("abc", "abd"));
  EXPECT_FALSE(macs_equal("abc", "abcd"));
}

}  // namespace
}  // namespace kiln::auth
