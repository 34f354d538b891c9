#include "trainer/optim/optimizer.h"

#include <cmath>

#include "common/error.h"

namespace condensa::trainer {

Optimizer::Optimizer(std::vector<ParamGroupSpec> specs, const OptimConfig& cfg, int zero_stage)
    : zero_stage_(zero_stage), fused_(cfg.fused) {
  decay_ = {cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay};
  no_decay_ = {cfg.beta1, cfg.beta2, cfg.eps, 0.0};
  for (auto& spec : specs) {
    CONDENSA_CHECK(spec.reduce_comm != nullptr, Error, "optimizer group ", spec.name,
                   " has no communicator");
    std::vector<int64_t> numels;
    std::vector<bool> decay;
    for (auto& p : spec.params) {
      numels.push_back(p.param.numel());
      decay.push_back(uses_weight_decay(p.param));
    }
    const auto& comm = *spec.reduce_comm;
    parallel::ShardPlan plan(std::move(numels), comm.size(), comm.rank(), zero_stage_ == 1);
    auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(comm.device());
    auto exp_avg = torch::zeros({plan.owned().size()}, opts);
    auto exp_avg_sq = torch::zeros({plan.owned().size()}, opts);
    Group g{std::move(spec), std::move(plan), std::move(decay)};
    g.exp_avg = exp_avg;
    g.exp_avg_sq = exp_avg_sq;
    bind_flat_buffers(g, opts);
    groups_.push_back(std::move(g));
  }
}

void Optimizer::bind_flat_buffers(Group& g, const torch::TensorOptions& opts) {
  // Parameters and gradients become views of one flat buffer each (padded by the plan), so the
  // reduction, the update and the gather work on them in place: no copy in or out per step.
  // Needs fp32 parameters on the group's device (the model keeps fp32 weights; autocast
  // computes in bf16).
  torch::NoGradGuard no_grad;
  for (auto& p : g.spec.params) {
    if (p.param.scalar_type() != torch::kFloat32 || p.param.device() != opts.device()) return;
  }
  g.params_flat = torch::zeros({g.plan.padded()}, opts);
  g.grads_flat = torch::zeros({g.plan.padded()}, opts);
  for (int64_t i = 0; i < g.plan.num_tensors(); ++i) {
    auto& p = g.spec.params[i].param;
    auto view = g.params_flat.narrow(0, g.plan.offset(i), g.plan.numel(i));
    view.copy_(p.detach().reshape({-1}));
    p.set_data(view.view(p.sizes()));
    auto grad_view = g.grads_flat.narrow(0, g.plan.offset(i), g.plan.numel(i));
    if (p.grad().defined())
      grad_view.copy_(p.grad().reshape({-1}));  // keep a gradient already there
    p.mutable_grad() = grad_view.view(p.sizes());
  }
}

void Optimizer::zero_grad() {
  for (auto& g : groups_) {
    if (g.grads_flat.defined()) {
      g.grads_flat.zero_();
    } else {
      for (auto& p : g.spec.params) p.param.mutable_grad() = torch::Tensor();
    }
  }
}

torch::Tensor Optimizer::flat_grads(Group& g) {
  if (g.grads_flat.defined()) {
    // Backward accumulated into the views. A gradient that was replaced since (assigned, or
    // set to None by a module's zero_grad) is copied back into its view, which is rebound.
    for (int64_t i = 0; i < g.plan.num_tensors(); ++i) {
      auto& p = g.spec.params[i].param;
      auto view = g.grads_flat.narrow(0, g.plan.offset(i), g.plan.numel(i));
      const auto& grad = p.grad();
      if (grad.defined() && grad.data_ptr() == view.data_ptr()) continue;
      if (grad.defined()) {
        view.copy_(grad.reshape({-1}));
      } else {
        view.zero_();
      }
      p.mutable_grad() = view.view(p.sizes());
    }
    return g.grads_flat;
  }
  std::vector<torch::Tensor> parts;
  for (auto& p : g.spec.params) {
    auto grad = p.param.grad();
    parts.push_back(grad.defined() ? grad.reshape({-1}).to(torch::kFloat32)
                                   : torch::zeros({p.param.numel()}, p.param.options()));
  }
  return parallel::flatten_padded(parts, g.plan, g.spec.reduce_comm->device());
}

torch::Tensor Optimizer::flat_params(const Group& g) const {
  if (g.params_flat.defined()) return g.params_flat;
  std::vector<torch::Tensor> parts;
  for (auto& p : g.spec.params) parts.push_back(p.param.detach().reshape({-1}));
  return parallel::flatten_padded(parts, g.plan, g.spec.reduce_comm->device());
}

void Optimizer::reduce_gradients() {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    g.grad_shard = parallel::reduce_gradients(flat_grads(g), g.plan, *g.spec.reduce_comm);
    if (g.spec.grad_scale != 1.0) g.grad_shard.mul_(g.spec.grad_scale);
  }
}

double Optimizer::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  torch::Tensor total = torch::zeros({1}, torch::kFloat64);
  for (auto& g : groups_) {
    // The norm in the gradient's dtype (cascade summation; no fp64 copy of every gradient),
    // squared and summed across groups and ranks in fp64.
    auto sq = torch::linalg_vector_norm(g.grad_shard, 2).to(torch::kFloat64).pow(2).reshape({1});
    parallel::sum_owned_partials(sq, g.plan, *g.spec.reduce_comm);
    if (g.spec.norm_comm && g.spec.norm_comm->size() > 1) g.spec.norm_comm->all_reduce(sq);
    if (g.spec.norm_weight != 1.0) sq.mul_(g.spec.norm_weight);
    total = total.to(sq.device()) + sq;
  }
  if (stages_ && stages_->size() > 1) {
    total = total.to(stages_->device()).contiguous();
    stages_->all_reduce(total);
  }
  const double norm = std::sqrt(total.item<double>());  // the norm's one host read
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
    auto shard = flat.narrow(0, g.plan.owned().begin, g.plan.owned().size());
    // The owned range split at parameter boundaries: decay and no-decay pieces.
    AdamWPieces pieces[2];
    for (const auto& o : g.plan.owned_overlaps()) {
      auto& dst = pieces[g.decay[o.tensor] ? 1 : 0];
      dst.params.push_back(shard.narrow(0, o.range_offset, o.size));
      dst.grads.push_back(g.grad_shard.narrow(0, o.range_offset, o.size));
      dst.exp_avgs.push_back(g.exp_avg.narrow(0, o.range_offset, o.size));
      dst.exp_avg_sqs.push_back(g.exp_avg_sq.narrow(0, o.range_offset, o.size));
    }
    for (int decay = 0; decay < 2; ++decay) {
      const auto& h = decay ? decay_ : no_decay_;
      if (fused_) {
        adamw_update_fused(pieces[decay], lr, step_count_, h);
      } else {
        for (size_t i = 0; i < pieces[decay].params.size(); ++i) {
          adamw_update(pieces[decay].params[i], pieces[decay].grads[i], pieces[decay].exp_avgs[i],
                       pieces[decay].exp_avg_sqs[i], lr, step_count_, h);
        }
      }
    }
    parallel::gather_shards(flat, g.plan, *g.spec.reduce_comm);
    if (!g.params_flat.defined()) {
      for (int64_t i = 0; i < g.plan.num_tensors(); ++i) {
        auto& p = g.spec.params[i].param;
        p.detach().copy_(flat.narrow(0, g.plan.offset(i), g.plan.numel(i)).view_as(p));
      }
    }
    g.grad_shard = torch::Tensor();
  }
}

std::vector<StatePiece> Optimizer::owned_state() const {
  std::vector<StatePiece> out;
  for (auto& g : groups_) {
    // ZeRO-0 state is replicated: rank 0 of the group saves it.
    if (zero_stage_ == 0 && g.spec.reduce_comm->rank() != 0) continue;
    if (!g.spec.save_state) continue;
    for (const auto& o : g.plan.owned_overlaps()) {
      const auto& name = g.spec.params[o.tensor].name;
      const int64_t start = o.tensor_offset, end = o.tensor_offset + o.size;
      out.push_back({name, "exp_avg", start, end, g.exp_avg.narrow(0, o.range_offset, o.size)});
      out.push_back(
          {name, "exp_avg_sq", start, end, g.exp_avg_sq.narrow(0, o.range_offset, o.size)});
    }
  }
  return out;
}

void Optimizer::load_state(
    const std::function<torch::Tensor(const std::string&, const std::string&)>& full) {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    for (const auto& o : g.plan.owned_overlaps()) {
      const auto& name = g.spec.params[o.tensor].name;
      const int64_t numel = g.plan.numel(o.tensor);
      for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
        auto t = full(name, kind).reshape({-1});
        CONDENSA_CHECK(t.numel() == numel, CheckpointError, "optimizer state ", name, ".", kind,
                       " has ", t.numel(), " elements, the parameter has ", numel);
        auto& dst = std::string(kind) == "exp_avg" ? g.exp_avg : g.exp_avg_sq;
        dst.narrow(0, o.range_offset, o.size).copy_(t.narrow(0, o.tensor_offset, o.size));
      }
    }
  }
}

}  // namespace condensa::trainer
