// `kiln store serve --host H --port P`: runs a TcpStoreServer until SIGINT or
// SIGTERM. Prints one line, "listening on HOST:PORT", once it accepts
// connections (with --port 0 that line is how a launcher learns the port).
// Binds loopback unless --host says otherwise, and requires the job token
// (KILN_JOB_TOKEN or --token-file) from every client.
#include <fmt/format.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "cli/command.h"
#include "kiln/base/auth/job_token.h"
#include "kiln/base/logging.h"
#include "kiln/store/tcp/server.h"

namespace kiln::cli {
namespace {

struct ServeArgs {
  std::string host = "127.0.0.1";
  int port = 29500;
  std::string token_file;
};

Status serve(const ServeArgs& args) {
  if (args.port < 0 || args.port > 65535) {
    return invalid_argument(fmt::format("store serve: --port {} is not a TCP port", args.port));
  }
  // The agents that use this store run elsewhere: they must share a token.
  KILN_ASSIGN_OR_RETURN(std::string token, auth::launcher_token(args.token_file,
                                                                /*may_generate=*/false,
                                                                "kiln store serve"));
  // Block the signals before the server thread starts so it inherits the
  // mask and only sigwait() below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  if (int rc = pthread_sigmask(SIG_BLOCK, &signals, nullptr); rc != 0) {
    return errno_status("store serve: pthread_sigmask", rc);
  }
  store::tcp::TcpStoreServer server({.token = token});
  KILN_RETURN_IF_ERROR(server.start(args.host, static_cast<std::uint16_t>(args.port)));
  std::printf("listening on %s:%u\n", args.host.c_str(), static_cast<unsigned>(server.port()));
  std::fflush(stdout);
  int sig = 0;
  if (int rc = sigwait(&signals, &sig); rc != 0) {
    return errno_status("store serve: sigwait", rc);
  }
  log()->info("store server: {} received, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server.stop();
  return Status::ok();
}

const CommandRegistration kRegister("store", [](CLI::App& parent) {
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = parent.add_subcommand("serve", "Run a TCP store server until SIGINT/SIGTERM");
  cmd->add_option("--host", args->host,
                  "Address to bind: one the agents reach (0.0.0.0: every IPv4 address)")
      ->capture_default_str();
  cmd->add_option("--port", args->port, "Port to bind (0: pick a free one)")->capture_default_str();
  cmd->add_option("--token-file", args->token_file,
                  "Read the job token clients must prove from FILE (mode 600); default: "
                  "KILN_JOB_TOKEN");
  cmd->callback(run_status([args] { return serve(*args); }));
});

}  // namespace
}  // namespace kiln::cli
