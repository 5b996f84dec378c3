#include "kiln/parallel/unit_hooks.h"

#include <mutex>
#include <unordered_map>

namespace kiln::parallel {
namespace {

std::mutex registry_mu;
std::unordered_map<const torch::nn::Module*, InstalledHooks>& registry() {
  static auto* r = new std::unordered_map<const torch::nn::Module*, InstalledHooks>();
  return *r;
}

}  // namespace

void set_unit_hooks(const torch::nn::Module* module, UnitHooks* hooks, std::size_t unit) {
  std::lock_guard<std::mutex> lock(registry_mu);
  if (hooks == nullptr) {
    registry().erase(module);
  } else {
    registry()[module] = {hooks, unit};
  }
}

InstalledHooks find_unit_hooks(const torch::nn::Module* module) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = registry().find(module);
  return it == registry().end() ? InstalledHooks{} : it->second;
}

}  // namespace kiln::parallel
