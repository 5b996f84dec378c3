#include "kiln/ckpt/gather.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

namespace kiln::ckpt {
namespace {

using comm::DataType;
using nlohmann::json;

// What one rank holds of one tensor.
struct Held {
  std::string name;
  int dtype = 0;
  std::vector<std::int64_t> shape;
  std::int64_t offset = 0, rows = 0;
  bool in_place = false;  // in the caller's memory of the whole tensor (a WholeTarget)
};

// Rows [offset, offset + rows) of a tensor, sent by `rank`.
struct Segment {
  std::int64_t offset = 0, rows = 0;
  int rank = 0;
};

// One tensor of the gathered state: its spec and who sends which rows.
struct Plan {
  Held spec;  // offset/rows unused; in_place: on every rank
  std::vector<Segment> segments;
  std::size_t row_bytes = 0;
  // In place, and each rank's rows at the place an allgatherv puts its
  // block: gathered straight into the target (Note [Gathered in place]).
  bool direct = false;
};

const WholeTarget* target_named(std::span<const WholeTarget> in_place, const std::string& name) {
  for (const auto& t : in_place) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// This rank's table: the tensors it holds and, when its share is unusable,
// why (so every rank fails with the same message).
std::string describe(const LoadedState& s, int rank, std::span<const WholeTarget> in_place) {
  json tensors = json::array();
  std::string problem;
  std::set<std::string> seen;
  for (const auto& e : s.entries) {
    if (!e.is_tensor) continue;
    tensors.push_back({e.name, static_cast<int>(e.spec.dtype), e.spec.shape, e.spec.row_offset,
                       e.spec.rows, e.in_place});
    if (!problem.empty()) continue;
    if (!seen.insert(e.name).second) {
      problem = fmt::format("rank {} holds tensor '{}' twice", rank, e.name);
    } else if (e.spec.shape.empty() || e.spec.row_offset < 0 || e.spec.rows < 0 ||
               e.spec.row_offset + e.spec.rows > e.spec.shape[0]) {
      problem = fmt::format("rank {} holds rows [{}, +{}) of '{}', outside its shape [{}]", rank,
                            e.spec.row_offset, e.spec.rows, e.name, fmt::join(e.spec.shape, ", "));
    } else if (e.in_place) {
      const WholeTarget* t = target_named(in_place, e.name);
      const std::size_t whole = static_cast<std::size_t>(e.spec.shape[0]) * e.spec.row_bytes();
      if (t == nullptr) {
        problem = fmt::format(
            "rank {}'s rows of '{}' were restored in place, but no memory of the whole tensor "
            "was given to gather it in",
            rank, e.name);
      } else if (t->bytes != whole || t->rows != e.spec.shape[0]) {
        problem = fmt::format(
            "rank {}'s memory for '{}' has {} bytes in {} rows, the whole tensor {} in {}", rank,
            e.name, t->bytes, t->rows, whole, e.spec.shape[0]);
      }
    } else if (e.data.size() != static_cast<std::size_t>(e.spec.rows) * e.spec.row_bytes()) {
      problem = fmt::format("rank {} holds rows [{}, +{}) of '{}' in {} bytes, not {}", rank,
                            e.spec.row_offset, e.spec.rows, e.name, e.data.size(),
                            static_cast<std::size_t>(e.spec.rows) * e.spec.row_bytes());
    }
  }
  // Names are the caller's bytes: never let an odd one throw mid-collective.
  return json{{"problem", problem}, {"tensors", tensors}}.dump(-1, ' ', false,
                                                               json::error_handler_t::replace);
}

// Every rank's table, through two collectives (sizes, then bytes).
Result<std::vector<json>> exchange_tables(const std::string& mine, comm::Communicator& comm,
                                          std::chrono::milliseconds timeout) {
  const int world = comm.size();
  std::int64_t size = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(world));
  KILN_RETURN_IF_ERROR(comm.allgather(&size, sizes.data(), 1, DataType::kInt64)->wait(timeout));
  std::vector<std::size_t> counts(sizes.begin(), sizes.end());
  std::size_t total = 0;
  for (std::size_t c : counts) total += c;
  std::string all(total, '\0');
  KILN_RETURN_IF_ERROR(
      comm.allgatherv(mine.data(), all.data(), counts, DataType::kUInt8)->wait(timeout));
  std::vector<json> tables;
  std::size_t at = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    json t = json::parse(all.begin() + static_cast<std::ptrdiff_t>(at),
                         all.begin() + static_cast<std::ptrdiff_t>(at + counts[r]), nullptr, false);
    if (t.is_discarded() || !t.contains("problem") || !t.contains("tensors")) {
      return data_loss(fmt::format("rank {}'s table of tensors arrived malformed", r));
    }
    tables.push_back(std::move(t));
    at += counts[r];
  }
  return tables;
}

std::size_t row_bytes_of(const Held& h) {
  TensorSpec spec{static_cast<DataType>(h.dtype), h.shape, 0, 0};
  return spec.row_bytes();
}

// Who sends which rows of every tensor: the lowest rank holding a row sends
// it. Every rank computes the same plan from the same tables, so the
// outcome (or the error) is the same everywhere. Tensors in order of first
// appearance (rank 0's entries, then tensors only later ranks hold).
Result<std::vector<Plan>> plan_gather(const std::vector<json>& tables) {
  std::vector<Plan> plans;
  std::map<std::string, std::size_t> index;
  std::vector<std::vector<Held>> held;  // per plan: each rank's range
  std::vector<std::vector<int>> holders;
  for (int r = 0; r < static_cast<int>(tables.size()); ++r) {
    const std::string problem = tables[r].at("problem").get<std::string>();
    if (!problem.empty()) return invalid_argument(problem);
    for (const auto& t : tables[r].at("tensors")) {
      Held h{t.at(0).get<std::string>(),
             t.at(1).get<int>(),
             t.at(2).get<std::vector<std::int64_t>>(),
             t.at(3).get<std::int64_t>(),
             t.at(4).get<std::int64_t>(),
             t.at(5).get<bool>()};
      auto [it, fresh] = index.emplace(h.name, plans.size());
      if (fresh) {
        plans.push_back(Plan{h, {}, row_bytes_of(h)});
        held.emplace_back();
        holders.emplace_back();
      }
      const Plan& p = plans[it->second];
      if (p.spec.in_place != h.in_place) {
        const int placed = p.spec.in_place ? holders[it->second].front() : r;
        const int copied = p.spec.in_place ? r : holders[it->second].front();
        return invalid_argument(
            fmt::format("tensor '{}' was restored in place on rank {} but not on rank {}", h.name,
                        placed, copied));
      }
      if (p.spec.dtype != h.dtype || p.spec.shape != h.shape) {
        return invalid_argument(fmt::format(
            "ranks disagree on tensor '{}': rank {} holds dtype {} shape [{}], rank {} dtype {} "
            "shape [{}]",
            h.name, holders[it->second].front(),
            comm::dtype_name(static_cast<DataType>(p.spec.dtype)), fmt::join(p.spec.shape, ", "), r,
            comm::dtype_name(static_cast<DataType>(h.dtype)), fmt::join(h.shape, ", ")));
      }
      held[it->second].push_back(h);
      holders[it->second].push_back(r);
    }
  }
  for (std::size_t i = 0; i < plans.size(); ++i) {
    Plan& p = plans[i];
    if (p.spec.in_place && holders[i].size() != tables.size()) {
      int missing = 0;
      while (std::find(holders[i].begin(), holders[i].end(), missing) != holders[i].end()) {
        ++missing;
      }
      return invalid_argument(
          fmt::format("tensor '{}' was restored in place on rank {} but rank {} does not hold it",
                      p.spec.name, holders[i].front(), missing));
    }
    std::vector<std::int64_t> cuts{0, p.spec.shape[0]};
    for (const Held& h : held[i]) {
      cuts.push_back(h.offset);
      cuts.push_back(h.offset + h.rows);
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
      const std::int64_t lo = cuts[c], hi = cuts[c + 1];
      int owner = -1;
      for (std::size_t k = 0; k < held[i].size() && owner < 0; ++k) {
        if (held[i][k].offset <= lo && hi <= held[i][k].offset + held[i][k].rows)
          owner = holders[i][k];
      }
      if (owner < 0) {
        return invalid_argument(fmt::format("rows [{}, {}) of '{}' (of {}) are held by no rank", lo,
                                            hi, p.spec.name, p.spec.shape[0]));
      }
      if (!p.segments.empty() && p.segments.back().rank == owner) {
        p.segments.back().rows += hi - lo;
      } else {
        p.segments.push_back({lo, hi - lo, owner});
      }
    }
    p.direct = p.spec.in_place;
    for (std::size_t k = 1; k < p.segments.size(); ++k) {
      p.direct = p.direct && p.segments[k - 1].rank < p.segments[k].rank;
    }
  }
  return plans;
}

}  // namespace

Result<LoadedState> gather_whole_tensors(LoadedState share, comm::Communicator& comm,
                                         std::chrono::milliseconds timeout,
                                         std::span<const WholeTarget> in_place) {
  const int rank = comm.rank(), world = comm.size();
  auto tables = exchange_tables(describe(share, rank, in_place), comm, timeout);
  if (!tables.is_ok()) {
    return tables.status().with_context(
        fmt::format("gathering whole tensors of checkpoint step {} ({})", share.step, share.dir));
  }
  Result<std::vector<Plan>> plans = internal_error("no plan");
  try {
    plans = plan_gather(*tables);
  } catch (const json::exception& e) {
    plans = data_loss(fmt::format("a rank's table of tensors does not parse: {}", e.what()));
  }
  if (!plans.is_ok()) {
    return Status(plans.status().code(),
                  fmt::format("gathering whole tensors of checkpoint step {} ({}): {}", share.step,
                              share.dir, plans.status().message()));
  }

  // Rank r sends the rows it owns, tensor by tensor in plan order; every
  // rank knows each rank's byte count from the plan alone. Tensors gathered
  // directly into their targets go afterwards, one allgatherv each.
  std::map<std::string, LoadedEntry*> mine;
  for (auto& e : share.entries) {
    if (e.is_tensor) mine[e.name] = &e;
  }
  // Where rows [s.offset, ...) of a tensor this rank holds lie now.
  auto rows_at = [&](const Plan& p, const Segment& s) -> std::byte* {
    if (p.spec.in_place) {
      return target_named(in_place, p.spec.name)->data +
             static_cast<std::size_t>(s.offset) * p.row_bytes;
    }
    LoadedEntry& e = *mine.at(p.spec.name);
    return e.data.data() + static_cast<std::size_t>(s.offset - e.spec.row_offset) * p.row_bytes;
  };
  std::vector<std::size_t> counts(static_cast<std::size_t>(world), 0);
  for (const Plan& p : *plans) {
    if (p.direct) continue;
    for (const Segment& s : p.segments)
      counts[s.rank] += static_cast<std::size_t>(s.rows) * p.row_bytes;
  }
  std::vector<std::byte> send;
  send.reserve(std::max<std::size_t>(1, counts[rank]));  // never a null buffer, even when empty
  for (const Plan& p : *plans) {
    if (p.direct) continue;
    for (const Segment& s : p.segments) {
      if (s.rank != rank) continue;
      const std::byte* first = rows_at(p, s);
      send.insert(send.end(), first, first + static_cast<std::ptrdiff_t>(s.rows * p.row_bytes));
    }
  }
  std::vector<std::size_t> starts(static_cast<std::size_t>(world), 0);
  for (int r = 1; r < world; ++r) starts[r] = starts[r - 1] + counts[r - 1];
  std::vector<std::byte> all(starts.back() + counts.back());
  KILN_RETURN_IF_ERROR(
      comm.allgatherv(send.data(), all.data(), counts, DataType::kUInt8)->wait(timeout));

  std::vector<std::size_t> cursor = starts;  // next unread byte of rank r's part
  std::vector<LoadedEntry> others;           // tensors only other ranks held
  for (const Plan& p : *plans) {
    const TensorSpec spec{static_cast<DataType>(p.spec.dtype), p.spec.shape, 0, p.spec.shape[0]};
    if (p.direct) {
      std::vector<std::size_t> n(static_cast<std::size_t>(world), 0);
      std::byte* own = target_named(in_place, p.spec.name)->data;
      for (const Segment& s : p.segments) {
        n[s.rank] = static_cast<std::size_t>(s.rows) * p.row_bytes;
        if (s.rank == rank) own = rows_at(p, s);
      }
      KILN_RETURN_IF_ERROR(comm.allgatherv(own, target_named(in_place, p.spec.name)->data,
                                           std::move(n), DataType::kUInt8)
                               ->wait(timeout));
      mine.at(p.spec.name)->spec = spec;
      continue;
    }
    std::vector<std::byte> whole;
    std::byte* into = nullptr;
    if (p.spec.in_place) {
      into = target_named(in_place, p.spec.name)->data;
    } else {
      whole.resize(static_cast<std::size_t>(p.spec.shape[0]) * p.row_bytes);
      into = whole.data();
    }
    for (const Segment& s : p.segments) {
      const std::size_t n = static_cast<std::size_t>(s.rows) * p.row_bytes;
      // Rows this rank restored in place are already where they belong.
      if (n > 0 && !(p.spec.in_place && s.rank == rank)) {
        std::memcpy(into + static_cast<std::size_t>(s.offset) * p.row_bytes,
                    all.data() + cursor[s.rank], n);
      }
      cursor[s.rank] += n;
    }
    auto it = mine.find(p.spec.name);
    if (it != mine.end()) {
      it->second->data = std::move(whole);
      it->second->spec = spec;
    } else {
      others.push_back(LoadedEntry{p.spec.name, true, spec, std::move(whole)});
    }
  }
  for (auto& e : others) share.entries.push_back(std::move(e));
  return share;
}

}  // namespace kiln::ckpt
