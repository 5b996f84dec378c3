#include "kiln/elastic/agent.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "kiln/base/logging.h"
#include "kiln/elastic/liveness.h"
#include "kiln/elastic/script_master.h"

namespace kiln::elastic {
namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string key(std::int64_t generation, std::string_view what) {
  return fmt::format("g{}/{}", generation, what);
}

Result<bool> exists(store::Store& store, const std::string& k) {
  std::string keys[] = {k};
  return store.check(keys);
}

// "group rank 0 of 2; left: b; joined: c" — what changed since the last round.
std::string membership_note(const std::optional<Round>& previous, const Round& round) {
  std::string note = fmt::format("group rank {} of {}", round.group_rank, round.num_nodes());
  if (!previous) return note;
  auto ids = [](const Round& r) {
    std::set<std::string> out;
    for (const auto& n : r.nodes) out.insert(n.id);
    return out;
  };
  std::set<std::string> before = ids(*previous), now = ids(round);
  std::vector<std::string> left, joined;
  std::set_difference(before.begin(), before.end(), now.begin(), now.end(),
                      std::back_inserter(left));
  std::set_difference(now.begin(), now.end(), before.begin(), before.end(),
                      std::back_inserter(joined));
  if (!left.empty()) note += fmt::format("; left: {}", fmt::join(left, ","));
  if (!joined.empty()) note += fmt::format("; joined: {}", fmt::join(joined, ","));
  return note;
}

}  // namespace

Agent::Agent(std::shared_ptr<store::Store> job_store, AgentOptions options)
    : store_(std::move(job_store)),
      options_(std::move(options)),
      rendezvous_(store_, RendezvousOptions{.self = options_.self,
                                            .min_nodes = options_.min_nodes,
                                            .max_nodes = options_.max_nodes,
                                            .last_call = options_.last_call,
                                            .changes = options_.changes,
                                            .running_round_gone =
                                                [this](const Round& r) { return round_gone(r); }}),
      policy_(options_.policy),
      budget_(store_),
      liveness_(options_.liveness.publish ? options_.liveness
                                          : counter_liveness(store_, options_.node_ttl)) {
  if (!options_.events_path.empty()) events_ = std::fopen(options_.events_path.c_str(), "a");
  if (!options_.events_path.empty() && events_ == nullptr) {
    log()->warn("kiln run: cannot open --events file {}: {}", options_.events_path,
                std::strerror(errno));
  }
}

Agent::~Agent() {
  if (events_ != nullptr) std::fclose(events_);
}

void Agent::event(const std::string& name, const Round* round, const Failure* failure,
                  const Decision* decision, const std::string& note) {
  nlohmann::json j;
  j["event"] = name;
  j["node"] = options_.self.id;
  if (round != nullptr) {
    j["generation"] = round->generation;
    j["nodes"] = round->num_nodes();
    j["world_size"] = round->num_nodes() * options_.nproc_per_node;
    j["restarts"] = restarts_;
  }
  if (failure != nullptr) {
    j["failed_node"] = failure->node;
    if (failure->local_rank >= 0) j["local_rank"] = failure->local_rank;
    j["detail"] = failure->detail;
  }
  if (decision != nullptr) {
    j["class"] = failure_class_name(decision->failure_class);
    j["action"] = action_name(decision->action);
    j["delay_s"] = seconds(decision->delay);
    j["reason"] = decision->reason;
  }
  if (!note.empty()) j["note"] = note;
  std::string line = j.dump();
  if (failure != nullptr || decision != nullptr) {
    log()->warn("elastic {}", line);
  } else {
    log()->info("elastic {}", line);
  }
  if (events_ != nullptr) {
    j["time"] =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    std::fprintf(events_, "%s\n", j.dump().c_str());
    std::fflush(events_);
  }
}

Agent::Observation Agent::monitor(const Round& round, WorkerGroup& group) {
  std::vector<std::string> others;
  for (const auto& n : round.nodes) {
    if (n.id != options_.self.id) others.push_back(n.id);
  }
  std::unique_ptr<LivenessObserver> liveness = liveness_.observe();
  liveness->watch(others);
  const std::int64_t g = round.generation;
  Observation o;
  std::optional<Clock::time_point> comm_error_at;
  while (true) {
    if (stop_requested_.load()) {
      o.outcome = Outcome::kPreempted;
      return o;
    }
    WorkerGroupState s = group.poll(options_.monitor_interval);
    if (comm_error_at) s.kind = WorkerGroupState::Kind::kRunning;  // already seen
    if (s.kind == WorkerGroupState::Kind::kSucceeded) {
      o.outcome = Outcome::kFinished;
      return o;
    }
    if (s.kind == WorkerGroupState::Kind::kFailed || s.kind == WorkerGroupState::Kind::kHung) {
      FailureKind kind = s.kind == WorkerGroupState::Kind::kHung ? FailureKind::kWorkerHang
                         : s.exit_code == kPeerFailureExitCode   ? FailureKind::kCommError
                                                                 : FailureKind::kWorkerExit;
      o.outcome = Outcome::kLocalFailure;
      o.failure = Failure{kind, options_.self.id, s.local_rank, s.detail};
      if (kind == FailureKind::kWorkerExit) return o;
      // Note [Whose failure is a comm error]: a worker that failed on a peer,
      // or hung (ranks block on a dead peer), may be the echo of a failure
      // elsewhere. Before calling it transient, wait for evidence: another
      // node opening the next round (it saw the cause), a peer's heartbeat
      // stopping for the TTL (node lost), or every peer's heartbeat moving
      // after the failure (all alive: transient).
      if (!comm_error_at) comm_error_at = Clock::now();
    }
    // Cut off from the store for a TTL: the others will re-form without us.
    if (Clock::now() - alive_->last_success() > options_.node_ttl) {
      o.outcome = Outcome::kStoreLost;
      o.failure =
          Failure{FailureKind::kNodeLost, options_.self.id, -1, alive_->last_error().to_string()};
      return o;
    }
    auto generation = rendezvous_.current_generation();
    if (!generation.is_ok()) continue;  // the heartbeat check above decides
    if (*generation > g) {
      o.outcome = Outcome::kReformed;
      o.next_generation = *generation;
      return o;
    }
    auto lost = liveness->lost();
    if (lost.is_ok() && !lost->empty()) {
      // A node whose workers finished stops heartbeating: that is not a loss.
      std::vector<std::string> gone;
      for (const auto& id : *lost) {
        auto done = exists(*store_, key(g, "done/" + id));
        if (done.is_ok() && !*done) gone.push_back(id);
      }
      if (!gone.empty()) {
        o.outcome = Outcome::kPeerLost;
        o.lost_nodes = static_cast<int>(gone.size());
        o.failure = Failure{
            FailureKind::kNodeLost, fmt::format("{}", fmt::join(gone, ",")), -1,
            fmt::format("no heartbeat for {:.1f} s (--node-ttl)", seconds(options_.node_ttl))};
        return o;
      }
    }
    if (comm_error_at && (liveness->all_alive_since(*comm_error_at) ||
                          Clock::now() - *comm_error_at > options_.node_ttl * 2)) {
      return o;  // the comm error, as a transient local failure
    }
    if (round.num_nodes() < options_.max_nodes) {
      auto waiting = rendezvous_.joined(g + 1);
      if (waiting.is_ok() && *waiting > 0) {
        o.outcome = Outcome::kScaleUp;
        return o;
      }
    }
  }
}

bool Agent::round_gone(const Round& round) {
  if (gone_watch_generation_ != round.generation) {
    gone_watch_generation_ = round.generation;
    gone_watch_ = liveness_.observe();
    std::vector<std::string> ids;
    for (const auto& n : round.nodes) ids.push_back(n.id);
    gone_watch_->watch(ids);
  }
  auto lost = gone_watch_->lost();
  if (!lost.is_ok()) return false;
  for (const auto& n : round.nodes) {
    bool is_lost = std::find(lost->begin(), lost->end(), n.id) != lost->end();
    auto done = exists(*store_, key(round.generation, "done/" + n.id));
    if (!is_lost && !(done.is_ok() && *done)) return false;
  }
  event("running_round_gone", &round, nullptr, nullptr,
        "every node of the running round is lost or finished: opening the next round");
  return true;
}

Result<std::pair<std::string, int>> Agent::worker_store(
    const Round& round, std::unique_ptr<store::tcp::TcpStoreServer>& server) {
  if (!options_.serve_worker_store)
    return std::make_pair(options_.master_addr, options_.master_port);
  const std::string master_key = key(round.generation, "master");
  if (round.group_rank == 0) {
    server = std::make_unique<store::tcp::TcpStoreServer>(
        store::tcp::TcpStoreServerOptions{.token = options_.job_token});
    // Bound where the workers are told to connect, not every interface.
    KILN_RETURN_IF_ERROR(server->start(options_.self.addr, 0)
                             .with_context(fmt::format("kiln run: serving round {}'s worker store",
                                                       round.generation)));
    int port = server->port();
    KILN_RETURN_IF_ERROR(store_->set(master_key, fmt::format("{}:{}", options_.self.addr, port)));
    return std::make_pair(options_.self.addr, port);
  }
  // Group rank 0 publishes it right after the round closes; if it does not
  // within a few TTLs it is gone, and the caller re-forms.
  KILN_ASSIGN_OR_RETURN(std::string v,
                        store_->get(master_key, Deadline::after(options_.node_ttl * 3)));
  auto colon = v.rfind(':');
  int port = colon == std::string::npos ? 0 : std::atoi(v.c_str() + colon + 1);
  if (port <= 0 || port > 65535) {
    return data_loss(fmt::format("kiln run: {:?} holds {:?}, not HOST:PORT", master_key, v));
  }
  return std::make_pair(v.substr(0, colon), port);
}

Status Agent::finish(const Round& round, bool hosting) {
  const std::int64_t g = round.generation;
  note_store_error(store_->set(key(g, "done/" + options_.self.id), "1"));
  event("finished", &round, nullptr, nullptr);
  if (!hosting) return Status::ok();
  // The others still need the store until their workers are through.
  std::vector<std::string> keys;
  for (const auto& n : round.nodes) keys.push_back(key(g, "done/" + n.id));
  Status s = store_->wait(keys, Deadline::after(options_.finish_linger));
  if (!s.is_ok()) log()->warn("kiln run: not every node reported finishing: {}", s.to_string());
  return Status::ok();
}

void Agent::note_store_error(const Status& s) {
  // After a failure the store may be what failed (a link down, the store
  // restarting): log and go on to the rendezvous, which retries with backoff.
  if (!s.is_ok()) log()->warn("kiln run: node {}: {}", options_.self.id, s.to_string());
}

Result<Round> Agent::join(std::int64_t floor) {
  // An unreachable store (a link down, the store restarting) is retried
  // with backoff until the join timeout; other errors end the agent.
  Deadline deadline = Deadline::after(options_.join_timeout);
  Backoff backoff({.base = std::chrono::seconds(1), .cap = std::chrono::seconds(10)});
  while (true) {
    auto joined = rendezvous_.join(floor, deadline);
    if (joined.is_ok()) return joined;
    Status s = joined.status().with_context(
        fmt::format("kiln run: node {} joining job {:?}", options_.self.id, options_.run_id));
    bool store_trouble = s.code() == Code::kUnavailable || s.code() == Code::kDeadlineExceeded;
    if (!store_trouble || !backoff.sleep_before_retry(deadline)) return s;
    log()->warn("{}; retrying (attempt {})", s.to_string(), backoff.attempts());
  }
}

Status Agent::run() {
  KILN_ASSIGN_OR_RETURN(alive_, liveness_.publish(options_.self.id));
  std::int64_t floor = 1;
  std::optional<Round> previous;
  std::int64_t unrecorded_failure = 0;  // a round lost with the store (0: none)
  while (true) {
    if (unrecorded_failure > 0) {
      // Cut off from the store, this agent killed its workers: a failure,
      // recorded once the store answers (the claim keeps it counted once
      // if the others saw it too).
      note_store_error(budget_.record_failure(unrecorded_failure, options_.self.id));
      unrecorded_failure = 0;
    }
    KILN_ASSIGN_OR_RETURN(const Round round, join(floor));
    const std::int64_t g = round.generation;
    // Store trouble here is the round's first failure to come: the monitor
    // sees it. Until then the last count known is the best guess.
    auto restarts = budget_.restarts_before(g);
    note_store_error(restarts);
    if (restarts.is_ok()) restarts_ = *restarts;
    event("round_formed", &round, nullptr, nullptr, membership_note(previous, round));
    previous = round;

    std::unique_ptr<store::tcp::TcpStoreServer> round_store;  // serve_worker_store, rank 0
    auto master = worker_store(round, round_store);
    if (!master.is_ok()) {
      event("worker_store_missing", &round, nullptr, nullptr, master.status().to_string());
      // Group rank 0 vanished (or the store did) before the workers
      // started: a failure, like a node lost.
      note_store_error(budget_.record_failure(g, options_.self.id));
      note_store_error(rendezvous_.open_next(g, round.num_nodes()));
      floor = g + 1;
      continue;
    }
    // Note [The script's MASTER_PORT] in script_master.h.
    auto script = agree_script_master(*store_, key(g, "script_master"), round.group_rank == 0,
                                      round.num_nodes() == 1 ? "127.0.0.1" : options_.self.addr,
                                      Deadline::after(options_.node_ttl * 3));
    if (!script.is_ok()) {
      event("worker_store_missing", &round, nullptr, nullptr, script.status().to_string());
      note_store_error(budget_.record_failure(g, options_.self.id));
      note_store_error(rendezvous_.open_next(g, round.num_nodes()));
      floor = g + 1;
      continue;
    }
    WorkerGroupSpec spec{.command = options_.command,
                         .nproc_per_node = options_.nproc_per_node,
                         .group_rank = round.group_rank,
                         .num_nodes = round.num_nodes(),
                         .store_addr = master->first,
                         .store_port = master->second,
                         .master_addr = script->host,
                         .master_port = script->port,
                         .run_id = options_.run_id,
                         .generation = g,
                         .max_restarts = options_.policy.max_restarts,
                         .restart_count = restarts_,
                         .hang_timeout = options_.hang_timeout,
                         .startup_timeout = options_.startup_timeout};
    KILN_ASSIGN_OR_RETURN(auto group, WorkerGroup::start(spec));
    Observation o = monitor(round, *group);
    const int members = round.num_nodes();

    switch (o.outcome) {
      case Outcome::kFinished: {
        // Every worker exited 0: the end of training, or a stop someone asked for.
        auto stopping = exists(*store_, key(g, "stopping"));
        if (stopping.is_ok() && *stopping) {
          event("stopped_for_reform", &round, nullptr, nullptr);
          note_store_error(rendezvous_.open_next(g, members));
          floor = g + 1;
          continue;
        }
        return finish(round, options_.hosts_store || round_store != nullptr);
      }
      case Outcome::kPreempted: {
        note_store_error(store_->set(key(g, "stopping"), "preempt " + options_.self.id));
        int clean = group->stop(options_.stop_grace);
        event("preempted", &round, nullptr, nullptr,
              fmt::format("{} of {} workers stopped cleanly", clean, options_.nproc_per_node));
        // Leave the job: the others re-form without this node.
        note_store_error(store_->set(key(g, "done/" + options_.self.id), "preempted"));
        note_store_error(rendezvous_.open_next(g, members - 1));
        return Status::ok();
      }
      case Outcome::kScaleUp: {
        note_store_error(store_->set(key(g, "stopping"), "scale-up"));
        event("scale_up", &round, nullptr, nullptr, "nodes are waiting: stopping at a checkpoint");
        group->stop(options_.stop_grace);
        note_store_error(rendezvous_.open_next(g, members));
        floor = g + 1;
        continue;
      }
      case Outcome::kReformed:
        group->kill_all();
        event("reform_requested", &round, nullptr, nullptr,
              fmt::format("generation {} opened by another node", o.next_generation));
        floor = o.next_generation;
        continue;
      case Outcome::kStoreLost: {
        group->kill_all();
        event("store_lost", &round, &o.failure, nullptr, "rejoining when the store is back");
        unrecorded_failure = g;
        floor = g + 1;
        continue;
      }
      case Outcome::kLocalFailure:
      case Outcome::kPeerLost: {
        group->kill_all();
        Decision d = policy_.decide(o.failure, restarts_, group->started_at());
        event(std::string(failure_kind_name(o.failure.kind)), &round, &o.failure, &d);
        if (d.action == Action::kGiveUp) {
          return aborted(fmt::format("kiln run: giving up on job {:?} after {} restarts: {} ({})",
                                     options_.run_id, restarts_, o.failure.detail, d.reason));
        }
        // Before opening the next round, so its members count this failure.
        note_store_error(budget_.record_failure(g, options_.self.id));
        bool self_excluded = d.action == Action::kExcludeNode && o.failure.node == options_.self.id;
        int expected = members - (o.outcome == Outcome::kPeerLost ? o.lost_nodes : 0) -
                       (self_excluded ? 1 : 0);
        note_store_error(rendezvous_.open_next(g, expected));
        if (self_excluded) {
          return aborted(fmt::format("kiln run: node {} leaves job {:?}: {}", options_.self.id,
                                     options_.run_id, d.reason));
        }
        std::this_thread::sleep_for(d.delay);  // the backoff the policy chose
        floor = g + 1;
        continue;
      }
    }
  }
}

}  // namespace kiln::elastic
