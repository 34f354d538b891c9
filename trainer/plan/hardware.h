// Hardware profiles for `condensa plan`: what one accelerator (or CPU rank) and its links can do.
//
// Key design choice: a profile holds *achieved* rates, never only datasheet peaks. Each
// built-in profile's efficiencies come from published microbenchmarks (cited in docs/plan.md
// and printed by `plan`); the `cpu` profile is measured on this machine, at the model's own
// matmul shapes, by the same code paths as `condensa bench matmul` and `bench alltoall`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace condensa::parallel {
class Communicator;
}  // namespace condensa::parallel

namespace condensa::trainer {
struct Config;
}  // namespace condensa::trainer

namespace condensa::trainer::plan {

struct HardwareProfile {
  std::string name;
  double peak_flops = 0;            // dense matmul peak in the compute dtype (MFU denominator)
  double gemm_efficiency = 0;       // fraction of peak_flops the model's matmuls reach
  double attention_efficiency = 0;  // fraction of peak_flops of the attention score/value core
  bool fused_attention = true;      // false: the S x S scores go through memory (CPU)
  double memory_bytes = 0;          // device memory per rank
  double usable_memory = 0.9;       // fraction left after context, allocator and comm buffers
  double memory_bandwidth = 0;      // achieved bytes/s of memory-bound kernels
  double intra_node_bandwidth = 0;  // achieved all-to-all bytes/s per rank inside a node
  double inter_node_bandwidth = 0;  // achieved bytes/s per rank between nodes
  int64_t ranks_per_node = 8;
  double comm_compute_share = 0;  // compute given up to communication kernels while overlapping
  // Forward + backward seconds per token of whole units, measured (the `cpu` profile): a dense
  // and a MoE decoder block and the LM head with its loss. 0 = not measured: the plan then
  // times units from their FLOPs and bytes at the rates above.
  double dense_layer_s_per_token = 0, moe_layer_s_per_token = 0, head_s_per_token = 0;
  // How much slower those units run inside the whole model than alone (the `cpu` profile times
  // the whole model once: caches shared by every layer, the embedding, the losses and the
  // autograd engine between blocks): the plan multiplies the units' times by it. 0 = not
  // measured (1).
  double in_model_factor = 0;
  // Forward + backward seconds per routed-expert row of this rank's experts alone (the `cpu`
  // profile): what the busiest rank does more of under uneven routing. 0 = not measured: the
  // plan prices those rows at the matmul rate.
  double expert_s_per_row = 0;
  std::vector<std::string> notes;  // where each number comes from (printed by plan)
};

// h800 | h100 | h200. Throws ConfigError naming the profile for any other name.
HardwareProfile builtin_profile(const std::string& name);

// A profile from a YAML file (keys: docs/plan.md); unknown or missing keys and out-of-range
// values are ConfigErrors naming the file and the key.
HardwareProfile load_profile(const std::string& path);

struct CpuMeasureOptions {
  double seconds_per_shape = 0.05;  // timing per matmul shape
  int64_t ranks_per_node = 1;       // ranks sharing this machine's cores in the planned run
};

// The `cpu` profile measured on this process: matmul rate at the model's own shapes for one
// micro-batch (with this rank's share of the cores), memory bandwidth of a large copy, and the
// all-to-all bandwidth over `comm` when it has more than one rank (else a copy-based
// estimate, noted in the profile). Collective over comm.
// Seconds per call of fn, which calls collectives on comm: every rank calls it the same number
// of times (agreed over comm: the most any rank needs for about `seconds`), since a count each
// rank took from its own clock would leave one rank in a collective the others have left.
double collective_seconds_per_call(parallel::Communicator& comm,
                                   const std::function<void()>& fn,
                                   double seconds);

HardwareProfile measure_cpu_profile(const Config& config,
                                    parallel::Communicator& comm,
                                    const CpuMeasureOptions& options);

}  // namespace condensa::trainer::plan
