#include "kiln/elastic/rendezvous.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <thread>

namespace kiln::elastic {
namespace {

std::string round_key(std::int64_t generation, std::string_view what) {
  return fmt::format("g{}/{}", generation, what);
}

Result<std::int64_t> parse_int(std::string_view text, const std::string& key) {
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) {
    return data_loss(fmt::format("rendezvous key {:?} holds {:?}, not an integer", key, text));
  }
  return v;
}

std::string encode_node(const NodeInfo& n) { return n.id + "\n" + n.addr; }

Result<NodeInfo> decode_node(std::string_view v, const std::string& key) {
  auto nl = v.find('\n');
  if (nl == std::string_view::npos || nl == 0) {
    return data_loss(fmt::format("rendezvous key {:?} holds {:?}, not 'id\\naddr'", key, v));
  }
  return NodeInfo{std::string(v.substr(0, nl)), std::string(v.substr(nl + 1))};
}

}  // namespace

Rendezvous::Rendezvous(std::shared_ptr<store::Store> store, RendezvousOptions options)
    : store_(std::move(store)), options_(std::move(options)) {}

Result<std::int64_t> Rendezvous::read_int(const std::string& key, std::int64_t missing) {
  std::string keys[] = {key};
  KILN_ASSIGN_OR_RETURN(bool present, store_->check(keys));
  if (!present) return missing;
  KILN_ASSIGN_OR_RETURN(std::string v, store_->get(key, Deadline::after(std::chrono::seconds(10))));
  return parse_int(v, key);
}

Result<std::int64_t> Rendezvous::current_generation() {
  // The first agent ever creates the counter; everyone else reads it.
  KILN_ASSIGN_OR_RETURN(std::string v, store_->compare_set("gen", "", "1"));
  return parse_int(v, "gen");
}

Result<std::int64_t> Rendezvous::open_next(std::int64_t from, int expected_nodes) {
  KILN_RETURN_IF_ERROR(current_generation());  // creates "gen" if nobody has yet
  KILN_ASSIGN_OR_RETURN(std::int64_t waiting, read_int(round_key(from + 1, "count"), 0));
  KILN_ASSIGN_OR_RETURN(std::string now,
                        store_->compare_set("gen", std::to_string(from), std::to_string(from + 1)));
  KILN_ASSIGN_OR_RETURN(std::int64_t generation, parse_int(now, "gen"));
  if (generation == from + 1) {
    // Whoever writes first sets the expectation; later writers change nothing.
    std::string expect = std::to_string(expected_nodes + waiting);
    KILN_RETURN_IF_ERROR(store_->compare_set(round_key(from + 1, "expect"), "", expect));
  }
  return generation;
}

Result<int> Rendezvous::joined(std::int64_t generation) {
  KILN_ASSIGN_OR_RETURN(std::int64_t n, read_int(round_key(generation, "count"), 0));
  return static_cast<int>(n);
}

Result<Rendezvous::Ticket> Rendezvous::take_ticket(std::int64_t generation) {
  KILN_ASSIGN_OR_RETURN(std::int64_t n, store_->add(round_key(generation, "count"), 1));
  int index = static_cast<int>(n - 1);
  KILN_RETURN_IF_ERROR(
      store_->set(round_key(generation, fmt::format("node{}", index)), encode_node(options_.self)));
  return Ticket{generation, index};
}

Result<int> Rendezvous::try_close(std::int64_t generation, Clock::time_point& min_reached_at) {
  const std::string closed_key = round_key(generation, "closed");
  KILN_ASSIGN_OR_RETURN(std::int64_t closed, read_int(closed_key, 0));
  if (closed > 0) return static_cast<int>(closed);
  KILN_ASSIGN_OR_RETURN(std::int64_t count, read_int(round_key(generation, "count"), 0));
  KILN_ASSIGN_OR_RETURN(std::int64_t expect, read_int(round_key(generation, "expect"), 0));
  std::int64_t closing = 0;
  if (count >= options_.max_nodes) {
    closing = options_.max_nodes;
  } else if (count >= options_.min_nodes) {
    auto now = Clock::now();
    if (min_reached_at == Clock::time_point{}) min_reached_at = now;
    bool everyone_expected = expect > 0 && count >= expect;
    if (everyone_expected || now - min_reached_at >= options_.last_call) closing = count;
  }
  if (closing == 0) return 0;
  KILN_ASSIGN_OR_RETURN(std::string v,
                        store_->compare_set(closed_key, "", std::to_string(closing)));
  KILN_ASSIGN_OR_RETURN(closed, parse_int(v, closed_key));
  return static_cast<int>(closed);
}

Result<Round> Rendezvous::read_members(std::int64_t generation, int closed_count,
                                       Deadline deadline) {
  std::vector<std::string> keys;
  for (int i = 0; i < closed_count; ++i)
    keys.push_back(round_key(generation, fmt::format("node{}", i)));
  KILN_RETURN_IF_ERROR(store_->wait(keys, deadline)
                           .with_context(fmt::format("rendezvous round {}: reading its {} members",
                                                     generation, closed_count)));
  Round round;
  round.generation = generation;
  for (const auto& key : keys) {
    KILN_ASSIGN_OR_RETURN(std::string v, store_->get(key, deadline));
    KILN_ASSIGN_OR_RETURN(NodeInfo node, decode_node(v, key));
    round.nodes.push_back(std::move(node));
  }
  std::sort(round.nodes.begin(), round.nodes.end(),
            [](const NodeInfo& a, const NodeInfo& b) { return a.id < b.id; });
  for (size_t i = 1; i < round.nodes.size(); ++i) {
    if (round.nodes[i].id == round.nodes[i - 1].id) {
      return invalid_argument(fmt::format(
          "rendezvous round {}: two agents call themselves node {:?} (give each node its own "
          "--node-id)",
          generation, round.nodes[i].id));
    }
  }
  auto self = std::find_if(round.nodes.begin(), round.nodes.end(),
                           [&](const NodeInfo& n) { return n.id == options_.self.id; });
  round.group_rank = static_cast<int>(self - round.nodes.begin());
  return round;
}

Result<Round> Rendezvous::members(std::int64_t generation, Deadline deadline) {
  const std::string closed_key = round_key(generation, "closed");
  KILN_ASSIGN_OR_RETURN(std::int64_t closed, read_int(closed_key, 0));
  if (closed == 0) {
    return failed_precondition(fmt::format("rendezvous round {} has not closed", generation));
  }
  return read_members(generation, static_cast<int>(closed), deadline);
}

void Rendezvous::wait_for_change(const Status& marked, Clock::time_point min_reached_at,
                                 Deadline deadline) {
  if (!options_.changes || !marked.is_ok()) {
    std::this_thread::sleep_for(std::min(options_.poll_interval, deadline.remaining()));
    return;
  }
  // Wake for the last call too: closing then is a matter of time, not keys.
  const auto now = Clock::now();
  Deadline until = deadline.min(Deadline::after(options_.feed_recheck));
  if (min_reached_at != Clock::time_point{}) {
    auto last_call_ends = min_reached_at + options_.last_call;
    until = until.min(
        Deadline::after(last_call_ends > now ? last_call_ends - now : Clock::duration::zero()));
  }
  Status s = options_.changes->wait(until);
  if (!s.is_ok() && s.code() != Code::kDeadlineExceeded) {
    // The store went away: its reads will say so; do not spin meanwhile.
    std::this_thread::sleep_for(std::min(options_.poll_interval, deadline.remaining()));
  }
}

Result<Round> Rendezvous::join(std::int64_t min_generation, Deadline deadline) {
  if (options_.min_nodes < 1 || options_.max_nodes < options_.min_nodes) {
    return invalid_argument(
        fmt::format("rendezvous: nodes {}:{} is not a range MIN:MAX with 1 <= MIN <= MAX",
                    options_.min_nodes, options_.max_nodes));
  }
  KILN_ASSIGN_OR_RETURN(std::int64_t current, current_generation());
  std::int64_t generation = std::max(min_generation, current);
  while (true) {
    KILN_ASSIGN_OR_RETURN(Ticket ticket, take_ticket(generation));
    Clock::time_point min_reached_at{};
    int closed = 0;
    std::optional<Round> running;  // the round we wait on to open ours
    while (true) {
      // Before reading, so a change made meanwhile ends the wait below at once.
      Status marked = options_.changes ? options_.changes->mark() : Status::ok();
      // A round not yet opened (we are early, waiting for the running group
      // to ask for it) cannot close.
      KILN_ASSIGN_OR_RETURN(current, current_generation());
      if (current > generation) break;  // skipped past: join the newest
      if (current == generation) {
        KILN_ASSIGN_OR_RETURN(closed, try_close(generation, min_reached_at));
        if (closed > 0) break;
      } else if (options_.running_round_gone) {
        if (!running || running->generation != current) {
          auto m = members(current, deadline);
          if (m.is_ok()) running = *m;
        }
        if (running && running->generation == current && options_.running_round_gone(*running)) {
          KILN_RETURN_IF_ERROR(open_next(current, 0));
          continue;
        }
      }
      if (deadline.expired()) {
        KILN_ASSIGN_OR_RETURN(int count, joined(generation));
        return deadline_exceeded(fmt::format(
            "rendezvous round {} did not close in time: {} of {}..{} nodes joined{}", generation,
            count, options_.min_nodes, options_.max_nodes,
            current < generation ? " (the round was never opened by the running group)" : ""));
      }
      wait_for_change(marked, min_reached_at, deadline);
    }
    if (closed > 0 && ticket.index < closed) return read_members(generation, closed, deadline);
    // Late (or the round was skipped): wait for the next one.
    generation = std::max(generation + 1, current);
  }
}

}  // namespace kiln::elastic
