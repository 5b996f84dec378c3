#include "kiln/elastic/worker_link.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

namespace kiln::elastic {
namespace {

volatile sig_atomic_t g_stop_requested = 0;

void on_sigterm(int) { g_stop_requested = 1; }

}  // namespace

WorkerLink& WorkerLink::instance() {
  static WorkerLink link;
  return link;
}

WorkerLink::WorkerLink() {
  const char* v = std::getenv("KILN_HEARTBEAT_FD");
  if (v == nullptr) return;
  int fd = -1;
  auto [p, ec] = std::from_chars(v, v + std::strlen(v), fd);
  if (ec != std::errc() || *p != '\0' || fd < 0 || fcntl(fd, F_GETFD) < 0) return;
  fd_ = fd;
  struct sigaction sa {};
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
}

void WorkerLink::heartbeat() {
  if (fd_ < 0) return;
  char beat = 1;
  // EAGAIN (the agent has not drained the pipe) loses a beat, never a step.
  ssize_t r = write(fd_, &beat, 1);
  (void)r;
}

bool WorkerLink::stop_requested() const { return g_stop_requested != 0; }

}  // namespace kiln::elastic
