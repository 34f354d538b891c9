// Routed experts: this rank's slice of the experts of one MoE layer, as stacked SwiGLU weights
// (slice e is global expert first_expert + e).
//
// Shape legend: N rows grouped by local expert, D hidden, E local experts, F expert hidden.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace condensa::model {

struct GroupedExpertsImpl : torch::nn::Module {
  GroupedExpertsImpl(int64_t num_local_experts, int64_t first_expert, int64_t dim, int64_t inter);
  // x_ND rows grouped by local expert -> y_ND (the first sum(rows) rows). SwiGLU per expert, one
  // matmul triple per expert with rows, in one autograd function (host counts).
  torch::Tensor forward(const torch::Tensor& x_ND, const std::vector<int64_t>& rows_per_expert);
  // The same as three grouped GEMMs (at::_grouped_mm) over all experts at once, reading the
  // counts on the device (no host sync). Computes in the autocast dtype when autocast is on
  // for x's device. Needs 16-byte aligned rows: D and F multiples of 8 (bf16) or 4 (fp32).
  torch::Tensor forward_grouped(const torch::Tensor& x_ND, const torch::Tensor& rows_per_expert_E);

  int64_t num_local_experts, first_expert;
  torch::Tensor gate_proj, up_proj;  // [E, F, D]
  torch::Tensor down_proj;           // [E, D, F]
};
TORCH_MODULE(GroupedExperts);

// SwiGLU experts as one autograd function: rows [o_e, o_e + rows[e]) of x_ND (grouped by expert,
// o_e the running sum) go through expert e's gate/up/down weights [E, F, D] / [E, F, D] /
// [E, D, F]; returns [sum(rows), D]. In the autocast dtype when autocast is on for x's device.
// Also the dense MLP on the CPU (one "expert" with every row).
torch::Tensor swiglu_per_expert(const torch::Tensor& x_ND,
                                const torch::Tensor& gate_EFD,
                                const torch::Tensor& up_EFD,
                                const torch::Tensor& down_EDF,
                                const std::vector<int64_t>& rows);

// Weight gradients added in place (gradient accumulation fusion, as Megatron-Core's): while a
// scope is alive on the thread that runs backward, swiglu_per_expert's backward adds each weight
// gradient straight into its parameter's .grad (the optimizer's flat-buffer views), instead of
// returning it for autograd to copy and add: fp32 products accumulate in the matmul itself
// (beta = 1), bf16 ones are added with the conversion fused, experts with no rows cost nothing.
// Applies where the parameter (the weight, or the base of a view of it such as MLP's
// weight.unsqueeze(0)) is a leaf whose .grad is a defined, contiguous tensor of its dtype that
// does not require grad; elsewhere the gradient is returned as usual. Only for backward()
// calls whose gradients belong in .grad: torch::autograd::grad() must run outside a scope, and
// hooks on those parameters' gradient accumulation do not run for in-place gradients.
class WeightGradsInPlaceScope {
 public:
  WeightGradsInPlaceScope();
  ~WeightGradsInPlaceScope();
  WeightGradsInPlaceScope(const WeightGradsInPlaceScope&) = delete;
  WeightGradsInPlaceScope& operator=(const WeightGradsInPlaceScope&) = delete;
  static bool active();

 private:
  bool saved_;
};

// Whether `model.experts_impl` selects the grouped GEMM on `device` ("auto": CUDA in bf16).
bool use_grouped_gemm(const std::string& experts_impl, torch::Device device, bool bf16);

}  // namespace condensa::model
