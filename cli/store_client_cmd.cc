// `kiln store get KEY` / `kiln store set KEY VALUE`: one call against a
// running store (`kiln store serve`, `kiln launch`'s, `kiln run`'s), proving
// KILN_JOB_TOKEN like every client. For debugging a job's rendezvous, and how
// the security tests play a client that lacks the token.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "kiln/base/auth/job_token.h"
#include "kiln/store/tcp/client.h"

namespace kiln::cli {
namespace {

struct ClientArgs {
  std::string host = "127.0.0.1";
  int port = 29500;
  double timeout_s = 10;
  std::string key;
  std::string value;
};

Result<std::unique_ptr<store::tcp::TcpStore>> open(const ClientArgs& a) {
  if (a.port <= 0 || a.port > 65535) {
    return invalid_argument(fmt::format("kiln store: --port {} is not a TCP port", a.port));
  }
  store::tcp::TcpStoreOptions o;
  KILN_ASSIGN_OR_RETURN(o.token, auth::token_from_env());
  o.connect_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(a.timeout_s * 1000));
  o.default_timeout = o.connect_timeout;
  return store::tcp::TcpStore::connect(a.host, static_cast<std::uint16_t>(a.port), o);
}

void add_common(CLI::App* cmd, ClientArgs* a) {
  cmd->add_option("--host", a->host, "store server address")->capture_default_str();
  cmd->add_option("--port", a->port, "store server port")->capture_default_str();
  cmd->add_option("--timeout", a->timeout_s, "seconds to wait (connect, and get for the key)")
      ->capture_default_str();
  cmd->add_option("key", a->key, "the key")->required();
}

const CommandRegistration kGet("store", [](CLI::App& parent) {
  auto a = std::make_shared<ClientArgs>();
  auto* cmd = parent.add_subcommand("get", "Print a key's value from a running store");
  add_common(cmd, a.get());
  cmd->callback(run_status([a]() -> Status {
    KILN_ASSIGN_OR_RETURN(auto s, open(*a));
    KILN_ASSIGN_OR_RETURN(std::string v,
                          s->get(a->key, Deadline::after_ms(static_cast<std::int64_t>(
                                             a->timeout_s * 1000))));
    std::fwrite(v.data(), 1, v.size(), stdout);
    std::fputc('\n', stdout);
    return Status::ok();
  }));
});

const CommandRegistration kSet("store", [](CLI::App& parent) {
  auto a = std::make_shared<ClientArgs>();
  auto* cmd = parent.add_subcommand("set", "Set a key in a running store");
  add_common(cmd, a.get());
  cmd->add_option("value", a->value, "the value")->required();
  cmd->callback(run_status([a]() -> Status {
    KILN_ASSIGN_OR_RETURN(auto s, open(*a));
    return s->set(a->key, a->value);
  }));
});

}  // namespace
}  // namespace kiln::cli
