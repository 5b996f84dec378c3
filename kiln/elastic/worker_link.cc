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

// EAGAIN (the agent has not drained the pipe) loses a beat, never a step.
void beat(int fd, char byte) {
  ssize_t r = write(fd, &byte, 1);
  (void)r;
}

}  // namespace

BusyBeat::BusyBeat(int fd, Clock::duration interval, Deadline until)
    : until_(until), thread_([this, fd, interval] { loop(fd, interval); }) {}

BusyBeat::~BusyBeat() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool BusyBeat::extend(Deadline until) {
  std::lock_guard lock(mu_);
  // The loop clears beating_ holding mu_: true here means it will see until_.
  if (!beating_.load()) return false;
  until_ = until;
  return true;
}

void BusyBeat::loop(int fd, Clock::duration interval) {
  std::unique_lock lock(mu_);
  while (!stop_ && !until_.expired()) {
    beat(fd, '\0');  // Note [What a heartbeat byte means]
    cv_.wait_for(lock, std::min(interval, until_.remaining()), [this] { return stop_; });
  }
  beating_.store(false);
}

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
  if (fd_ >= 0) beat(fd_, 1);
}

std::unique_ptr<BusyBeat> WorkerLink::busy(Deadline until) const {
  if (fd_ < 0) return nullptr;
  return std::make_unique<BusyBeat>(fd_, kBusyInterval, until);
}

void WorkerLink::finishing(Deadline until) {
  if (fd_ < 0) return;
  if (finishing_ != nullptr && finishing_->extend(until)) return;
  delete finishing_;  // its beats ended: joining it does not wait
  finishing_ = new BusyBeat(fd_, kBusyInterval, until);
}

bool WorkerLink::stop_requested() const { return g_stop_requested != 0; }

}  // namespace kiln::elastic
