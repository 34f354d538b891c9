#include "trainer/optim/optimizer.h"

#include <cmath>

#include "common/error.h"

namespace condensa::trainer {

namespace {
constexpr int64_t kBucketElements = int64_t(1) << 24;  // 64 MiB of fp32 gradients per all-reduce
}  // namespace

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

Optimizer::Optimizer(std::vector<ParamGroupSpec> specs, const OptimConfig& cfg, int zero_stage)
    : zero_stage_(zero_stage) {
  decay_ = {cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay};
  no_decay_ = {cfg.beta1, cfg.beta2, cfg.eps, 0.0};
  for (auto& spec : specs) {
    Group g;
    g.spec = std::move(spec);
    CONDENSA_CHECK(g.spec.reduce_comm != nullptr, Error, "optimizer group ", g.spec.name,
                   " has no communicator");
    for (auto& p : g.spec.params) {
      g.offset.push_back(g.total);
      g.numel.push_back(p.param.numel());
      g.decay.push_back(p.param.dim() >= 2);
      g.total += p.param.numel();
    }
    const int64_t n = g.spec.reduce_comm->size();
    g.padded = (g.total + n - 1) / n * n;
    if (zero_stage_ == 1) {
      const int64_t shard = g.padded / n;
      g.shard_begin = g.spec.reduce_comm->rank() * shard;
      g.shard_end = g.shard_begin + shard;
    } else {
      g.shard_begin = 0;
      g.shard_end = g.padded;
    }
    auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(g.spec.reduce_comm->device());
    g.exp_avg = torch::zeros({g.shard_end - g.shard_begin}, opts);
    g.exp_avg_sq = torch::zeros({g.shard_end - g.shard_begin}, opts);
    groups_.push_back(std::move(g));
  }
}

torch::Tensor Optimizer::flat_grads(const Group& g) const {
  std::vector<torch::Tensor> parts;
  for (auto& p : g.spec.params) {
    auto grad = p.param.grad();
    parts.push_back(grad.defined() ? grad.reshape({-1}).to(torch::kFloat32)
                                   : torch::zeros({p.param.numel()}, p.param.options()));
  }
  if (g.padded > g.total)
    parts.push_back(torch::zeros({g.padded - g.total},
                                 torch::TensorOptions().device(g.spec.reduce_comm->device())));
  return torch::cat(parts);
}

torch::Tensor Optimizer::flat_params(const Group& g) const {
  std::vector<torch::Tensor> parts;
  for (auto& p : g.spec.params) parts.push_back(p.param.detach().reshape({-1}));
  if (g.padded > g.total)
    parts.push_back(torch::zeros({g.padded - g.total},
                                 torch::TensorOptions().device(g.spec.reduce_comm->device())));
  return torch::cat(parts);
}

void Optimizer::reduce_gradients() {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    auto flat = flat_grads(g);
    auto& comm = *g.spec.reduce_comm;
    if (zero_stage_ == 1) {
      g.grad_shard = torch::empty({g.shard_end - g.shard_begin}, flat.options());
      comm.reduce_scatter(flat, g.grad_shard, parallel::ReduceOp::kSum);
    } else {
      // Bucketed: bounded message sizes (and memory of the reduction's temporaries).
      for (int64_t begin = 0; comm.size() > 1 && begin < g.padded; begin += kBucketElements) {
        auto bucket = flat.narrow(0, begin, std::min(kBucketElements, g.padded - begin));
        comm.all_reduce(bucket, parallel::ReduceOp::kSum);
      }
      g.grad_shard = flat;
    }
    if (g.spec.grad_scale != 1.0) g.grad_shard.mul_(g.spec.grad_scale);
  }
}

double Optimizer::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  double total_sq = 0.0;
  for (auto& g : groups_) {
    auto sq = g.grad_shard.to(torch::kFloat64).pow(2).sum().reshape({1});
    if (zero_stage_ == 1 && g.spec.reduce_comm->size() > 1) g.spec.reduce_comm->all_reduce(sq);
    if (g.spec.norm_comm && g.spec.norm_comm->size() > 1) g.spec.norm_comm->all_reduce(sq);
    total_sq += sq.item<double>();
  }
  const double norm = std::sqrt(total_sq);
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (auto& g : groups_) g.grad_shard.mul_(scale);
  }
  return norm;
}

void Optimizer::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_count_;
  for (auto& g : groups_) {
    auto flat = flat_params(g);
    auto shard = flat.narrow(0, g.shard_begin, g.shard_end - g.shard_begin);
    // Update each parameter's intersection with the shard.
    for (size_t i = 0; i < g.spec.params.size(); ++i) {
      const int64_t a = std::max(g.offset[i], g.shard_begin);
      const int64_t b = std::min(g.offset[i] + g.numel[i], g.shard_end);
      if (a >= b) continue;
      const int64_t s = a - g.shard_begin;
      adamw_update(shard.narrow(0, s, b - a), g.grad_shard.narrow(0, s, b - a),
                   g.exp_avg.narrow(0, s, b - a), g.exp_avg_sq.narrow(0, s, b - a), lr, step_count_,
                   g.decay[i] ? decay_ : no_decay_);
    }
    if (zero_stage_ == 1 && g.spec.reduce_comm->size() > 1) {
      auto shard_copy = shard.clone();
      g.spec.reduce_comm->all_gather(shard_copy, flat);
    }
    for (size_t i = 0; i < g.spec.params.size(); ++i) {
      auto& p = g.spec.params[i].param;
      p.detach().copy_(flat.narrow(0, g.offset[i], g.numel[i]).view_as(p));
    }
    g.grad_shard = torch::Tensor();
  }
}

std::vector<StatePiece> Optimizer::owned_state() const {
  std::vector<StatePiece> out;
  for (auto& g : groups_) {
    // ZeRO-0 state is replicated: rank 0 of the group saves it.
    if (zero_stage_ == 0 && g.spec.reduce_comm->rank() != 0) continue;
    for (size_t i = 0; i < g.spec.params.size(); ++i) {
      const int64_t a = std::max(g.offset[i], g.shard_begin);
      const int64_t b = std::min(g.offset[i] + g.numel[i], g.shard_end);
      if (a >= b) continue;
      const int64_t s = a - g.shard_begin;
      const auto& name = g.spec.params[i].name;
      out.push_back(
          {name, "exp_avg", a - g.offset[i], b - g.offset[i], g.exp_avg.narrow(0, s, b - a)});
      out.push_back(
          {name, "exp_avg_sq", a - g.offset[i], b - g.offset[i], g.exp_avg_sq.narrow(0, s, b - a)});
    }
  }
  return out;
}

void Optimizer::load_state(
    const std::function<torch::Tensor(const std::string&, const std::string&)>& full) {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    for (size_t i = 0; i < g.spec.params.size(); ++i) {
      const int64_t a = std::max(g.offset[i], g.shard_begin);
      const int64_t b = std::min(g.offset[i] + g.numel[i], g.shard_end);
      if (a >= b) continue;
      const int64_t s = a - g.shard_begin;
      const auto& name = g.spec.params[i].name;
      for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
        auto t = full(name, kind).reshape({-1});
        CONDENSA_CHECK(t.numel() == g.numel[i], CheckpointError, "optimizer state ", name, ".",
                       kind, " has ", t.numel(), " elements, the parameter has ", g.numel[i]);
        auto& dst = std::string(kind) == "exp_avg" ? g.exp_avg : g.exp_avg_sq;
        dst.narrow(0, s, b - a).copy_(t.narrow(0, a - g.offset[i], b - a));
      }
    }
  }
}

double lr_at(const OptimConfig& o, int64_t total_steps, int64_t step) {
  if (o.warmup_steps > 0 && step <= o.warmup_steps) {
    return o.lr * static_cast<double>(step) / static_cast<double>(o.warmup_steps);
  }
  if (o.schedule == "constant") return o.lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - o.warmup_steps);
  const double t =
      std::min(1.0, static_cast<double>(step - o.warmup_steps) / static_cast<double>(decay_steps));
  if (o.schedule == "linear") return o.lr + (o.min_lr - o.lr) * t;
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * t));
}

}  // namespace condensa::trainer
