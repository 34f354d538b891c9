// Layout-independent initialisation (see init.h). Which tensors are norms or experts is a name
// rule of model/param_names.h.
#include "model/init.h"

#include "common/hash.h"
#include "model/param_names.h"

namespace condensa::model {

void init_parameters(TransformerImpl& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  const double std = model.cfg.init_std;
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    auto& p = item.value();
    if (is_norm_weight(name)) {
      p.fill_(1.0);
      continue;
    }
    auto fill = [&](torch::Tensor target, uint64_t key) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(key);
      auto cpu = torch::empty(target.sizes(), torch::kFloat32);
      cpu.normal_(0.0, std, gen);
      target.copy_(cpu);
    };
    if (is_expert_param(name)) {
      // Stacked [E_local, ...]: slice e is global expert first_expert + e.
      const int64_t first = model.first_expert_of(p);
      for (int64_t e = 0; e < p.size(0); ++e) {
        fill(p[e], hash_combine(seed, hash_string(name), static_cast<uint64_t>(first + e)));
      }
    } else {
      fill(p, hash_combine(seed, hash_string(name)));
    }
  }
  for (auto& moe : model.moe_layers()) moe->gate->e_score_correction_bias.zero_();
}

void init_unit_parameters(torch::nn::Module& unit, double init_std, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& item : unit.named_parameters()) {
    auto& p = item.value();
    if (is_norm_weight(item.key())) {
      p.fill_(1.0);
    } else {
      auto cpu = torch::empty(p.sizes(), torch::kFloat32);
      cpu.normal_(0.0, init_std, gen);
      p.copy_(cpu);
    }
  }
  for (auto& item : unit.named_buffers()) {
    if (is_router_bias(item.key())) item.value().zero_();
  }
}

}  // namespace condensa::model
