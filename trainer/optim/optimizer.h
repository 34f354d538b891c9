// AdamW over parameter groups, replicated (ZeRO-0) or sharded over data parallel (ZeRO-1),
// and the learning-rate schedule.
//
// Each group's parameters are viewed as one flat fp32 buffer (name order, padded to a multiple
// of the group communicator's size). After backward, gradients are summed over the group's
// communicator (dense parameters: data parallel; expert parameters: the expert-data-parallel
// replicas) and scaled, so that the update equals the single-process update on the same
// global batch. ZeRO-0 all-reduces the flat gradient and every rank updates every element;
// ZeRO-1 reduce-scatters it, each rank updates its contiguous shard (and keeps AdamW state
// for that shard only), then all-gathers the parameters. The element-wise update is the same
// function in both cases, so the two agree up to reduction order. No weight decay on 1-D
// tensors (norms, biases).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "trainer/config/config.h"

namespace condensa::trainer {

struct AdamWHyper {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

// One in-place AdamW update (decoupled weight decay); `step` is 1-based.
void adamw_update(torch::Tensor p,
                  const torch::Tensor& g,
                  torch::Tensor m,
                  torch::Tensor v,
                  double lr,
                  int64_t step,
                  const AdamWHyper& h);

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

  // After backward: sum and scale the gradients of every group.
  void reduce_gradients();
  // Global gradient L2 norm (before clipping); scales gradients when it exceeds max_norm > 0.
  double clip_grad_norm(double max_norm);
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
    std::vector<int64_t> offset, numel;  // per parameter in the flat buffer
    std::vector<bool> decay;
    int64_t total = 0, padded = 0, shard_begin = 0, shard_end = 0;
    torch::Tensor grad_shard;           // [shard_end - shard_begin] reduced gradient
    torch::Tensor exp_avg, exp_avg_sq;  // state for [shard_begin, shard_end)
  };
  torch::Tensor flat_grads(const Group& g) const;
  torch::Tensor flat_params(const Group& g) const;

  std::vector<Group> groups_;
  AdamWHyper decay_, no_decay_;
  int zero_stage_;
  int64_t step_count_ = 0;
};

// Learning rate at 1-based `step`: linear warm-up to lr, then cosine (or linear) decay to
// min_lr at `total_steps`, or constant.
double lr_at(const OptimConfig& optim, int64_t total_steps, int64_t step);

}  // namespace condensa::trainer
