#include "trainer/optim/adamw.h"

#include <cmath>

namespace condensa::trainer {

void adamw_update(torch::Tensor p,
                  const torch::Tensor& g,
                  torch::Tensor m,
                  torch::Tensor v,
                  double lr,
                  int64_t step,
                  const AdamWHyper& h) {
  torch::NoGradGuard no_grad;
  if (h.weight_decay > 0) p.mul_(1.0 - lr * h.weight_decay);
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  auto denom = (v / bc2).sqrt_().add_(h.eps);
  p.addcdiv_(m, denom, -lr / bc1);
}

void adamw_update_fused(const AdamWPieces& pieces, double lr, int64_t step, const AdamWHyper& h) {
  torch::NoGradGuard no_grad;
  if (pieces.params.empty()) return;
  // The kernel reads each piece's step count from a float tensor on the pieces' device.
  std::vector<torch::Tensor> steps(
      pieces.params.size(),
      torch::full({}, static_cast<double>(step),
                  torch::TensorOptions().dtype(torch::kFloat32).device(pieces.params[0].device())));
  at::_fused_adamw_(pieces.params, pieces.grads, pieces.exp_avgs, pieces.exp_avg_sqs,
                    /*max_exp_avg_sqs=*/{}, steps, lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                    /*amsgrad=*/false, /*maximize=*/false);
}

bool uses_weight_decay(const torch::Tensor& param) { return param.dim() >= 2; }

}  // namespace condensa::trainer
