// The job secret: one random token per job that every store and transport
// connection proves it knows (kiln/base/auth/handshake.h), so a process that
// can reach a port but was not started by the job's launchers cannot join.
//
// `kiln run` / `kiln launch` generate one (or take KILN_JOB_TOKEN or
// --token-file) and hand it to their workers in KILN_JOB_TOKEN. The token
// never goes on the wire. docs/security.md has the threat model.
#pragma once

#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln::auth {

// The variable a job's processes find the token in.
inline constexpr const char* kJobTokenEnv = "KILN_JOB_TOKEN";
// Tokens shorter than this are refused: a guessable secret protects nothing.
inline constexpr std::size_t kMinTokenBytes = 16;
// Longer than any sane token; bounds what a token file may make us read.
inline constexpr std::size_t kMaxTokenBytes = 4096;

// 32 random bytes from the OS's CSPRNG (OpenSSL RAND_bytes), hex-encoded.
Result<std::string> generate_token();

// Reads a token from a file: its contents without surrounding whitespace.
// FailedPrecondition when the file is readable by group or others (a secret
// others can read is not one), or the token is empty, short or oversized.
Result<std::string> read_token_file(const std::string& path);

// The token the environment gives this process: KILN_JOB_TOKEN, or "" when
// unset (a job run without a launcher: connections are not authenticated).
// InvalidArgument when set but shorter than kMinTokenBytes.
Result<std::string> token_from_env();

// What a launcher uses: --token-file if given, else KILN_JOB_TOKEN, else a
// freshly generated token when `may_generate` (a job whose every process this
// launcher starts), else FailedPrecondition explaining how to share one.
Result<std::string> launcher_token(const std::string& token_file, bool may_generate,
                                   std::string_view who);

}  // namespace kiln::auth
