// HMAC-SHA256 challenge-response: how a connection proves both ends hold the
// job token without sending it. Pure functions, no I/O; the store
// (kiln/store/tcp) and the comm tcp transport run it over their sockets.
//
//   acceptor  -> initiator   Challenge: u8 mode, 32-byte nonce A
//   initiator -> acceptor    Proof: 32-byte nonce B, HMAC(token, "initiator" | purpose | A | B)
//   acceptor  -> initiator   Verdict: u8 accepted, HMAC(token, "acceptor" | purpose | A | B)
//
// Note [Why the handshake is replay-safe]: the acceptor picks a fresh random
// nonce A per connection, so a proof recorded on one connection is useless on
// another; the initiator's nonce B does the same for the acceptor's answer, so
// a rogue acceptor cannot replay a real one's verdict. The role label keeps a
// proof from being reflected back as a verdict. `purpose` binds the proof to
// what is being opened (the store, or one comm group's connection between
// two given ranks). MACs are compared in constant time (CRYPTO_memcmp).
//
// Mode 0 ("open") is a job without a token: the proof and verdict carry
// zeros and prove nothing. An initiator that holds a token refuses an open
// acceptor (it cannot tell a rogue one from ours); an acceptor that holds one
// refuses every proof that does not verify.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln::auth {

inline constexpr std::size_t kNonceBytes = 32;
inline constexpr std::size_t kMacBytes = 32;
inline constexpr std::size_t kChallengeBytes = 1 + kNonceBytes;
inline constexpr std::size_t kProofBytes = kNonceBytes + kMacBytes;
inline constexpr std::size_t kVerdictBytes = 1 + kMacBytes;

// HMAC-SHA256(key, message) through OpenSSL: 32 raw bytes.
std::string hmac_sha256(std::string_view key, std::string_view message);
// Constant-time equality of two MACs (false when the sizes differ).
bool macs_equal(std::string_view a, std::string_view b);
// kNonceBytes from the OS's CSPRNG.
Result<std::string> random_nonce();

// The acceptor's side of one connection. An empty token is the open mode.
class Acceptor {
 public:
  Acceptor(std::string token, std::string purpose)
      : token_(std::move(token)), purpose_(std::move(purpose)) {}

  // The challenge to send; call once.
  Result<std::string> challenge();
  // Checks the initiator's kProofBytes. Ok: send verdict(true) and go on.
  // FailedPrecondition naming the cause: send verdict(false), then close.
  Status check_proof(std::string_view proof);
  std::string verdict(bool accepted) const;

 private:
  std::string token_;
  std::string purpose_;
  std::string nonce_a_;
  std::string nonce_b_;
};

// The initiator's side of one connection.
class Initiator {
 public:
  Initiator(std::string token, std::string purpose)
      : token_(std::move(token)), purpose_(std::move(purpose)) {}

  // The proof answering the acceptor's kChallengeBytes; FailedPrecondition
  // when the modes disagree (one side has a token, the other not), DataLoss
  // for a malformed challenge.
  Result<std::string> answer(std::string_view challenge);
  // Ok when the acceptor accepted us and proved it holds the token too.
  Status check_verdict(std::string_view verdict) const;

 private:
  std::string token_;
  std::string purpose_;
  bool open_ = false;
  std::string nonce_a_;
  std::string nonce_b_;
};

}  // namespace kiln::auth
