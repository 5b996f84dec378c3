#include "kiln/base/server_process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/base/fd.h"
#include "kiln/base/socket.h"

extern char** environ;

namespace kiln {

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

Result<std::uint16_t> free_loopback_port() {
  std::uint16_t port = 0;
  KILN_ASSIGN_OR_RETURN(Fd fd, net::listen_tcp("127.0.0.1", 0, 1, &port));
  return port;
}

Result<std::string> make_scratch_dir(const std::string& prefix) {
  std::error_code ec;
  std::string parent;
  if (std::filesystem::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0) {
    parent = "/dev/shm";
  } else {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string tmpl = parent + "/" + prefix + "XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return errno_status("mkdtemp " + tmpl, errno);
  return tmpl;
}

ServerProcess::ServerProcess(std::string name, std::string log_path)
    : name_(std::move(name)), log_path_(std::move(log_path)) {}

Status ServerProcess::spawn(const std::vector<std::string>& argv_in,
                            const std::vector<std::string>& env_in) {
  if (argv_in.empty()) return invalid_argument("spawn " + name_ + ": no command");
  kill();
  // Everything the child needs is built before fork: between fork and exec
  // only async-signal-safe calls are allowed.
  std::vector<std::string> args = argv_in;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (const auto& kv : env_in) {
    if (kv.find('=') == std::string::npos || kv.front() == '=') {
      return invalid_argument(
          fmt::format("spawn {}: environment entry '{}' is not K=V", name_, kv));
    }
  }
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    bool replaced = false;
    for (const auto& o : env_in) {
      const std::size_t key = o.find('=') + 1;  // "K=" of the override
      replaced = replaced || kv.compare(0, key, o, 0, key) == 0;
    }
    if (!replaced) env_strings.push_back(std::move(kv));
  }
  env_strings.insert(env_strings.end(), env_in.begin(), env_in.end());
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  Fd log_fd(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log_fd.valid()) return errno_status("open " + log_path_, errno);
  Fd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const pid_t parent = ::getpid();
  // vfork, not fork: fork would mark every page of this process
  // copy-on-write, and each page it writes afterwards takes a fault (a
  // process holding GiBs of state pays seconds: 2 s per 512 MiB measured on a
  // paravirtualised VM, docs/perf.md issue 19). The child shares this
  // process's memory until execve, and does only system calls meanwhile, as
  // glibc's posix_spawn does.
  pid_t pid = ::vfork();
  if (pid < 0) return errno_status("vfork for " + name_, errno);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    // Fd's destructor must not run here: the child shares the parent's
    // memory until execve, and _exit runs no destructors.
    if (null_fd.valid()) ::dup2(null_fd.get(), 0);
    ::dup2(log_fd.get(), 1);
    ::dup2(log_fd.get(), 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  pid_ = pid;
  return Status::ok();
}

Status ServerProcess::check_running() {
  if (pid_ <= 0) return unavailable(name_ + " is not running");
  int wstatus = 0;
  if (::waitpid(pid_, &wstatus, WNOHANG) != pid_) return Status::ok();
  pid_ = -1;
  return unavailable(fmt::format("{} exited ({}); its log:\n{}", name_,
                                 WIFEXITED(wstatus) ? fmt::format("status {}", WEXITSTATUS(wstatus))
                                 : WIFSIGNALED(wstatus)
                                     ? fmt::format("signal {}", WTERMSIG(wstatus))
                                     : std::string("?"),
                                 log_tail()));
}

void ServerProcess::kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string ServerProcess::log_tail(std::size_t bytes) const {
  std::ifstream in(log_path_);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

}  // namespace kiln
