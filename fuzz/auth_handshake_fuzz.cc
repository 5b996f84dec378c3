// The authentication messages a peer sends (kiln/base/auth/handshake.h), as
// the store and the comm transport read them: a challenge and a verdict to an
// initiator, a proof to an acceptor. The first byte picks the role.
#include <cstdint>
#include <string>
#include <string_view>

#include "kiln/base/auth/handshake.h"
#include "kiln/base/check.h"

using namespace kiln::auth;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string token = (data[0] & 1) != 0 ? "0123456789abcdef0123456789abcdef" : "";
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((data[0] & 2) != 0) {
    Initiator initiator(token, "fuzz");
    auto proof = initiator.answer(in.substr(0, kChallengeBytes));
    if (proof.is_ok()) {
      KILN_CHECK(proof->size() == kProofBytes);
      // Forged verdicts: without the token nothing but open mode passes.
      kiln::Status s = initiator.check_verdict(in.substr(kChallengeBytes));
      KILN_CHECK(!s.is_ok() || token.empty());
    }
  } else {
    Acceptor acceptor(token, "fuzz");
    KILN_CHECK(acceptor.challenge().is_ok());
    kiln::Status s = acceptor.check_proof(in);
    // A random proof never passes a real token's check (2^-256).
    KILN_CHECK(!s.is_ok() || token.empty());
    KILN_CHECK(acceptor.verdict(s.is_ok()).size() == kVerdictBytes);
  }
  return 0;
}
