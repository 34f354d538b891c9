// Activation recomputation: run `fn(x)` without keeping its intermediate activations, and run
// it again during backward to get the gradients (the reentrant scheme of
// torch.utils.checkpoint). Parameters used by `fn` receive their gradients by accumulation
// into `.grad` during that inner backward, exactly as a normal backward would accumulate them.
//
// NOTE: `fn` must be deterministic (no dropout, no data-dependent randomness), or the
// recomputed activations differ from the forward ones.
#pragma once

#include <torch/torch.h>

#include <functional>

namespace condensa::model {

using TensorFn = std::function<torch::Tensor(const torch::Tensor&)>;

// y = fn(x), activations inside fn recomputed in backward. Without grad mode it is just fn(x).
torch::Tensor recompute(TensorFn fn, const torch::Tensor& x);

}  // namespace condensa::model
