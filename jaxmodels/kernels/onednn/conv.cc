// 2-D convolution (forward, backward-data, backward-weights) through oneDNN, as XLA FFI handlers.
//
// Our layouts are flax's: input and output NHWC, kernel HWIO, float32. Attributes, all int64:
//   strides  (sh, sw)
//   padding  (top, bottom, left, right), explicit; the Python side resolves 'SAME' and 'VALID'
//   dilation (dh, dw), 1 meaning none, as lax.conv_general_dilated counts it.
// jaxmodels/kernels/conv.py calls these handlers; it is the only caller.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using Span = ffi::Span<const int64_t>;
using Array = ffi::Buffer<ffi::F32, 4>;
using Result = ffi::ResultBuffer<ffi::F32, 4>;
using jaxmodels_onednn::Engine;
using jaxmodels_onednn::Execute;
using jaxmodels_onednn::scratchpad;
using jaxmodels_onednn::staged_weights;
using jaxmodels_onednn::UserScratchpad;

namespace {

// One convolution in oneDNN's terms. oneDNN orders dimensions logically as NCHW (activations) and
// OIHW (weights) whatever the layout in memory; the layout is the format tag (nhwc, hwio). It
// counts dilation from 0 (no dilation), lax from 1.
struct Geometry {
  memory::dims src, weights, dst, strides, dilates, pad_l, pad_r;

  Geometry(Span x, Span w, Span y, Span stride, Span padding, Span dilation)
      : src{x[0], x[3], x[1], x[2]},
        weights{w[3], w[2], w[0], w[1]},
        dst{y[0], y[3], y[1], y[2]},
        strides{stride[0], stride[1]},
        dilates{dilation[0] - 1, dilation[1] - 1},
        pad_l{padding[0], padding[2]},
        pad_r{padding[1], padding[3]} {}

  std::string Key(char op) const {
    std::string key(1, op);
    for (const auto* dims : {&src, &weights, &dst, &strides, &dilates, &pad_l, &pad_r}) {
      for (int64_t d : *dims) key += "," + std::to_string(d);
    }
    return key;
  }

  memory::desc Activations(const memory::dims& dims) const {
    return memory::desc(dims, memory::data_type::f32, Tag::nhwc);
  }
  memory::desc Weights(Tag tag) const {
    return memory::desc(weights, memory::data_type::f32, tag);
  }
};

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  // Weights as 'any': oneDNN picks its blocked layout and we reorder HWIO into it on each call
  // (weights are small next to activations). Activations stay NHWC, as XLA holds them.
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.Activations(g.src), g.Weights(Tag::any), g.Activations(g.dst), g.strides, g.dilates,
      g.pad_l, g.pad_r, UserScratchpad());
}

// A convolution primitive and the reorder between our HWIO weights and its own weight layout
// (absent when the two agree).
struct Plan {
  dnnl::primitive conv;
  memory::desc weights;  // the layout `conv` reads or writes weights in
  dnnl::primitive reorder;
  bool has_reorder = false;
  size_t scratch_bytes = 0;
};

std::shared_ptr<Plan> MakePlan(char op, const Geometry& g) {
  auto plan = std::make_shared<Plan>();
  memory::desc hwio = g.Weights(Tag::hwio);
  auto fwd = ForwardDesc(g);
  dnnl::primitive_desc_base desc = fwd;
  if (op == 'f') {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->weights = fwd.weights_desc();
  } else if (op == 'd') {
    dnnl::convolution_backward_data::primitive_desc bwd(
        Engine(), dnnl::algorithm::convolution_direct, g.Activations(g.src), g.Weights(Tag::any),
        g.Activations(g.dst), g.strides, g.dilates, g.pad_l, g.pad_r, fwd, UserScratchpad());
    plan->conv = dnnl::convolution_backward_data(bwd);
    plan->weights = bwd.weights_desc();
    desc = bwd;
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(
        Engine(), dnnl::algorithm::convolution_direct, g.Activations(g.src), g.Weights(Tag::any),
        g.Activations(g.dst), g.strides, g.dilates, g.pad_l, g.pad_r, fwd, UserScratchpad());
    plan->conv = dnnl::convolution_backward_weights(bwd);
    plan->weights = bwd.diff_weights_desc();
    desc = bwd;
  }
  plan->scratch_bytes = desc.scratchpad_desc().get_size();
  if (plan->weights != hwio) {
    // Forward and backward-data read weights (HWIO -> oneDNN's); backward-weights writes them.
    bool read = op != 'w';
    dnnl::reorder::primitive_desc reorder(Engine(), read ? hwio : plan->weights, Engine(),
                                          read ? plan->weights : hwio, UserScratchpad());
    plan->reorder = dnnl::reorder(reorder);
    plan->has_reorder = true;
    plan->scratch_bytes = std::max(plan->scratch_bytes, reorder.scratchpad_desc().get_size());
  }
  return plan;
}

// Creating a primitive compiles a kernel (milliseconds); each shape's plan is made once per thread
// count. oneDNN's OpenMP kernels size their per-thread work (the reduction buffers of
// backward-weights) for the thread count at creation, so a plan only runs under that count.
std::shared_ptr<Plan> GetPlan(char op, const Geometry& g, int threads) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  std::string key = g.Key(op) + ",threads=" + std::to_string(threads);
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[key];
  if (!plan) plan = MakePlan(op, g);
  return plan;
}

// `src` is the NHWC input side (x, or dx for backward-data), `dst` the output side (y or dy).
ffi::Error Run(char op, const Geometry& g, int threads, void* src, void* weights, void* dst) {
  omp_set_num_threads(threads);  // before the plan: it is made for, and runs under, this count
  auto plan = GetPlan(op, g, threads);
  void* scratch = scratchpad.Get(plan->scratch_bytes);
  memory user_weights(g.Weights(Tag::hwio), Engine(), weights);
  memory conv_weights = user_weights;
  if (plan->has_reorder) {
    conv_weights = memory(plan->weights, Engine(), staged_weights.Get(plan->weights.get_size()));
    if (op != 'w') {
      Execute(plan->reorder, {{DNNL_ARG_FROM, user_weights}, {DNNL_ARG_TO, conv_weights}}, scratch,
              plan->scratch_bytes);
    }
  }
  memory src_mem(g.Activations(g.src), Engine(), src);
  memory dst_mem(g.Activations(g.dst), Engine(), dst);
  if (op == 'f') {
    Execute(plan->conv,
            {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, conv_weights}, {DNNL_ARG_DST, dst_mem}},
            scratch, plan->scratch_bytes);
  } else if (op == 'd') {
    Execute(plan->conv,
            {{DNNL_ARG_DIFF_SRC, src_mem},
             {DNNL_ARG_WEIGHTS, conv_weights},
             {DNNL_ARG_DIFF_DST, dst_mem}},
            scratch, plan->scratch_bytes);
  } else {
    Execute(plan->conv,
            {{DNNL_ARG_SRC, src_mem},
             {DNNL_ARG_DIFF_WEIGHTS, conv_weights},
             {DNNL_ARG_DIFF_DST, dst_mem}},
            scratch, plan->scratch_bytes);
    if (plan->has_reorder) {
      Execute(plan->reorder, {{DNNL_ARG_FROM, conv_weights}, {DNNL_ARG_TO, user_weights}}, scratch,
              plan->scratch_bytes);
    }
  }
  return ffi::Error::Success();
}

ffi::Error Checked(char op, Span x, Span w, Span y, Span strides, Span padding, Span dilation,
                   int64_t threads, void* src, void* weights, void* dst) {
  if (strides.size() != 2 || padding.size() != 4 || dilation.size() != 2 || threads < 1) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn conv: strides and dilation need 2 values, padding 4, threads >= 1");
  }
  try {
    return Run(op, Geometry(x, w, y, strides, padding, dilation), static_cast<int>(threads), src,
               weights, dst);
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error Forward(Array x, Array w, Result y, Span strides, Span padding, Span dilation,
                   int64_t threads) {
  return Checked('f', x.dimensions(), w.dimensions(), y->dimensions(), strides, padding, dilation,
                 threads, x.typed_data(), w.typed_data(), y->typed_data());
}

// The input gradient dx from the output gradient dy (oneDNN's diff_src from diff_dst).
ffi::Error BackwardData(Array dy, Array w, Result dx, Span strides, Span padding, Span dilation,
                        int64_t threads) {
  return Checked('d', dx->dimensions(), w.dimensions(), dy.dimensions(), strides, padding, dilation,
                 threads, dx->typed_data(), w.typed_data(), dy.typed_data());
}

// The kernel gradient dw from the input x and the output gradient dy.
ffi::Error BackwardWeights(Array x, Array dy, Result dw, Span strides, Span padding,
                           Span dilation, int64_t threads) {
  return Checked('w', x.dimensions(), dw->dimensions(), dy.dimensions(), strides, padding, dilation,
                 threads, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

#define CONV_HANDLER(symbol, impl)                           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                \
                                ffi::Ffi::Bind()             \
                                    .Arg<Array>()            \
                                    .Arg<Array>()            \
                                    .Ret<Array>()            \
                                    .Attr<Span>("strides")   \
                                    .Attr<Span>("padding")   \
                                    .Attr<Span>("dilation")  \
                                    .Attr<int64_t>("threads"));

CONV_HANDLER(JaxmodelsOnednnConvForward, Forward)
CONV_HANDLER(JaxmodelsOnednnConvBackwardData, BackwardData)
CONV_HANDLER(JaxmodelsOnednnConvBackwardWeights, BackwardWeights)
