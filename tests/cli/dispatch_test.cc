// Note [Commands that need LibTorch] (cli/main.cc): `kiln` loads no LibTorch,
// runs what it parses, and hands every other command line, unchanged, to the
// full executable beside it, which has the LibTorch commands.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace {

struct KilnRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// `env KILN ARGS` through the shell, killed after 120 s so a hang fails the test.
KilnRun run(const std::string& args, const std::string& env = "") {
  const std::string cmd = fmt::format("{} timeout -s KILL 120 {} {} 2>&1", env, KILN_BINARY, args);
  KilnRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Dispatch, KilnLoadsNoLibTorch) {
  // The dynamic loader's own list of what the executable loads (what ldd prints).
  KilnRun r = run("", "LD_TRACE_LOADED_OBJECTS=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("libc.so"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("libtorch"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("libc10"), std::string::npos) << r.output;
}

TEST(Dispatch, ACommandKilnLacksRunsInTheFullExecutable) {
#ifndef KILN_HAS_TORCH
  GTEST_SKIP() << "built without LibTorch: there is no full executable";
#endif
  KilnRun help = run("train --help");
  EXPECT_EQ(help.exit_code, 0) << help.output;
  EXPECT_NE(help.output.find("Train a model from a TOML config"), std::string::npos) << help.output;
  // A nested one, and the top-level help lists every command.
  KilnRun nested = run("bench ddp --help");
  EXPECT_EQ(nested.exit_code, 0) << nested.output;
  EXPECT_NE(nested.output.find("--ranks"), std::string::npos) << nested.output;
  KilnRun top = run("--help");
  EXPECT_EQ(top.exit_code, 0) << top.output;
  for (const char* cmd : {"train", "serve", "ckpt", "store", "launch"}) {
    EXPECT_NE(top.output.find(cmd), std::string::npos) << cmd << " missing from:\n" << top.output;
  }
  // A usage error of such a command is the full executable's to report.
  KilnRun missing = run("train");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("config is required"), std::string::npos) << missing.output;
}

std::string blas_line(const std::string& output) {
  const auto at = output.find("blas:");
  return at == std::string::npos ? "" : output.substr(at, output.find('\n', at) - at);
}

TEST(Dispatch, KilnEnvSeesTheBlasLibTorchLoads) {
#ifndef KILN_HAS_TORCH
  GTEST_SKIP() << "built without LibTorch: there is no full executable";
#endif
  // Note [OpenBLAS on CPUs it does not know] needs OpenBLAS loaded: `kiln env`
  // (and launch/run, which set the workers' core type from it) must report
  // what the full executable sees, not "not OpenBLAS".
  const std::string kiln = KILN_BINARY;
  const std::string full = kiln.substr(0, kiln.rfind('/') + 1) + "libexec/kiln";
  KilnRun mine = run("env");
  FILE* p = ::popen((full + " env 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string theirs;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) theirs.append(buf, n);
  ::pclose(p);
  EXPECT_EQ(mine.exit_code, 0) << mine.output;
  ASSERT_NE(blas_line(theirs), "") << theirs;
  EXPECT_EQ(blas_line(mine.output), blas_line(theirs));
}

TEST(Dispatch, AnUnknownCommandFailsOnce) {
  // Handed on once (the full executable hands nothing on), answered once.
  KilnRun r = run("no-such-command");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count(r.output, "A subcommand is required"), 1) << r.output;
}

TEST(Dispatch, ACommandThatRanAndFailedIsNotRunAgain) {
  // `kiln ckpt ls` is kiln's own: its failure is reported once, with its exit code.
  KilnRun r = run("ckpt ls /nonexistent-kiln-dispatch-test-dir");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_EQ(count(r.output, "kiln: "), 1) << r.output;
}

}  // namespace
