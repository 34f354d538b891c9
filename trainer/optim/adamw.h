// The AdamW update, element-wise on any slice of a parameter.
//
// Key design choice: the update is one free function on (parameter, gradient, state) views, so
// the replicated (ZeRO-0) and sharded (ZeRO-1) optimizers run the very same arithmetic on
// whatever piece of a parameter a rank owns. Weight decay is decoupled (p *= 1 - lr * wd before
// the Adam step) and is not applied to 1-D tensors (norm scales, biases): uses_weight_decay().
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace condensa::trainer {

struct AdamWHyper {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

// One in-place AdamW update with bias correction; `step` is 1-based:
//   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^step) * m / (sqrt(v / (1 - b2^step)) + eps)
void adamw_update(torch::Tensor p,
                  const torch::Tensor& g,
                  torch::Tensor m,
                  torch::Tensor v,
                  double lr,
                  int64_t step,
                  const AdamWHyper& h);

// Lists of same-length views (parameter, gradient, first and second moment) updated together.
struct AdamWPieces {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
};

// The same update as adamw_update on every piece, as one fused kernel (at::_fused_adamw_: one
// pass over each piece on the CPU, multi-tensor launches on CUDA). Same numerics up to rounding.
void adamw_update_fused(const AdamWPieces& pieces, double lr, int64_t step, const AdamWHyper& h);

// Whether a parameter gets weight decay: matrices and stacked weights (dim >= 2) do; vectors
// and scalars do not.
bool uses_weight_decay(const torch::Tensor& param);

}  // namespace condensa::trainer
