// AdamW over parameter groups, replicated (ZeRO-0) or sharded over data parallel (ZeRO-1).
//
// Each group's parameters are one flat fp32 buffer laid out by a parallel::ShardPlan (name
// order, padded to a multiple of the group communicator's size). After backward, gradients are
// summed over the group's communicator (dense parameters: data parallel; expert parameters:
// the expert-data-parallel replicas) and scaled, so that the update equals the single-process
// update on the same global batch. ZeRO-0 all-reduces the flat gradient and every rank updates
// every element; ZeRO-1 reduce-scatters it, each rank updates its contiguous shard (and keeps
// AdamW state for that shard only), then all-gathers the parameters. Both walk the plan's
// overlaps of each parameter with the owned range and call the same element-wise adamw_update,
// so the two agree up to reduction order. The collectives are parallel/grad_sync.h.
//
// The parameters and their gradients are views of the group's flat buffers (bound at
// construction), so nothing is copied per step; the update runs as one fused AdamW kernel
// per (group, weight decay) list (optim.fused), or as the element-wise reference.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "trainer/config/config.h"
#include "trainer/optim/adamw.h"

namespace condensa::trainer {

struct NamedParam {
  std::string name;
  torch::Tensor param;
};

struct ParamGroupSpec {
  std::string name;  // "dense" or "expert", for messages
  std::vector<NamedParam> params;
  parallel::Communicator* reduce_comm = nullptr;  // gradients summed (and ZeRO sharded) here
  parallel::Communicator* norm_comm = nullptr;    // extra sum of the norm (experts: over ep)
  double grad_scale = 1.0;                        // applied after the sum (1 / dp)
  // Pipeline parallelism: a parameter held by two stages (the embedding on the first and last
  // stage, every stage under dualpipe) has identical gradients on both; only one copy counts in
  // the global norm (weight 1, the other 0) and only one saves its optimizer state.
  double norm_weight = 1.0;
  bool save_state = true;
};

// A range of one parameter's optimizer state owned by this rank (flattened element offsets).
struct StatePiece {
  std::string param;
  std::string kind;  // "exp_avg" or "exp_avg_sq"
  int64_t start = 0, end = 0;
  torch::Tensor data;  // 1-D, end - start elements
};

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroupSpec> groups, const OptimConfig& cfg, int zero_stage);

  // Zeroes every gradient before a step's first backward. Gradients are views of the
  // optimizer's flat buffer: use this, not the module's zero_grad (which would drop the views).
  void zero_grad();
  // After backward: sum and scale the gradients of every group.
  void reduce_gradients();
  // Global gradient L2 norm (before clipping); scales gradients when it exceeds max_norm > 0.
  double clip_grad_norm(double max_norm);
  // Pipeline parallelism: the squared norm is also summed over `stages` (each stage holds
  // different parameters), so that every stage clips by the norm of the whole model.
  void set_norm_across_stages(parallel::Communicator* stages) { stages_ = stages; }
  // AdamW update with this learning rate; parameters are identical on all ranks afterwards.
  void step(double lr);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t s) { step_count_ = s; }
  int zero_stage() const { return zero_stage_; }

  // The optimizer state this rank owns and must save.
  std::vector<StatePiece> owned_state() const;
  // Loads state: `full(param, kind)` returns the whole flattened state of a local parameter.
  void load_state(const std::function<torch::Tensor(const std::string&, const std::string&)>& full);

 private:
  struct Group {
    ParamGroupSpec spec;
    parallel::ShardPlan plan;
    std::vector<bool> decay;            // per parameter
    torch::Tensor grad_shard;           // [plan.owned().size()] reduced gradient
    torch::Tensor exp_avg, exp_avg_sq;  // state for plan.owned()
    // [plan.padded()]: the parameters and gradients are views of these (undefined when the
    // parameters are not fp32 on the group's device; then they are copied in and out).
    torch::Tensor params_flat, grads_flat;
  };
  void bind_flat_buffers(Group& g, const torch::TensorOptions& opts);
  torch::Tensor flat_grads(Group& g);
  torch::Tensor flat_params(const Group& g) const;

  std::vector<Group> groups_;
  AdamWHyper decay_, no_decay_;
  int zero_stage_;
  bool fused_;
  parallel::Communicator* stages_ = nullptr;
  int64_t step_count_ = 0;
};

}  // namespace condensa::trainer
