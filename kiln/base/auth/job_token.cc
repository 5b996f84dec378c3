#include "kiln/base/auth/job_token.h"

#include <openssl/rand.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

#include "kiln/base/knobs.h"

namespace kiln::auth {
namespace {

// `kiln env` lists it without its value (a secret).
const Knob<std::string> kJobToken{
    kJobTokenEnv, "",
    "the job's secret, proven (never sent) on every store and tcp connection; set by kiln "
    "run/launch for their workers (docs/security.md)"};

std::string_view trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

Status check_length(std::string_view token, std::string_view where) {
  if (token.size() < kMinTokenBytes) {
    return invalid_argument(fmt::format(
        "{}: a job token of {} bytes is too short to be secret (at least {}; e.g. `openssl rand "
        "-hex 32`)",
        where, token.size(), kMinTokenBytes));
  }
  if (token.size() > kMaxTokenBytes) {
    return invalid_argument(fmt::format("{}: a job token of {} bytes is over the {}-byte limit",
                                        where, token.size(), kMaxTokenBytes));
  }
  return Status::ok();
}

}  // namespace

Result<std::string> generate_token() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return internal_error("generating a job token: RAND_bytes failed");
  }
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

Result<std::string> read_token_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_status(fmt::format("token file {}", path), errno);
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return failed_precondition(fmt::format(
        "token file {} is accessible to group or others (mode {:o}): chmod 600 it", path,
        st.st_mode & 0777));
  }
  if (!S_ISREG(st.st_mode)) {
    return failed_precondition(fmt::format("token file {} is not a regular file", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return errno_status(fmt::format("token file {}", path), errno);
  std::string text(kMaxTokenBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  std::string token(trim(text));
  KILN_RETURN_IF_ERROR(check_length(token, fmt::format("token file {}", path)));
  return token;
}

Result<std::string> token_from_env() {
  std::string raw = kJobToken.get();
  if (raw.empty()) return std::string();
  std::string token(trim(raw));
  KILN_RETURN_IF_ERROR(check_length(token, kJobTokenEnv));
  return token;
}

Result<std::string> launcher_token(const std::string& token_file, bool may_generate,
                                   std::string_view who) {
  if (!token_file.empty()) {
    auto t = read_token_file(token_file);
    if (!t.is_ok()) return t.status().with_context(who);
    return t;
  }
  auto t = token_from_env();
  if (!t.is_ok()) return t.status().with_context(who);
  if (!t->empty()) return t;
  if (may_generate) return generate_token();
  return failed_precondition(fmt::format(
      "{}: a job across machines needs one secret shared by every node: put the same token "
      "in KILN_JOB_TOKEN on each (e.g. `openssl rand -hex 32`) or pass --token-file FILE "
      "(docs/security.md)",
      who));
}

}  // namespace kiln::auth
