// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `nn::sequential`: a chain of layers that owns the activations between them, and `make_mlp`.
//! No tape and no virtual calls: each stage is a std::variant of the layer types below, and
//! forward / backward walk the chain in order / reverse order calling the layers' own
//! forward / backward.
//!
//!   nn::sequential<float> cnn;
//!   for (int i = 0; i < 4; ++i) {
//!     cnn.add(nn::conv2d<float>("cnn.conv" + std::to_string(i), i ? 24 : 3, 24, 3, {2, 2, 1, 1}, init));
//!     cnn.add(nn::activation::relu);
//!     cnn.add(nn::batch_norm<float>("cnn.bn" + std::to_string(i), 24));
//!   }
//!   DISTILL_TRY(cnn.forward(ctx, images.view<4>()));       // images (B, 3, 75, 75)
//!   auto maps = cnn.output().view<4>();                     // (B, 24, 5, 5)
//!   ... loss gradient d_maps ...
//!   DISTILL_TRY(cnn.backward(ctx, images.view<4>(), d_maps, {}));   // no input gradient
//!
//!   auto f = nn::make_mlp<float>({256, 256, 256, 10}, {.act = nn::activation::relu, .dropout = 0.5, .name = "f"});
//!
//! Shapes: linear and layer_norm see their input as (N, features) (trailing axes merged, so a
//! linear after a conv flattens implicitly), conv2d and the 2-D pools need (N, C, H, W),
//! batch_norm sees (N, C, rest). Inputs and output gradients must be contiguous. The input passed
//! to forward must stay alive and unchanged until backward (it is not copied).

#include <cstdint>
#include <initializer_list>
#include <string>
#include <variant>
#include <vector>

#include "distill/nn/activation.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/layer_norm.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/pooling.hpp"

namespace distill::nn {

/// Stages without parameters, for sequential.
struct max_pool2d_stage {
  pool2d_params params;
};
struct avg_pool2d_stage {
  pool2d_params params;
};
struct global_avg_pool_stage {};
struct flatten_stage {};

template <class T, class Space = host_space>
class sequential {
 public:
  template <class S>
  struct max_pool_state {
    pool2d_params params;
    tensor<std::int32_t, S> argmax;
  };
  using stage = std::variant<linear<T, Space>, conv2d<T, Space>, batch_norm<T, Space>, layer_norm<T, Space>, activation,
                             dropout<T, Space>, max_pool_state<Space>, avg_pool2d_stage, global_avg_pool_stage, flatten_stage>;

  sequential() = default;
  sequential(sequential&&) noexcept = default;
  sequential& operator=(sequential&&) noexcept = default;

  sequential& add(linear<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(conv2d<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(batch_norm<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(layer_norm<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(dropout<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(activation a) { return push(a); }
  sequential& add(max_pool2d_stage p) { return push(max_pool_state<Space>{p.params, {}}); }
  sequential& add(avg_pool2d_stage p) { return push(p); }
  sequential& add(global_avg_pool_stage p) { return push(p); }
  sequential& add(flatten_stage p) { return push(p); }

  std::size_t size() const noexcept { return stages_.size(); }
  stage& operator[](std::size_t i) { return stages_[i]; }

  /// Training mode for dropout and batch norm (default true).
  void set_training(bool t) {
    for (auto& s : stages_) {
      if (auto* d = std::get_if<dropout<T, Space>>(&s)) d->training = t;
      if (auto* b = std::get_if<batch_norm<T, Space>>(&s)) b->set_training(t);
    }
  }

  parameter_list<T, Space> parameters() {
    parameter_list<T, Space> out;
    for (auto& s : stages_)
      std::visit(
          [&](auto& l) {
            if constexpr (requires { l.parameters(); }) {
              auto p = l.parameters();
              out.insert(out.end(), p.begin(), p.end());
            }
          },
          s);
    return out;
  }

  /// Output of the last forward (shape set by the chain).
  const tensor<T, Space>& output() const { return acts_.back(); }
  tensor<T, Space>& output() { return acts_.back(); }
  /// Activation after stage i of the last forward.
  const tensor<T, Space>& activation_after(std::size_t i) const { return acts_[i]; }

  /// Run the chain on x (any rank, contiguous; a view of T or const T).
  template <class Ctx, class TX, int R>
  [[nodiscard]] status forward(const Ctx& ctx, tensor_view<TX, R, Space> x) {
    static_assert(std::is_same_v<std::remove_const_t<TX>, T>, "nn::sequential::forward: element type mismatch");
    constexpr const char* fn = "nn::sequential::forward";
    if (stages_.empty()) return fail(errc::invalid_argument, fn, "no stages");
    DISTILL_TRY(nn_detail::check_input(fn, "x", x));
    if (!x.contiguous()) return fail(errc::unsupported_layout, fn, "'x' must be contiguous");
    acts_.resize(stages_.size());
    in_shape_ = tensor_shape::of(x);
    const T* in = x.data();
    tensor_shape shape = in_shape_;
    for (std::size_t i = 0; i < stages_.size(); ++i) {
      tensor_shape out_shape;
      DISTILL_TRY(output_shape(fn, i, shape, out_shape));
      DISTILL_TRY(acts_[i].resize(out_shape));
      DISTILL_TRY(stage_forward(ctx, stages_[i], in, shape, acts_[i]));
      in = acts_[i].data();
      shape = out_shape;
    }
    return {};
  }

  /// x: the input of the last forward; dy: gradient of the output (its shape, any rank,
  /// contiguous); dx: gradient of the input (contiguous, x's size) or absent ({}).
  /// Parameter gradients accumulate.
  template <class Ctx, class TX, int R, class TY, int RY, int RX = 1>
  [[nodiscard]] status backward(const Ctx& ctx, tensor_view<TX, R, Space> x, tensor_view<TY, RY, Space> dy,
                                tensor_view<T, RX, Space> dx = {}) {
    static_assert(std::is_same_v<std::remove_const_t<TX>, T> && std::is_same_v<std::remove_const_t<TY>, T>,
                  "nn::sequential::backward: element type mismatch");
    constexpr const char* fn = "nn::sequential::backward";
    if (acts_.size() != stages_.size() || stages_.empty() || !(tensor_shape::of(x) == in_shape_))
      return fail(errc::invalid_argument, fn, "no forward of this input shape to differentiate (call forward first)");
    DISTILL_TRY(nn_detail::check_input(fn, "dy", dy));
    if (!dy.contiguous()) return fail(errc::unsupported_layout, fn, "'dy' must be contiguous");
    if (dy.size() != acts_.back().size())
      return fail(errc::shape_mismatch, fn, "'dy' has " + std::to_string(dy.size()) + " elements, the output " +
                                                acts_.back().shape().to_string());
    if (!dx.empty() && (!dx.contiguous() || dx.size() != x.size()))
      return fail(errc::shape_mismatch, fn, "'dx' must be contiguous with the shape of 'x'");
    const T* g_out = dy.data();
    for (std::size_t i = stages_.size(); i-- > 0;) {
      const tensor_shape in_shape = i == 0 ? in_shape_ : acts_[i - 1].shape();
      const T* in = i == 0 ? x.data() : acts_[i - 1].data();
      T* g_in = nullptr;
      if (i > 0) {
        tensor<T, Space>& buf = grads_[i % 2];  // stage i+1 wrote its input gradient to grads_[(i + 1) % 2]
        DISTILL_TRY(buf.resize(in_shape));
        g_in = buf.data();
      } else if (!dx.empty()) {
        g_in = dx.data();
      }
      DISTILL_TRY(stage_backward(ctx, stages_[i], in, in_shape, acts_[i], g_out, g_in));
      g_out = g_in;
    }
    return {};
  }

 private:
  std::vector<stage> stages_;
  std::vector<tensor<T, Space>> acts_;
  tensor<T, Space> grads_[2];
  tensor_shape in_shape_;

  template <class L>
  sequential& push(L&& l) {
    stages_.emplace_back(std::forward<L>(l));
    return *this;
  }

  template <int R>
  static tensor_view<const T, R, Space> cv(const T* p, const tensor_shape& s) {
    return tensor_detail::make_view<R, Space>(p, s);
  }
  template <int R>
  static tensor_view<T, R, Space> mv(T* p, const tensor_shape& s) {
    return tensor_detail::make_view<R, Space>(p, s);
  }
  static index_t trailing(const tensor_shape& s) { return s.rank <= 1 ? 1 : s.size() / s[0]; }

  status output_shape(const char* fn, std::size_t i, const tensor_shape& in, tensor_shape& out) const {
    const std::string where = "stage " + std::to_string(i) + ": ";
    return std::visit(
        [&](const auto& l) -> status {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, linear<T, Space>>) {
            if (trailing(in) != l.in_features)
              return fail(errc::shape_mismatch, fn, where + "linear expects " + std::to_string(l.in_features) + " features, got input " +
                                                        in.to_string());
            out = {in[0], l.out_features};
          } else if constexpr (std::is_same_v<L, conv2d<T, Space>>) {
            if (in.rank != 4 || in[1] != l.in_channels)
              return fail(errc::shape_mismatch, fn, where + "conv2d expects (N, " + std::to_string(l.in_channels) + ", H, W), got " +
                                                        in.to_string());
            out = l.output_shape(in[0], in[2], in[3]);
            if (out[2] <= 0 || out[3] <= 0) return fail(errc::shape_mismatch, fn, where + "conv2d kernel does not fit " + in.to_string());
          } else if constexpr (std::is_same_v<L, batch_norm<T, Space>>) {
            if (in.rank < 2 || in[1] != l.channels)
              return fail(errc::shape_mismatch, fn, where + "batch_norm expects " + std::to_string(l.channels) + " channels, got " +
                                                        in.to_string());
            out = in;
          } else if constexpr (std::is_same_v<L, layer_norm<T, Space>>) {
            if (trailing(in) != l.features)
              return fail(errc::shape_mismatch, fn, where + "layer_norm expects " + std::to_string(l.features) + " features, got " +
                                                        in.to_string());
            out = in;
          } else if constexpr (std::is_same_v<L, max_pool_state<Space>> || std::is_same_v<L, avg_pool2d_stage>) {
            if (in.rank != 4 || in[2] < l.params.kernel || in[3] < l.params.kernel)
              return fail(errc::shape_mismatch, fn, where + "pooling needs (N, C, H, W) with H, W >= kernel, got " + in.to_string());
            out = {in[0], in[1], pool2d_output_extent(in[2], l.params.kernel, l.params.stride),
                   pool2d_output_extent(in[3], l.params.kernel, l.params.stride)};
          } else if constexpr (std::is_same_v<L, global_avg_pool_stage>) {
            if (in.rank < 3) return fail(errc::shape_mismatch, fn, where + "global pooling needs (N, C, ...), got " + in.to_string());
            out = {in[0], in[1]};
          } else if constexpr (std::is_same_v<L, flatten_stage>) {
            out = {in[0], trailing(in)};
          } else {  // activation, dropout
            out = in;
          }
          return {};
        },
        stages_[i]);
  }

  template <class Ctx>
  status stage_forward(const Ctx& ctx, stage& s, const T* in, const tensor_shape& shape, tensor<T, Space>& out) {
    return std::visit(
        [&](auto& l) -> status {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, linear<T, Space>> || std::is_same_v<L, layer_norm<T, Space>> ||
                        std::is_same_v<L, dropout<T, Space>>) {
            return l.forward(ctx, cv<2>(in, shape), out.template view<2>());
          } else if constexpr (std::is_same_v<L, conv2d<T, Space>>) {
            return l.forward(ctx, cv<4>(in, shape), out.template view<4>());
          } else if constexpr (std::is_same_v<L, batch_norm<T, Space>>) {
            return l.forward(ctx, cv<3>(in, shape), out.template view<3>());
          } else if constexpr (std::is_same_v<L, activation>) {
            return activation_forward(ctx, l, cv<2>(in, shape), out.template view<2>());
          } else if constexpr (std::is_same_v<L, max_pool_state<Space>>) {
            DISTILL_TRY(l.argmax.resize(out.shape()));
            return max_pool2d_forward(ctx, cv<4>(in, shape), out.template view<4>(), l.argmax.template view<4>(), l.params);
          } else if constexpr (std::is_same_v<L, avg_pool2d_stage>) {
            return avg_pool2d_forward(ctx, cv<4>(in, shape), out.template view<4>(), l.params);
          } else if constexpr (std::is_same_v<L, global_avg_pool_stage>) {
            return global_avg_pool_forward(ctx, cv<3>(in, shape), out.template view<2>());
          } else {  // flatten: a copy (the activation is owned per stage)
            return activation_forward(ctx, activation::identity, cv<2>(in, out.shape()), out.template view<2>());
          }
        },
        s);
  }

  // g_in may be null (no input gradient wanted; only for stage 0).
  template <class Ctx>
  status stage_backward(const Ctx& ctx, stage& s, const T* in, const tensor_shape& shape, const tensor<T, Space>& out, const T* g_out,
                        T* g_in) {
    const tensor_shape& os = out.shape();
    return std::visit(
        [&](auto& l) -> status {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, linear<T, Space>> || std::is_same_v<L, layer_norm<T, Space>>) {
            return l.backward(ctx, cv<2>(in, shape), cv<2>(g_out, os), g_in ? mv<2>(g_in, shape) : tensor_view<T, 2, Space>{});
          } else if constexpr (std::is_same_v<L, conv2d<T, Space>>) {
            return l.backward(ctx, cv<4>(in, shape), cv<4>(g_out, os), g_in ? mv<4>(g_in, shape) : tensor_view<T, 4, Space>{});
          } else if constexpr (std::is_same_v<L, batch_norm<T, Space>>) {
            return l.backward(ctx, cv<3>(in, shape), cv<3>(g_out, os), g_in ? mv<3>(g_in, shape) : tensor_view<T, 3, Space>{});
          } else {
            if (!g_in) return {};  // parameter-free stage at the front: nothing to compute
            if constexpr (std::is_same_v<L, activation>) {
              return activation_backward(ctx, l, cv<2>(in, shape), cv<2>(g_out, os), mv<2>(g_in, shape));
            } else if constexpr (std::is_same_v<L, dropout<T, Space>>) {
              return l.backward(ctx, cv<2>(g_out, os), mv<2>(g_in, shape));
            } else if constexpr (std::is_same_v<L, max_pool_state<Space>>) {
              return max_pool2d_backward(ctx, cv<4>(g_out, os), l.argmax.template cview<4>(), mv<4>(g_in, shape), l.params);
            } else if constexpr (std::is_same_v<L, avg_pool2d_stage>) {
              return avg_pool2d_backward(ctx, cv<4>(g_out, os), mv<4>(g_in, shape), l.params);
            } else if constexpr (std::is_same_v<L, global_avg_pool_stage>) {
              return global_avg_pool_backward(ctx, cv<2>(g_out, os), mv<3>(g_in, shape));
            } else {  // flatten
              return activation_forward(ctx, activation::identity, cv<2>(g_out, os), mv<2>(g_in, os));
            }
          }
        },
        s);
  }
};

struct mlp_options {
  activation act = activation::relu;
  double dropout = 0.0;            ///< > 0: dropout before the last linear layer (Relation Networks' f)
  std::uint64_t dropout_seed = 0;
  init_options init = {};
  /// Layers are named "<name>.fc<i>". Names key the weight initialisation (with init.seed) and the
  /// checkpoint entries: give each MLP of a model its own.
  std::string name = "mlp";
};

/// Linear layers sizes[0] -> sizes[1] -> ... with `act` between them (none after the last), and
/// optional dropout before the last layer.
template <class T, class Space = host_space>
sequential<T, Space> make_mlp(std::initializer_list<index_t> sizes, const mlp_options& o = {}) {
  std::vector<index_t> s(sizes);
  sequential<T, Space> m;
  for (std::size_t i = 0; i + 1 < s.size(); ++i) {
    const bool last = i + 2 == s.size();
    if (last && o.dropout > 0) m.add(dropout<T, Space>(o.dropout, o.dropout_seed));
    m.add(linear<T, Space>(o.name + ".fc" + std::to_string(i), s[i], s[i + 1], o.init));
    if (!last) m.add(o.act);
  }
  return m;
}

}  // namespace distill::nn
