#include "kiln/base/auth/handshake.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include "kiln/base/check.h"

namespace kiln::auth {
namespace {

constexpr std::uint8_t kModeOpen = 0;
constexpr std::uint8_t kModeHmacSha256 = 1;

// role, purpose (length-prefixed so no two (role, purpose) pairs share an
// encoding), then both nonces: see Note [Why the handshake is replay-safe].
std::string transcript(std::string_view role, std::string_view purpose, std::string_view a,
                       std::string_view b) {
  std::string m = fmt::format("kiln-auth-v1 {}", role);
  m.push_back('\0');
  auto n = static_cast<std::uint32_t>(purpose.size());
  for (int i = 0; i < 4; ++i) m.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  m.append(purpose);
  m.append(a);
  m.append(b);
  return m;
}

}  // namespace

std::string hmac_sha256(std::string_view key, std::string_view message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // HMAC() fails only on allocation failure or a bad digest: both bugs here.
  KILN_CHECK(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                  reinterpret_cast<const unsigned char*>(message.data()), message.size(), out,
                  &len) != nullptr);
  KILN_CHECK(len == kMacBytes);
  return std::string(reinterpret_cast<const char*>(out), len);
}

bool macs_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Result<std::string> random_nonce() {
  std::string nonce(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), static_cast<int>(nonce.size())) !=
      1) {
    return internal_error("RAND_bytes failed: the OS random source is unavailable");
  }
  return nonce;
}

Result<std::string> Acceptor::challenge() {
  KILN_CHECK_MSG(nonce_a_.empty(), "Acceptor::challenge called twice");
  KILN_ASSIGN_OR_RETURN(nonce_a_, random_nonce());
  std::string out(1, static_cast<char>(token_.empty() ? kModeOpen : kModeHmacSha256));
  out += nonce_a_;
  return out;
}

Status Acceptor::check_proof(std::string_view proof) {
  KILN_CHECK_MSG(!nonce_a_.empty(), "Acceptor::check_proof before challenge");
  if (proof.size() != kProofBytes) {
    return failed_precondition(
        fmt::format("authentication proof of {} bytes, want {}", proof.size(), kProofBytes));
  }
  nonce_b_ = std::string(proof.substr(0, kNonceBytes));
  if (token_.empty()) return Status::ok();
  std::string want = hmac_sha256(token_, transcript("initiator", purpose_, nonce_a_, nonce_b_));
  if (!macs_equal(want, proof.substr(kNonceBytes))) {
    return failed_precondition(
        "authentication failed: the peer does not hold this job's token (KILN_JOB_TOKEN)");
  }
  return Status::ok();
}

std::string Acceptor::verdict(bool accepted) const {
  std::string out(1, static_cast<char>(accepted ? 1 : 0));
  if (accepted && !token_.empty()) {
    out += hmac_sha256(token_, transcript("acceptor", purpose_, nonce_a_, nonce_b_));
  } else {
    out.append(kMacBytes, '\0');
  }
  return out;
}

Result<std::string> Initiator::answer(std::string_view challenge) {
  if (challenge.size() != kChallengeBytes) {
    return data_loss(fmt::format("authentication challenge of {} bytes, want {}",
                                 challenge.size(), kChallengeBytes));
  }
  auto mode = static_cast<std::uint8_t>(challenge[0]);
  if (mode != kModeOpen && mode != kModeHmacSha256) {
    return data_loss(fmt::format("unknown authentication mode {}", mode));
  }
  open_ = mode == kModeOpen;
  if (open_ && !token_.empty()) {
    return failed_precondition(
        "the peer does not authenticate (it has no job token) but this process holds one "
        "(KILN_JOB_TOKEN): refusing to trust it");
  }
  if (!open_ && token_.empty()) {
    return failed_precondition(
        "the peer requires this job's token: set KILN_JOB_TOKEN (launchers `kiln run` and "
        "`kiln launch` set it for their workers)");
  }
  nonce_a_ = std::string(challenge.substr(1));
  KILN_ASSIGN_OR_RETURN(nonce_b_, random_nonce());
  std::string proof = nonce_b_;
  if (open_) {
    proof.append(kMacBytes, '\0');
  } else {
    proof += hmac_sha256(token_, transcript("initiator", purpose_, nonce_a_, nonce_b_));
  }
  return proof;
}

Status Initiator::check_verdict(std::string_view verdict) const {
  if (verdict.size() != kVerdictBytes) {
    return data_loss(fmt::format("authentication verdict of {} bytes, want {}", verdict.size(),
                                 kVerdictBytes));
  }
  if (verdict[0] != 1) {
    return failed_precondition(
        "the peer refused our job token (KILN_JOB_TOKEN differs from the job's)");
  }
  if (open_) return Status::ok();
  std::string want = hmac_sha256(token_, transcript("acceptor", purpose_, nonce_a_, nonce_b_));
  if (!macs_equal(want, verdict.substr(1))) {
    return failed_precondition(
        "the peer accepted us but could not prove it holds this job's token: not the job's "
        "server");
  }
  return Status::ok();
}

}  // namespace kiln::auth
