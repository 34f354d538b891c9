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

bool uses_weight_decay(const torch::Tensor& param) { return param.dim() >= 2; }

}  // namespace condensa::trainer
