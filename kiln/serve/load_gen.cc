#include "kiln/serve/load_gen.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "kiln/base/deadline.h"

namespace kiln::serve {

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::clamp(q, 0.0, 1.0) * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

LoadResult run_load(const LoadOptions& o) {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Clock::time_point> due;  // GUARDED_BY(mu): scheduled, not yet sent
  bool done = false;                  // GUARDED_BY(mu)
  LoadResult result;                  // GUARDED_BY(mu)
  const auto start = Clock::now();
  auto seconds = [&](Clock::time_point tp) {
    return std::chrono::duration<double>(tp - start).count();
  };

  std::vector<std::thread> clients;
  for (int c = 0; c < o.clients; ++c) {
    clients.emplace_back([&] {
      httplib::Client client("127.0.0.1", o.port);
      client.set_keep_alive(true);
      client.set_tcp_nodelay(true);  // Note [TCP_NODELAY] in http_front.cc
      client.set_read_timeout(std::chrono::seconds(60));
      while (true) {
        Clock::time_point at;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return done || !due.empty(); });
          if (due.empty()) return;
          at = due.front();
          due.pop_front();
        }
        auto res = client.Post("/v1/predict", o.body, "application/json");
        const auto end = Clock::now();
        std::lock_guard<std::mutex> lock(mu);
        if (res && res->status == 200) {
          ++result.ok;
          result.latencies_s.push_back(std::chrono::duration<double>(end - at).count());
          result.sent_at_s.push_back(seconds(at));
        } else if (res && res->status == 503) {
          ++result.rejected;
        } else {
          ++result.dropped;
          if (result.drop_reasons.size() < 5) {
            result.drop_reasons.push_back(
                res ? fmt::format("HTTP {}: {}", res->status, res->body.substr(0, 200))
                    : fmt::format("no answer: {}", httplib::to_string(res.error())));
          }
        }
      }
    });
  }
  // The schedule: exponential gaps at the current rate (thinning-free: the
  // rate changes slowly against the gaps).
  std::mt19937_64 rng(o.seed);
  double t = 0;
  while (true) {
    const double rate = std::max(1e-3, o.rate(t));
    t += std::exponential_distribution<double>(rate)(rng);
    if (t >= o.duration_s) break;
    const auto at =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
    std::this_thread::sleep_until(at);
    {
      std::lock_guard<std::mutex> lock(mu);
      due.push_back(at);
    }
    cv.notify_one();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  for (auto& c : clients) c.join();
  result.wall_s = seconds(Clock::now());
  return result;
}

}  // namespace kiln::serve
