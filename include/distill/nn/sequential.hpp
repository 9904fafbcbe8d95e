// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `nn::sequential`: a chain of layers that owns the activations between them, and `make_mlp`.
//! No tape: forward / backward walk the chain in order / reverse order calling the layers' own
//! forward / backward. Each stage holds its layer behind a small virtual interface (one call per
//! stage and pass), so a chain compiles the passes of the layer types it holds and no others (a
//! std::variant of every layer type compiled all of them into every user: most of the 15 s a
//! translation unit spent on nn::sequential, docs/performance.md).
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
//! to forward must stay alive and unchanged until backward (it is not copied). A layer of the chain
//! is reached with `layer_if<L>(i)` (nullptr unless stage i is an L).

#include <cstdint>
#include <initializer_list>
#include <string>
#include <memory>
#include <typeinfo>
#include <vector>

#include "distill/nn/activation.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/blas.hpp"
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

namespace sequential_detail {

/// Max pooling keeps the argmax of its forward for the backward.
template <class Space>
struct max_pool_state {
  pool2d_params params;
  tensor<std::int32_t, Space> argmax;
};

/// One stage of a chain: a layer behind the interface the chain calls.
template <class T, class Space>
class stage {
 public:
  virtual ~stage() = default;
  /// out = the stage's output shape for input shape `in`, or shape_mismatch naming `where`.
  virtual status output_shape(const char* fn, const std::string& where, const tensor_shape& in, tensor_shape& out) const = 0;
  virtual status forward(const exec_t<Space>& ctx, const T* in, const tensor_shape& shape, tensor<T, Space>& out) = 0;
  /// g_in may be null (no input gradient wanted; only for stage 0).
  virtual status backward(const exec_t<Space>& ctx, const T* in, const tensor_shape& shape, const tensor<T, Space>& out, const T* g_out,
                          T* g_in) = 0;
  virtual void set_training(bool) {}
  virtual void set_replica(const replica&) {}
  virtual void append_parameters(parameter_list<T, Space>&) {}
};

/// The stage holding layer type L. Its members are defined below the class (not inline), so the
/// compiled distill_cpu library can instantiate them once (the extern templates at the end).
template <class T, class Space, class L>
class stage_of final : public stage<T, Space> {
 public:
  explicit stage_of(L&& l) : layer(std::move(l)) {}
  L layer;

  status output_shape(const char* fn, const std::string& where, const tensor_shape& in, tensor_shape& out) const override;
  status forward(const exec_t<Space>& ctx, const T* in, const tensor_shape& shape, tensor<T, Space>& out) override;
  status backward(const exec_t<Space>& ctx, const T* in, const tensor_shape& shape, const tensor<T, Space>& out, const T* g_out,
                  T* g_in) override;
  void set_training(bool t) override;
  void set_replica(const replica& r) override;
  void append_parameters(parameter_list<T, Space>& out) override;

 private:
  template <int R>
  static tensor_view<const T, R, Space> cv(const T* p, const tensor_shape& s) {
    return tensor_detail::make_view<R, Space>(p, s);
  }
  template <int R>
  static tensor_view<T, R, Space> mv(T* p, const tensor_shape& s) {
    return tensor_detail::make_view<R, Space>(p, s);
  }
};

/// Number of features of a (N, ...) shape: the product of the trailing extents.
inline index_t trailing(const tensor_shape& s) { return s.rank <= 1 ? 1 : s.size() / s[0]; }

}  // namespace sequential_detail

template <class T, class Space = host_space>
class sequential {
 public:
  sequential() = default;
  sequential(sequential&&) noexcept = default;
  sequential& operator=(sequential&&) noexcept = default;

  sequential& add(linear<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(conv2d<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(batch_norm<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(layer_norm<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(dropout<T, Space>&& l) { return push(std::move(l)); }
  sequential& add(activation a) { return push(std::move(a)); }
  sequential& add(max_pool2d_stage p) { return push(sequential_detail::max_pool_state<Space>{p.params, {}}); }
  sequential& add(avg_pool2d_stage p) { return push(std::move(p)); }
  sequential& add(global_avg_pool_stage p) { return push(std::move(p)); }
  sequential& add(flatten_stage p) { return push(std::move(p)); }

  std::size_t size() const noexcept { return stages_.size(); }

  /// The layer of stage i when it is an L (e.g. nn::linear<T, Space>), nullptr otherwise.
  template <class L>
  L* layer_if(std::size_t i) noexcept {
    auto* s = i < stages_.size() ? dynamic_cast<sequential_detail::stage_of<T, Space, L>*>(stages_[i].get()) : nullptr;
    return s ? &s->layer : nullptr;
  }
  template <class L>
  const L* layer_if(std::size_t i) const noexcept {
    return const_cast<sequential*>(this)->template layer_if<L>(i);
  }

  /// Training mode for dropout and batch norm (default true).
  void set_training(bool t) {
    for (auto& s : stages_) s->set_training(t);
  }
  /// This process's share of a data-parallel batch, for dropout and batch norm (nn/replica.hpp).
  void set_replica(const replica& r) {
    for (auto& s : stages_) s->set_replica(r);
  }

  parameter_list<T, Space> parameters() {
    parameter_list<T, Space> out;
    for (auto& s : stages_) s->append_parameters(out);
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
    DISTILL_TRY(nn_detail::check_input(fn, "x", x));
    if (!x.contiguous()) return fail(errc::unsupported_layout, fn, "'x' must be contiguous");
    return run_forward(ctx, x.data(), tensor_shape::of(x));
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
    return run_backward(ctx, x.data(), dy.data(), dx.empty() ? nullptr : dx.data());
  }

 private:
  std::vector<std::unique_ptr<sequential_detail::stage<T, Space>>> stages_;
  std::vector<tensor<T, Space>> acts_;
  tensor<T, Space> grads_[2];
  tensor_shape in_shape_;

  template <class L>
  sequential& push(L&& l) {
    stages_.push_back(std::make_unique<sequential_detail::stage_of<T, Space, L>>(std::move(l)));
    return *this;
  }

  // The passes over the stages, for checked contiguous inputs (defined below, not inline).
  status run_forward(const exec_t<Space>& ctx, const T* x, const tensor_shape& x_shape);
  status run_backward(const exec_t<Space>& ctx, const T* x, const T* dy, T* dx);
};

template <class T, class Space>
status sequential<T, Space>::run_forward(const exec_t<Space>& ctx, const T* x, const tensor_shape& x_shape) {
  constexpr const char* fn = "nn::sequential::forward";
  if (stages_.empty()) return fail(errc::invalid_argument, fn, "no stages");
  acts_.resize(stages_.size());
  in_shape_ = x_shape;
  const T* in = x;
  tensor_shape shape = in_shape_;
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    tensor_shape out_shape;
    DISTILL_TRY(stages_[i]->output_shape(fn, "stage " + std::to_string(i) + ": ", shape, out_shape));
    DISTILL_TRY(acts_[i].resize(out_shape));
    DISTILL_TRY(stages_[i]->forward(ctx, in, shape, acts_[i]));
    in = acts_[i].data();
    shape = out_shape;
  }
  return {};
}

template <class T, class Space>
status sequential<T, Space>::run_backward(const exec_t<Space>& ctx, const T* x, const T* dy, T* dx) {
  const T* g_out = dy;
  for (std::size_t i = stages_.size(); i-- > 0;) {
    const tensor_shape in_shape = i == 0 ? in_shape_ : acts_[i - 1].shape();
    const T* in = i == 0 ? x : acts_[i - 1].data();
    T* g_in = nullptr;
    if (i > 0) {
      tensor<T, Space>& buf = grads_[i % 2];  // stage i+1 wrote its input gradient to grads_[(i + 1) % 2]
      DISTILL_TRY(buf.resize(in_shape));
      g_in = buf.data();
    } else {
      g_in = dx;
    }
    DISTILL_TRY(stages_[i]->backward(ctx, in, in_shape, acts_[i], g_out, g_in));
    g_out = g_in;
  }
  return {};
}

namespace sequential_detail {

template <class T, class Space, class L>
status stage_of<T, Space, L>::output_shape(const char* fn, const std::string& where, const tensor_shape& in, tensor_shape& out) const {
  const L& l = layer;
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
}

template <class T, class Space, class L>
status stage_of<T, Space, L>::forward(const exec_t<Space>& ctx, const T* in, const tensor_shape& shape, tensor<T, Space>& out) {
  L& l = layer;
  if constexpr (std::is_same_v<L, linear<T, Space>> || std::is_same_v<L, layer_norm<T, Space>> || std::is_same_v<L, dropout<T, Space>>) {
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
    static_assert(std::is_same_v<L, flatten_stage>);
    return activation_forward(ctx, activation::identity, cv<2>(in, out.shape()), out.template view<2>());
  }
}

template <class T, class Space, class L>
status stage_of<T, Space, L>::backward(const exec_t<Space>& ctx, const T* in, const tensor_shape& shape, const tensor<T, Space>& out,
                                       const T* g_out, T* g_in) {
  L& l = layer;
  const tensor_shape& os = out.shape();
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
}

template <class T, class Space, class L>
void stage_of<T, Space, L>::set_training(bool t) {
  if constexpr (std::is_same_v<L, dropout<T, Space>>) layer.training = t;
  if constexpr (std::is_same_v<L, batch_norm<T, Space>>) layer.set_training(t);
}

template <class T, class Space, class L>
void stage_of<T, Space, L>::set_replica(const replica& r) {
  if constexpr (std::is_same_v<L, dropout<T, Space>> || std::is_same_v<L, batch_norm<T, Space>>) layer.set_replica(r);
}

template <class T, class Space, class L>
void stage_of<T, Space, L>::append_parameters(parameter_list<T, Space>& out) {
  if constexpr (requires { layer.parameters(); }) {
    auto p = layer.parameters();
    out.insert(out.end(), p.begin(), p.end());
  }
}

}  // namespace sequential_detail

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

#if DISTILL_CPU_LIBRARY
// Compiled once in the distill_cpu library (src/nn_sequential.cpp).
#define DISTILL_SEQUENTIAL_INSTANCES(EXTERN, T)                                                                      \
  EXTERN template class sequential<T, host_space>;                                                                  \
  EXTERN template class sequential_detail::stage_of<T, host_space, linear<T, host_space>>;                          \
  EXTERN template class sequential_detail::stage_of<T, host_space, conv2d<T, host_space>>;                          \
  EXTERN template class sequential_detail::stage_of<T, host_space, batch_norm<T, host_space>>;                      \
  EXTERN template class sequential_detail::stage_of<T, host_space, layer_norm<T, host_space>>;                      \
  EXTERN template class sequential_detail::stage_of<T, host_space, dropout<T, host_space>>;                         \
  EXTERN template class sequential_detail::stage_of<T, host_space, activation>;                                     \
  EXTERN template class sequential_detail::stage_of<T, host_space, sequential_detail::max_pool_state<host_space>>;   \
  EXTERN template class sequential_detail::stage_of<T, host_space, avg_pool2d_stage>;                               \
  EXTERN template class sequential_detail::stage_of<T, host_space, global_avg_pool_stage>;                          \
  EXTERN template class sequential_detail::stage_of<T, host_space, flatten_stage>;
DISTILL_SEQUENTIAL_INSTANCES(extern, float)
DISTILL_SEQUENTIAL_INSTANCES(extern, double)
#endif

}  // namespace distill::nn
