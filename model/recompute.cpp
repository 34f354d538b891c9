#include "model/recompute.h"

#include "model/autocast.h"

namespace condensa::model {
namespace {

// The function and the autocast state it ran under: backward re-runs it under the same state
// (the trainer leaves autocast before calling backward).
struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(TensorFn f) : fn(std::move(f)), autocast(AutocastState::current()) {}
  TensorFn fn;
  AutocastState autocast;
};

class RecomputeFunction : public torch::autograd::Function<RecomputeFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& x,
                               c10::intrusive_ptr<FnHolder> holder) {
    ctx->save_for_backward({x});
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    torch::NoGradGuard no_grad;
    return holder->fn(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      AutocastScope autocast(holder->autocast);
      y = holder->fn(x);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor recompute(TensorFn fn, const torch::Tensor& x) {
  if (!torch::GradMode::is_enabled()) return fn(x);
  return RecomputeFunction::apply(x, c10::make_intrusive<FnHolder>(std::move(fn)));
}

}  // namespace condensa::model
