#include "kiln/serve/onednn_cnn.h"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln::serve {
namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;
using Tag = memory::format_tag;
using Dims = memory::dims;
constexpr auto kF32 = memory::data_type::f32;

// Each activation's offset in the arena is a multiple of this (a cache line
// and AVX2's widest load).
constexpr std::size_t kAlign = 64;

std::size_t aligned(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Attributes of every primitive here: the scratchpad is ours (passed at
// execute, allocated with the plan), so oneDNN allocates nothing per call;
// with `relu`, a relu post-op (Note [The CNN's forward on oneDNN's own API]).
dnnl::primitive_attr attributes(bool relu) {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(1.0f, algorithm::eltwise_relu, 0.0f, 0.0f);
    a.set_post_ops(ops);
  }
  return a;
}

Status check_size(const char* name, std::span<const float> v, std::int64_t want) {
  if (static_cast<std::int64_t>(v.size()) == want) return Status::ok();
  return failed_precondition(
      fmt::format("the CNN's {} has {} values, its shapes say {}", name, v.size(), want));
}

}  // namespace

struct OnednnCnn::Impl {
  // One primitive of a plan and the arguments it runs with (built once, so
  // a batch builds no map).
  struct Step {
    std::string name;
    dnnl::primitive primitive;
    std::unordered_map<int, memory> args;
    std::string implementation;
  };
  // An activation of a plan: its memory and where it lies in the arena.
  struct Activation {
    memory mem;
    std::size_t offset;
  };
  // Everything batch size b runs with.
  struct Plan {
    std::vector<Step> steps;
    std::vector<Activation> activations;  // [0] the input (nchw), back() the logits (nc)
    std::size_t arena_bytes = 0;
    std::unique_ptr<void, FreeDeleter> scratchpad;
    const void* bound_to = nullptr;  // the arena its activations point into
  };

  Impl(const CnnParameters& p, BeforePlanForTest before_plan)
      : shape(p), before_plan(std::move(before_plan)) {
    shape.conv1_w = shape.conv1_b = shape.conv2_w = shape.conv2_b = {};
    shape.fc1_w = shape.fc1_b = shape.fc2_w = shape.fc2_b = {};
  }

  // A parameter in LibTorch's layout, where it lies (only read: reorders
  // copy it into the layouts the primitives ask for).
  memory plain(std::span<const float> v, const Dims& dims, Tag tag) {
    return memory({dims, kF32, tag}, engine, const_cast<float*>(v.data()));
  }

  // `user` in the layout `want`: reordered once per layout, shared by every
  // plan that asks for it.
  memory in_layout(const memory& user, const memory::desc& want) {
    if (user.get_desc() == want) return user;
    for (auto& [from, to] : reordered) {
      if (from.get() == user.get() && to.get_desc() == want) return to;
    }
    memory to(want, engine);
    memory from = user;
    dnnl::reorder(from, to).execute(stream, from, to);
    stream.wait();
    reordered.emplace_back(from, to);
    return to;
  }

  Plan build(int b) {
    if (before_plan) before_plan(b);
    const std::int64_t n = b, s = shape.side, c1 = shape.conv1_channels, c2 = shape.conv2_channels;
    Plan plan;
    auto activation = [&](const memory::desc& d) {
      memory m(d, engine, nullptr);  // bound into the arena by bind()
      plan.activations.push_back({m, plan.arena_bytes});
      plan.arena_bytes += aligned(d.get_size());
      return m;
    };
    std::size_t scratch = 0;
    auto add = [&](const char* name, const dnnl::primitive_desc_base& pd, dnnl::primitive prim,
                   std::unordered_map<int, memory> args) {
      scratch = std::max(scratch, pd.scratchpad_desc().get_size());
      plan.steps.push_back({name, std::move(prim), std::move(args), pd.impl_info_str()});
    };
    const auto relu = attributes(true), none = attributes(false);
    const memory::desc input({n, 1, s, s}, kF32, Tag::nchw);
    memory x = activation(input);

    auto conv = [&](const char* name, memory src, std::int64_t out_c, std::int64_t side,
                    const memory& w_user, const memory& bias) {
      const dnnl::convolution_forward::desc d(
          prop_kind::forward_inference, algorithm::convolution_direct, src.get_desc(),
          memory::desc({out_c, src.get_desc().dims()[1], 3, 3}, kF32, Tag::any), bias.get_desc(),
          memory::desc({n, out_c, side, side}, kF32, Tag::any), {1, 1}, {1, 1}, {1, 1});
      const dnnl::convolution_forward::primitive_desc pd(d, relu, engine);
      if (pd.src_desc() != src.get_desc()) {
        // Only the input can be in a layout the convolution does not take
        // (the activations come in the layout the previous step chose).
        memory to = activation(pd.src_desc());
        const dnnl::reorder::primitive_desc rpd(src, to, none);
        add("reorder", rpd, dnnl::reorder(rpd), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, to}});
        src = to;
      }
      memory dst = activation(pd.dst_desc());
      add(name, pd, dnnl::convolution_forward(pd),
          {{DNNL_ARG_SRC, src},
           {DNNL_ARG_WEIGHTS, in_layout(w_user, pd.weights_desc())},
           {DNNL_ARG_BIAS, bias},
           {DNNL_ARG_DST, dst}});
      return dst;
    };
    auto pool = [&](const char* name, const memory& src) {
      const Dims& dims = src.get_desc().dims();
      const dnnl::pooling_forward::desc d(
          prop_kind::forward_inference, algorithm::pooling_max, src.get_desc(),
          memory::desc({dims[0], dims[1], dims[2] / 2, dims[3] / 2}, kF32, Tag::any), {2, 2},
          {2, 2}, {0, 0}, {0, 0});
      const dnnl::pooling_forward::primitive_desc pd(d, none, engine);
      memory dst = activation(pd.dst_desc());
      add(name, pd, dnnl::pooling_forward(pd), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
      return dst;
    };
    auto inner_product = [&](const char* name, const memory& src, const memory& w_user,
                             const memory& bias, bool with_relu, Tag dst_tag) {
      Dims w_dims = src.get_desc().dims();
      w_dims[0] = bias.get_desc().dims()[0];
      const dnnl::inner_product_forward::desc d(
          prop_kind::forward_inference, src.get_desc(), memory::desc(w_dims, kF32, Tag::any),
          bias.get_desc(), memory::desc({n, w_dims[0]}, kF32, dst_tag));
      const dnnl::inner_product_forward::primitive_desc pd(d, with_relu ? relu : none, engine);
      if (pd.src_desc() != src.get_desc()) {
        throw std::invalid_argument(
            fmt::format("oneDNN's {} does not take its input's layout", name));
      }
      memory dst = activation(pd.dst_desc());
      add(name, pd, dnnl::inner_product_forward(pd),
          {{DNNL_ARG_SRC, src},
           {DNNL_ARG_WEIGHTS, in_layout(w_user, pd.weights_desc())},
           {DNNL_ARG_BIAS, bias},
           {DNNL_ARG_DST, dst}});
      return dst;
    };

    memory h = conv("conv1", x, c1, s, conv1_w, conv1_b);
    h = pool("pool1", h);
    h = conv("conv2", h, c2, s / 2, conv2_w, conv2_b);
    h = pool("pool2", h);
    h = inner_product("fc1", h, fc1_w, fc1_b, true, Tag::any);
    inner_product("fc2", h, fc2_w, fc2_b, false, Tag::nc);
    if (scratch > 0) {
      plan.scratchpad.reset(std::aligned_alloc(kAlign, aligned(scratch)));
      if (!plan.scratchpad) throw std::bad_alloc();
      for (auto& st : plan.steps) {
        // Every step gets the one buffer: they run one after another.
        st.args.emplace(
            DNNL_ARG_SCRATCHPAD,
            memory({{static_cast<std::int64_t>(scratch)}, memory::data_type::u8, Tag::x}, engine,
                   plan.scratchpad.get()));
      }
    }
    return plan;
  }

  Plan& plan_for(int b) {
    auto it = plans.find(b);
    if (it == plans.end()) it = plans.emplace(b, build(b)).first;
    Plan& p = it->second;
    if (p.arena_bytes > arena_bytes) {
      // Grown, never shrunk: one arena for the largest batch seen; every
      // plan is re-pointed into it on its next use.
      // The old arena stays until the new one exists: a failed allocation
      // leaves every plan bound to memory that is still there.
      void* grown = std::aligned_alloc(kAlign, p.arena_bytes);
      if (grown == nullptr) throw std::bad_alloc();
      arena.reset(grown);
      arena_bytes = p.arena_bytes;
    }
    if (p.bound_to != arena.get()) {
      auto* base = static_cast<std::byte*>(arena.get());
      for (auto& a : p.activations) a.mem.set_data_handle(base + a.offset);
      p.bound_to = arena.get();
    }
    return p;
  }

  CnnParameters shape;  // the sizes and normalization, no values
  BeforePlanForTest before_plan;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  memory conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b;  // LibTorch's layouts
  std::vector<std::pair<memory, memory>> reordered;  // (parameter, its copy in a layout)
  std::map<int, Plan> plans;
  std::unique_ptr<void, FreeDeleter> arena;
  std::size_t arena_bytes = 0;
};

OnednnCnn::OnednnCnn(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OnednnCnn::~OnednnCnn() = default;

Result<std::unique_ptr<OnednnCnn>> OnednnCnn::create(const CnnParameters& p,
                                                     BeforePlanForTest before_plan) {
  const std::int64_t c1 = p.conv1_channels, c2 = p.conv2_channels, q = p.side / 4;
  if (c1 <= 0 || c2 <= 0 || p.hidden <= 0 || p.classes <= 0 || p.side <= 0 || p.side % 4 != 0 ||
      p.pixel_std == 0) {
    return failed_precondition(fmt::format(
        "the CNN's shapes (conv1 {} channels, conv2 {}, hidden {}, classes {}, side {}, std {}) "
        "are not train's CNN",
        c1, c2, p.hidden, p.classes, p.side, p.pixel_std));
  }
  KILN_RETURN_IF_ERROR(check_size("conv1.weight", p.conv1_w, c1 * 9));
  KILN_RETURN_IF_ERROR(check_size("conv1.bias", p.conv1_b, c1));
  KILN_RETURN_IF_ERROR(check_size("conv2.weight", p.conv2_w, c2 * c1 * 9));
  KILN_RETURN_IF_ERROR(check_size("conv2.bias", p.conv2_b, c2));
  KILN_RETURN_IF_ERROR(check_size("fc1.weight", p.fc1_w, p.hidden * c2 * q * q));
  KILN_RETURN_IF_ERROR(check_size("fc1.bias", p.fc1_b, p.hidden));
  KILN_RETURN_IF_ERROR(check_size("fc2.weight", p.fc2_w, p.classes * p.hidden));
  KILN_RETURN_IF_ERROR(check_size("fc2.bias", p.fc2_b, p.classes));
  try {
    auto impl = std::make_unique<Impl>(p, std::move(before_plan));
    Impl& m = *impl;
    m.conv1_w = m.plain(p.conv1_w, {c1, 1, 3, 3}, Tag::oihw);
    m.conv1_b = m.plain(p.conv1_b, {c1}, Tag::x);
    m.conv2_w = m.plain(p.conv2_w, {c2, c1, 3, 3}, Tag::oihw);
    m.conv2_b = m.plain(p.conv2_b, {c2}, Tag::x);
    // fc1's [hidden, c2 * q * q] is [hidden, c2, q, q] row-major: what the
    // flattened NCHW pooling multiplies, whatever layout oneDNN keeps it in.
    m.fc1_w = m.plain(p.fc1_w, {p.hidden, c2, q, q}, Tag::oihw);
    m.fc1_b = m.plain(p.fc1_b, {p.hidden}, Tag::x);
    m.fc2_w = m.plain(p.fc2_w, {p.classes, p.hidden}, Tag::oi);
    m.fc2_b = m.plain(p.fc2_b, {p.classes}, Tag::x);
    return std::unique_ptr<OnednnCnn>(new OnednnCnn(std::move(impl)));
  } catch (const std::exception& e) {
    return failed_precondition(fmt::format("the CNN's parameters as oneDNN memory: {}", e.what()));
  }
}

std::span<const float> OnednnCnn::forward(const std::vector<Input>& batch) {
  Impl& m = *impl_;
  Impl::Plan& plan = m.plan_for(static_cast<int>(batch.size()));
  const auto pixels = static_cast<std::size_t>(m.shape.side * m.shape.side);
  // Normalized as train::normalize_pixels does, in float.
  const float mean = m.shape.pixel_mean, sd = m.shape.pixel_std;
  auto* x = static_cast<float*>(plan.activations.front().mem.get_data_handle());
  for (const Input& in : batch) {
    if (in.image.size() != pixels) {
      throw std::invalid_argument(
          fmt::format("an image of {} pixels, the CNN takes {}", in.image.size(), pixels));
    }
    for (float v : in.image) *x++ = (v / 255.0f - mean) / sd;
  }
  for (const auto& st : plan.steps) st.primitive.execute(m.stream, st.args);
  m.stream.wait();
  const memory& logits = plan.activations.back().mem;
  return {static_cast<const float*>(logits.get_data_handle()),
          batch.size() * static_cast<std::size_t>(m.shape.classes)};
}

std::vector<std::string> OnednnCnn::implementations(int b) {
  std::vector<std::string> out;
  for (const auto& st : impl_->plan_for(b).steps) out.push_back(st.name + " " + st.implementation);
  return out;
}

}  // namespace kiln::serve
