#include "kiln/comm/thread_role.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cstring>
#include <string>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"

namespace kiln::comm {
namespace {

const Knob<std::string> kPolicy{
    "KILN_COMM_THREAD_POLICY", "normal",
    "scheduling policy of the communicator's engine and tcp progress threads: \"normal\", "
    "\"batch\" (a woken comm thread does not preempt the running one: Note [The comm threads' "
    "scheduling]) or \"idle\""};

void warn_once(const std::string& what) {
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) log()->warn("{} (said once); the comm threads run as they were", what);
}

}  // namespace

void become_comm_thread(const char* name) {
  ::pthread_setname_np(::pthread_self(), name);  // at most 15 characters: ours are
  const std::string policy = kPolicy.get();
  int want = SCHED_OTHER;
  if (policy == "batch") {
    want = SCHED_BATCH;
  } else if (policy == "idle") {
    want = SCHED_IDLE;
  } else if (policy != "normal") {
    warn_once("KILN_COMM_THREAD_POLICY=" + policy + ": expected normal, batch or idle");
  }
  if (want != SCHED_OTHER) {
    sched_param none{};
    if (int rc = ::pthread_setschedparam(::pthread_self(), want, &none); rc != 0) {
      warn_once("KILN_COMM_THREAD_POLICY=" + policy + ": " + std::strerror(rc));
    }
  }
}

}  // namespace kiln::comm
