// Token dispatchers: the only part of a MoE layer that moves tokens (and, for expert
// parallelism, the only part that communicates).
//
// dispatch() takes each token's top-k expert choices and returns the token rows grouped by
// local expert, plus an immutable handle; combine() consumes the handle to bring the expert
// outputs back to token order, weighted by the gate probabilities and summed over k. The
// backward of dispatch is a combine and vice versa (autograd through index ops, or the
// all-to-all autograd functions in parallel/).
//
// Shape legend: T tokens, D hidden, K top-k, N rows after dispatch (this rank's experts).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

namespace condensa::model {

struct DispatchHandle {
  virtual ~DispatchHandle() = default;
};

struct Dispatched {
  torch::Tensor x_ND;                    // rows grouped by local expert, experts in order
  std::vector<int64_t> rows_per_expert;  // per local expert, on the host (empty: not read)
  torch::Tensor rows_per_expert_E;       // the same counts on x_ND's device (int64)
  std::shared_ptr<const DispatchHandle> handle;
};

// What a MoE layer tells its dispatcher at construction.
struct DispatchOptions {
  // Assignments may be dropped (-1, capacity routing); dropless routing skips the compaction,
  // whose output size is data-dependent (a device-to-host sync).
  bool may_drop = true;
  // The experts read rows_per_expert on the host (the per-expert loop). The grouped GEMM reads
  // the device counts only, so a local dispatch then runs without any host sync.
  bool host_counts = true;
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // Experts this rank computes: global indices [first_local_expert, +num_local_experts).
  virtual int64_t num_local_experts() const = 0;
  virtual int64_t first_local_expert() const = 0;
  // Node of every global expert, for node-limited routing (empty: all experts on one node).
  virtual std::vector<int64_t> node_of_expert() const { return {}; }
  // topk_idx [T, K] holds global expert indices, -1 for a dropped assignment.
  virtual Dispatched dispatch(const torch::Tensor& x_TD,
                              const torch::Tensor& topk_idx_TK,
                              const torch::Tensor& probs_TK) = 0;
  // y_ND rows in the order dispatch produced -> [T, D] = sum_k probs * expert output.
  virtual torch::Tensor combine(const torch::Tensor& y_ND, const DispatchHandle& handle) = 0;

  DispatchOptions options;
};

// The dispatcher of MoE layer `layer` (a model is built with one factory).
using DispatcherFactory = std::function<std::shared_ptr<TokenDispatcher>(int64_t layer)>;

// Single-process dispatcher: every expert is local.
class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  int64_t num_local_experts() const override { return num_experts_; }
  int64_t first_local_expert() const override { return 0; }
  Dispatched dispatch(const torch::Tensor& x_TD,
                      const torch::Tensor& topk_idx_TK,
                      const torch::Tensor& probs_TK) override;
  torch::Tensor combine(const torch::Tensor& y_ND, const DispatchHandle& handle) override;

 private:
  int64_t num_experts_;
};

// Helpers shared by dispatchers: sort the (token, k) assignments by expert.
struct PermutationPlan {
  torch::Tensor token_of_row;   // [N] int64: source token of each dispatched row
  torch::Tensor prob_of_row;    // [N] fp32 gate weight of each row (differentiable)
  torch::Tensor expert_of_row;  // [N] int64 global expert of each row
  int64_t num_tokens = 0;
};
// may_drop = false promises that topk_idx has no -1 (no compaction, no host sync).
PermutationPlan plan_permutation(const torch::Tensor& topk_idx_TK,
                                 const torch::Tensor& probs_TK,
                                 bool may_drop = true);
// Rows per expert [num_experts] on the device, without a host sync (unlike bincount).
torch::Tensor count_rows(const torch::Tensor& expert_of_row, int64_t first, int64_t num_experts);
// sum over rows of y * prob into their tokens: [N, D] -> [T, D]. CPU fp32/fp64 y goes through
// fused_weighted_combine (cpu_fused.h); everything else through the reference below.
torch::Tensor unpermute_weighted(const torch::Tensor& y_ND,
                                 const torch::Tensor& token_of_row,
                                 const torch::Tensor& prob_of_row,
                                 int64_t num_tokens);
// The ATen composition: y * prob, then index_add into zeros.
torch::Tensor unpermute_weighted_reference(const torch::Tensor& y_ND,
                                           const torch::Tensor& token_of_row,
                                           const torch::Tensor& prob_of_row,
                                           int64_t num_tokens);

}  // namespace condensa::model
