// One direction of one LSTM layer over a whole sequence through oneDNN (forward for training or
// inference, and backward), as XLA FFI handlers. float32, time-major, read left to right.
//
// Shapes: x [T, B, F]; initial h0 and c0 [B, H]; w_x [F, 4H], w_h [H, 4H], b [4H]. Forward returns
// every step's h as y [T, B, H], the final h and c [B, H] and the workspace that backward reads
// (bytes, JaxmodelsOnednnLstmWorkspaceBytes says how many); inference returns the same but the
// workspace. Backward takes the forward's inputs, outputs and workspace with the gradients of y,
// h and c, and returns the gradients of x, h0, c0, w_x, w_h and b.
//
// The arrays are already in oneDNN's conventions; jaxmodels/kernels/lstm.py converts ours:
//   - gate blocks i, f, c~, o (c~ is our g; our blocks are i, f, o, g);
//   - weights ldigo, [layers, directions, input, gates, output] = [1, 1, F, 4, H], which in
//     memory is a plain [F, 4H] matrix of those gate blocks;
//   - one bias [4H] (ldgo); ours is the same single bias, the flax cell's recurrent biases.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using jaxmodels_onednn::Engine;
using jaxmodels_onednn::Execute;
using jaxmodels_onednn::scratchpad;
using jaxmodels_onednn::staged_weights;
using jaxmodels_onednn::UserScratchpad;

namespace {

using Seq = ffi::Buffer<ffi::F32, 3>;
using State = ffi::Buffer<ffi::F32, 2>;
using Matrix = ffi::Buffer<ffi::F32, 2>;
using Vector = ffi::Buffer<ffi::F32, 1>;
using Bytes = ffi::Buffer<ffi::U8, 1>;
using SeqOut = ffi::ResultBuffer<ffi::F32, 3>;
using StateOut = ffi::ResultBuffer<ffi::F32, 2>;
using MatrixOut = ffi::ResultBuffer<ffi::F32, 2>;
using VectorOut = ffi::ResultBuffer<ffi::F32, 1>;
using BytesOut = ffi::ResultBuffer<ffi::U8, 1>;

constexpr int64_t kGates = 4;

size_t Round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

struct Shape {
  int64_t steps, batch, input, hidden;

  std::string Key(char op, int threads) const {
    return std::string(1, op) + "," + std::to_string(steps) + "," + std::to_string(batch) + "," +
           std::to_string(input) + "," + std::to_string(hidden) + ",threads=" +
           std::to_string(threads);
  }

  // Our arrays' shapes.
  std::vector<int64_t> InputDims() const { return {steps, batch, input}; }
  std::vector<int64_t> OutputDims() const { return {steps, batch, hidden}; }
  std::vector<int64_t> StateDims() const { return {batch, hidden}; }
  std::vector<int64_t> InputWeightDims() const { return {input, kGates * hidden}; }
  std::vector<int64_t> HiddenWeightDims() const { return {hidden, kGates * hidden}; }
  std::vector<int64_t> BiasDims() const { return {kGates * hidden}; }

  // oneDNN's views of them.
  memory::desc Plain(const memory::dims& dims, Tag tag) const {
    return memory::desc(dims, memory::data_type::f32, tag);
  }
  memory::desc InputDesc() const { return Plain({steps, batch, input}, Tag::tnc); }
  memory::desc OutputDesc() const { return Plain({steps, batch, hidden}, Tag::tnc); }
  memory::desc StateDesc() const { return Plain({1, 1, batch, hidden}, Tag::ldnc); }
  memory::desc BiasDesc() const { return Plain({1, 1, kGates, hidden}, Tag::ldgo); }
  memory::desc InputWeightsDesc(Tag tag) const { return Plain({1, 1, input, kGates, hidden}, tag); }
  memory::desc HiddenWeightsDesc(Tag tag) const { return Plain({1, 1, hidden, kGates, hidden}, tag); }
};

// Weights as 'any': oneDNN picks its own layout (ldigo with padded rows for forward, ldgoi for
// backward) and we reorder ours into it on each call. Forward plus backward ran 1.2x as fast
// (median of 6 paired rounds, one thread, T=128, B=32, F=H=512) as with oneDNN reading plain
// ldigo and ldgoi; the weights are small next to the activations and the workspace.
dnnl::lstm_forward::primitive_desc ForwardDesc(
    const Shape& s, dnnl::prop_kind prop = dnnl::prop_kind::forward_training) {
  return dnnl::lstm_forward::primitive_desc(
      Engine(), prop,
      dnnl::rnn_direction::unidirectional_left2right, s.InputDesc(), s.StateDesc(), s.StateDesc(),
      s.InputWeightsDesc(Tag::any), s.HiddenWeightsDesc(Tag::any), s.BiasDesc(), s.OutputDesc(), s.StateDesc(),
      s.StateDesc(), UserScratchpad());
}

// One weight tensor in our layout and in the primitive's, and the reorder between them (ours to
// its when the primitive reads it, its to ours when it writes it), absent when the two agree.
struct Weights {
  memory::desc ours, own;
  dnnl::primitive reorder;
  bool reordered = false;
};

struct Plan {
  dnnl::primitive lstm;
  // Forward: w_x, w_h (read). Backward: w_x, w_h (read), then dw_x, dw_h (written).
  std::vector<Weights> weights;
  size_t scratch_bytes = 0, staging_bytes = 0, workspace_bytes = 0;

  void Add(const memory::desc& ours, const memory::desc& own, bool read) {
    Weights w{ours, own};
    if (own != ours) {
      dnnl::reorder::primitive_desc pd(Engine(), read ? ours : own, Engine(), read ? own : ours,
                                       UserScratchpad());
      w.reorder = dnnl::reorder(pd);
      w.reordered = true;
      scratch_bytes = std::max(scratch_bytes, pd.scratchpad_desc().get_size());
      staging_bytes += Round64(own.get_size());
    }
    weights.push_back(w);
  }
};

std::shared_ptr<Plan> MakePlan(char op, const Shape& s) {
  auto plan = std::make_shared<Plan>();
  memory::desc w_x = s.InputWeightsDesc(Tag::ldigo), w_h = s.HiddenWeightsDesc(Tag::ldigo);
  if (op == 'i') {
    auto inference = ForwardDesc(s, dnnl::prop_kind::forward_inference);
    plan->lstm = dnnl::lstm_forward(inference);
    plan->scratch_bytes = inference.scratchpad_desc().get_size();
    plan->Add(w_x, inference.weights_layer_desc(), true);
    plan->Add(w_h, inference.weights_iter_desc(), true);
    return plan;
  }
  auto fwd = ForwardDesc(s);
  plan->workspace_bytes = fwd.workspace_desc().get_size();
  if (op == 'f') {
    plan->lstm = dnnl::lstm_forward(fwd);
    plan->scratch_bytes = fwd.scratchpad_desc().get_size();
    plan->Add(w_x, fwd.weights_layer_desc(), true);
    plan->Add(w_h, fwd.weights_iter_desc(), true);
    return plan;
  }
  memory::desc x = s.InputDesc(), y = s.OutputDesc(), h = s.StateDesc(), b = s.BiasDesc();
  dnnl::lstm_backward::primitive_desc bwd(
      Engine(), dnnl::prop_kind::backward, dnnl::rnn_direction::unidirectional_left2right, x, h,
      h, s.InputWeightsDesc(Tag::any), s.HiddenWeightsDesc(Tag::any), b, y, h, h, x, h, h,
      s.InputWeightsDesc(Tag::any), s.HiddenWeightsDesc(Tag::any), b, y, h, h, fwd, UserScratchpad());
  plan->lstm = dnnl::lstm_backward(bwd);
  plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  plan->Add(w_x, bwd.weights_layer_desc(), true);
  plan->Add(w_h, bwd.weights_iter_desc(), true);
  plan->Add(w_x, bwd.diff_weights_layer_desc(), false);
  plan->Add(w_h, bwd.diff_weights_iter_desc(), false);
  return plan;
}

// Each shape's plan is made once per thread count, as conv.cc does and for the same reason
// (common.h: the `threads` attribute).
std::shared_ptr<Plan> GetPlan(char op, const Shape& s, int threads) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[s.Key(op, threads)];
  if (!plan) plan = MakePlan(op, s);
  return plan;
}

memory Bind(const memory::desc& desc, const void* data) {
  return memory(desc, Engine(), const_cast<void*>(data));
}

memory::desc WorkspaceDesc(const Plan& plan) {
  return memory::desc({static_cast<int64_t>(plan.workspace_bytes)}, memory::data_type::u8, Tag::x);
}

// Binds our weight buffers to a plan's weights in the primitive's layout, reordering through
// pieces of this thread's staging buffer where the layouts differ.
class Staging {
 public:
  Staging(const Plan& plan, void* scratch)
      : plan_(plan),
        scratch_(scratch),
        next_(static_cast<char*>(staged_weights.Get(plan.staging_bytes))) {}

  // Weights the primitive reads: ours, or ours reordered into its layout.
  memory Read(const Weights& w, const void* data) {
    memory mine(w.ours, Engine(), const_cast<void*>(data));
    if (!w.reordered) return mine;
    memory own = Next(w);
    Execute(w.reorder, {{DNNL_ARG_FROM, mine}, {DNNL_ARG_TO, own}}, scratch_, plan_.scratch_bytes);
    return own;
  }

  // Weight gradients the primitive writes, zeroed: oneDNN adds to diff weights. `Finish` moves
  // them to our buffers afterwards.
  memory Write(const Weights& w, void* data) {
    memory own = w.reordered ? Next(w) : memory(w.ours, Engine(), data);
    std::memset(own.get_data_handle(), 0, w.own.get_size());
    if (w.reordered) pending_.push_back({&w, own, memory(w.ours, Engine(), data)});
    return own;
  }

  void Finish() {
    for (auto& [w, own, mine] : pending_) {
      Execute(w->reorder, {{DNNL_ARG_FROM, own}, {DNNL_ARG_TO, mine}}, scratch_,
              plan_.scratch_bytes);
    }
  }

 private:
  memory Next(const Weights& w) {
    memory m(w.own, Engine(), next_);
    next_ += Round64(w.own.get_size());
    return m;
  }

  struct Pending {
    const Weights* w;
    memory own, mine;
  };
  const Plan& plan_;
  void* scratch_;
  char* next_;
  std::vector<Pending> pending_;
};

using Dims = ffi::Span<const int64_t>;

ffi::Error Invalid(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn lstm: " + message);
}

std::string Text(Dims dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// The shape of x [T, B, F] and h0 [B, H] (an error unless all are positive, and `threads` too).
ffi::Error ShapeOf(Dims x, Dims h0, int64_t threads, Shape& s) {
  if (threads < 1) return Invalid("threads is " + std::to_string(threads) + ", want >= 1");
  s = {x[0], x[1], x[2], h0[1]};
  if (s.steps < 1 || s.batch < 1 || s.input < 1 || s.hidden < 1 || h0[0] != s.batch) {
    return Invalid("x " + Text(x) + " and h0 " + Text(h0) + " need [T, B, F] and [B, H], all >= 1");
  }
  return ffi::Error::Success();
}

struct Expected {
  const char* name;
  Dims got;
  std::vector<int64_t> want;
};

ffi::Error CheckDims(std::initializer_list<Expected> buffers) {
  for (const auto& b : buffers) {
    if (!(b.got == Dims(b.want))) {
      return Invalid(std::string(b.name) + " is " + Text(b.got) + ", want " + Text(b.want));
    }
  }
  return ffi::Error::Success();
}

ffi::Error Checked(const std::function<ffi::Error()>& run) {
  try {
    return run();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN LSTM: ") + e.what());
  }
}

ffi::Error WorkspaceMismatch(size_t got, size_t want) {
  return Invalid("workspace of " + std::to_string(got) + " bytes, the primitive needs " +
                 std::to_string(want));
}

// Forward for training ('f': writes `workspace`) or inference ('i': `workspace` is null).
ffi::Error RunForward(char op, Seq x, State h0, State c0, Matrix w_x, Matrix w_h, Vector b,
                      SeqOut y, StateOut h_n, StateOut c_n, void* workspace,
                      size_t workspace_bytes, int64_t threads) {
  Shape s;
  if (auto e = ShapeOf(x.dimensions(), h0.dimensions(), threads, s); e.failure()) return e;
  if (auto e = CheckDims({{"c0", c0.dimensions(), s.StateDims()},
                          {"w_x", w_x.dimensions(), s.InputWeightDims()},
                          {"w_h", w_h.dimensions(), s.HiddenWeightDims()},
                          {"b", b.dimensions(), s.BiasDims()},
                          {"y", y->dimensions(), s.OutputDims()},
                          {"h_n", h_n->dimensions(), s.StateDims()},
                          {"c_n", c_n->dimensions(), s.StateDims()}});
      e.failure()) {
    return e;
  }
  return Checked([&] {
    omp_set_num_threads(threads);  // before the plan: it is made for, and runs under, this count
    auto plan = GetPlan(op, s, threads);
    if (workspace_bytes != plan->workspace_bytes) {
      return WorkspaceMismatch(workspace_bytes, plan->workspace_bytes);
    }
    void* scratch = scratchpad.Get(plan->scratch_bytes);
    Staging staging(*plan, scratch);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, Bind(s.InputDesc(), x.untyped_data())},
        {DNNL_ARG_SRC_ITER, Bind(s.StateDesc(), h0.untyped_data())},
        {DNNL_ARG_SRC_ITER_C, Bind(s.StateDesc(), c0.untyped_data())},
        {DNNL_ARG_WEIGHTS_LAYER, staging.Read(plan->weights[0], w_x.untyped_data())},
        {DNNL_ARG_WEIGHTS_ITER, staging.Read(plan->weights[1], w_h.untyped_data())},
        {DNNL_ARG_BIAS, Bind(s.BiasDesc(), b.untyped_data())},
        {DNNL_ARG_DST_LAYER, Bind(s.OutputDesc(), y->untyped_data())},
        {DNNL_ARG_DST_ITER, Bind(s.StateDesc(), h_n->untyped_data())},
        {DNNL_ARG_DST_ITER_C, Bind(s.StateDesc(), c_n->untyped_data())}};
    if (workspace) args.emplace(DNNL_ARG_WORKSPACE, Bind(WorkspaceDesc(*plan), workspace));
    Execute(plan->lstm, args, scratch, plan->scratch_bytes);
    return ffi::Error::Success();
  });
}

ffi::Error Forward(Seq x, State h0, State c0, Matrix w_x, Matrix w_h, Vector b, SeqOut y,
                   StateOut h_n, StateOut c_n, BytesOut workspace, int64_t threads) {
  return RunForward('f', x, h0, c0, w_x, w_h, b, y, h_n, c_n, workspace->untyped_data(),
                    workspace->size_bytes(), threads);
}

ffi::Error Inference(Seq x, State h0, State c0, Matrix w_x, Matrix w_h, Vector b, SeqOut y,
                     StateOut h_n, StateOut c_n, int64_t threads) {
  return RunForward('i', x, h0, c0, w_x, w_h, b, y, h_n, c_n, nullptr, 0, threads);
}

ffi::Error Backward(Seq x, State h0, State c0, Matrix w_x, Matrix w_h, Vector b, Seq y,
                    State h_n, State c_n, Bytes workspace, Seq dy, State dh_n, State dc_n,
                    SeqOut dx, StateOut dh0, StateOut dc0, MatrixOut dw_x, MatrixOut dw_h,
                    VectorOut db, int64_t threads) {
  Shape s;
  if (auto e = ShapeOf(x.dimensions(), h0.dimensions(), threads, s); e.failure()) return e;
  if (auto e = CheckDims({{"c0", c0.dimensions(), s.StateDims()},
                          {"w_x", w_x.dimensions(), s.InputWeightDims()},
                          {"w_h", w_h.dimensions(), s.HiddenWeightDims()},
                          {"b", b.dimensions(), s.BiasDims()},
                          {"y", y.dimensions(), s.OutputDims()},
                          {"h_n", h_n.dimensions(), s.StateDims()},
                          {"c_n", c_n.dimensions(), s.StateDims()},
                          {"dy", dy.dimensions(), s.OutputDims()},
                          {"dh_n", dh_n.dimensions(), s.StateDims()},
                          {"dc_n", dc_n.dimensions(), s.StateDims()},
                          {"dx", dx->dimensions(), s.InputDims()},
                          {"dh0", dh0->dimensions(), s.StateDims()},
                          {"dc0", dc0->dimensions(), s.StateDims()},
                          {"dw_x", dw_x->dimensions(), s.InputWeightDims()},
                          {"dw_h", dw_h->dimensions(), s.HiddenWeightDims()},
                          {"db", db->dimensions(), s.BiasDims()}});
      e.failure()) {
    return e;
  }
  return Checked([&] {
    omp_set_num_threads(threads);
    auto plan = GetPlan('b', s, threads);
    if (workspace.size_bytes() != plan->workspace_bytes) {
      return WorkspaceMismatch(workspace.size_bytes(), plan->workspace_bytes);
    }
    void* scratch = scratchpad.Get(plan->scratch_bytes);
    Staging staging(*plan, scratch);
    std::memset(db->untyped_data(), 0, db->size_bytes());  // oneDNN adds to diff_bias too
    Execute(plan->lstm,
            {{DNNL_ARG_SRC_LAYER, Bind(s.InputDesc(), x.untyped_data())},
             {DNNL_ARG_SRC_ITER, Bind(s.StateDesc(), h0.untyped_data())},
             {DNNL_ARG_SRC_ITER_C, Bind(s.StateDesc(), c0.untyped_data())},
             {DNNL_ARG_WEIGHTS_LAYER, staging.Read(plan->weights[0], w_x.untyped_data())},
             {DNNL_ARG_WEIGHTS_ITER, staging.Read(plan->weights[1], w_h.untyped_data())},
             {DNNL_ARG_BIAS, Bind(s.BiasDesc(), b.untyped_data())},
             {DNNL_ARG_DST_LAYER, Bind(s.OutputDesc(), y.untyped_data())},
             {DNNL_ARG_DST_ITER, Bind(s.StateDesc(), h_n.untyped_data())},
             {DNNL_ARG_DST_ITER_C, Bind(s.StateDesc(), c_n.untyped_data())},
             {DNNL_ARG_WORKSPACE, Bind(WorkspaceDesc(*plan), workspace.untyped_data())},
             {DNNL_ARG_DIFF_DST_LAYER, Bind(s.OutputDesc(), dy.untyped_data())},
             {DNNL_ARG_DIFF_DST_ITER, Bind(s.StateDesc(), dh_n.untyped_data())},
             {DNNL_ARG_DIFF_DST_ITER_C, Bind(s.StateDesc(), dc_n.untyped_data())},
             {DNNL_ARG_DIFF_SRC_LAYER, Bind(s.InputDesc(), dx->untyped_data())},
             {DNNL_ARG_DIFF_SRC_ITER, Bind(s.StateDesc(), dh0->untyped_data())},
             {DNNL_ARG_DIFF_SRC_ITER_C, Bind(s.StateDesc(), dc0->untyped_data())},
             {DNNL_ARG_DIFF_WEIGHTS_LAYER, staging.Write(plan->weights[2], dw_x->untyped_data())},
             {DNNL_ARG_DIFF_WEIGHTS_ITER, staging.Write(plan->weights[3], dw_h->untyped_data())},
             {DNNL_ARG_DIFF_BIAS, Bind(s.BiasDesc(), db->untyped_data())}},
            scratch, plan->scratch_bytes);
    staging.Finish();
    return ffi::Error::Success();
  });
}

}  // namespace

// The workspace bytes forward writes for this shape, or -1 (with the reason on stderr) if oneDNN
// has no LSTM for it. jaxmodels/kernels/lstm.py sizes the workspace output with it (via ctypes).
extern "C" int64_t JaxmodelsOnednnLstmWorkspaceBytes(int64_t steps, int64_t batch, int64_t input,
                                                     int64_t hidden) {
  try {
    return static_cast<int64_t>(
        ForwardDesc(Shape{steps, batch, input, hidden}).workspace_desc().get_size());
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "oneDNN LSTM: %s\n", e.what());
    return -1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmodelsOnednnLstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<Seq>()     // x
                                  .Arg<State>()   // h0
                                  .Arg<State>()   // c0
                                  .Arg<Matrix>()  // w_x
                                  .Arg<Matrix>()  // w_h
                                  .Arg<Vector>()  // b
                                  .Ret<Seq>()     // y
                                  .Ret<State>()   // h_n
                                  .Ret<State>()   // c_n
                                  .Ret<Bytes>()  // workspace
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmodelsOnednnLstmInference, Inference,
                              ffi::Ffi::Bind()
                                  .Arg<Seq>()     // x
                                  .Arg<State>()   // h0
                                  .Arg<State>()   // c0
                                  .Arg<Matrix>()  // w_x
                                  .Arg<Matrix>()  // w_h
                                  .Arg<Vector>()  // b
                                  .Ret<Seq>()     // y
                                  .Ret<State>()   // h_n
                                  .Ret<State>()  // c_n
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmodelsOnednnLstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<Seq>()     // x
                                  .Arg<State>()   // h0
                                  .Arg<State>()   // c0
                                  .Arg<Matrix>()  // w_x
                                  .Arg<Matrix>()  // w_h
                                  .Arg<Vector>()  // b
                                  .Arg<Seq>()     // y
                                  .Arg<State>()   // h_n
                                  .Arg<State>()   // c_n
                                  .Arg<Bytes>()   // workspace
                                  .Arg<Seq>()     // dy
                                  .Arg<State>()   // dh_n
                                  .Arg<State>()   // dc_n
                                  .Ret<Seq>()     // dx
                                  .Ret<State>()   // dh0
                                  .Ret<State>()   // dc0
                                  .Ret<Matrix>()  // dw_x
                                  .Ret<Matrix>()  // dw_h
                                  .Ret<Vector>()  // db
                                  .Attr<int64_t>("threads"));
