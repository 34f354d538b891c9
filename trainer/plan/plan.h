// The capacity planner behind `condensa plan`: memory, communication and time of one training
// step for a config, a world size, a pipeline schedule and a hardware profile, computed from
// the config alone (nothing is allocated). docs/plan.md states the model and its sources.
//
// Key design choice: every figure is built bottom-up from per-token costs of the model's
// units (layers, head, MTP module) that reuse model/accounting's FLOP rules, so the planner's
// FLOPs equal the FLOPs MFU is measured with (tests/unit/trainer/plan_test.cpp holds them
// equal). Efficiencies live in the HardwareProfile, never in this arithmetic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/schema.h"
#include "trainer/pipeline/partition.h"
#include "trainer/pipeline/schedule.h"
#include "trainer/plan/hardware.h"

namespace condensa::trainer::plan {

// The pipeline schedules (trainer/pipeline/schedule.h).
using Schedule = pipeline::ScheduleKind;
Schedule parse_schedule(const std::string& name);  // 1f1b | interleaved | dualpipe
const char* schedule_name(Schedule s);

// Tokens per routed expert per MoE layer as a run logged them (metrics.jsonl, "moe"), to price
// uneven routing: the rank holding the busiest experts computes and receives more rows, and
// the other ranks wait for it in the all-to-all.
struct ExpertLoads {
  std::string source;                                   // the file read
  std::vector<std::vector<std::vector<double>>> steps;  // [logged step][MoE layer][expert]
  // The busiest of `ep` ranks' expert rows over the mean, with the experts split contiguously
  // over the ranks as the trainer splits them: per layer, averaged over the layers; the median
  // over the logged steps. 1 without steps or with ep 1.
  double imbalance(int64_t ep) const;
};

// Reads RUN_DIR/metrics.jsonl (or the metrics file itself). Throws ConfigError naming the file
// when it cannot be read, holds no per-expert counts, or counts other than num_experts experts.
ExpertLoads read_expert_loads(const std::string& path, int64_t num_experts);

struct PlanOptions {
  Schedule schedule = Schedule::k1F1B;
  int64_t virtual_stages = 2;  // model chunks per rank for the interleaved schedule
  // Busiest expert-parallel rank's expert rows over the mean (>= 1). 0: from expert_loads when
  // it has steps, else 1 (uniform routing, what auxiliary-loss-free balancing converges to).
  double load_imbalance = 0;
  ExpertLoads expert_loads;
  double imbalance(int64_t ep) const;
};

// Per-token cost of one unit of the model (a decoder layer, the LM head, the MTP module).
enum class UnitKind { kEmbedding, kLayer, kHead, kMtp };

struct UnitCost {
  std::string name;
  UnitKind kind = UnitKind::kLayer;
  double gemm_flops = 0;                 // forward matmul FLOPs per token
  double attention_flops = 0;            // forward attention score + value FLOPs per token
  double memory_bytes = 0;               // forward traffic of memory-bound kernels per token
  double recompute_flops = 0;            // extra forward matmul FLOPs in backward (model.recompute)
  double recompute_attention_flops = 0;  // extra attention-core FLOPs in backward
  double recompute_bytes = 0;            // extra memory traffic in backward
  double saved_bytes = 0;                // activations kept for backward per token
  double dense_params = 0;               // parameters replicated over data parallel
  double expert_params = 0;              // routed-expert parameters (split over expert parallel)
  bool moe = false;
};

struct MemoryBreakdown {  // bytes per rank, on the stage with the highest total
  int64_t stage = 0;
  double weights = 0;      // bf16 compute copy (when train.dtype is bf16)
  double master = 0;       // fp32 master weights
  double grads = 0;        // fp32 gradients
  double optimizer = 0;    // AdamW moments (fp32), ZeRO-1 sharded when zero_stage is 1
  double activations = 0;  // saved activations x micro-batches in flight
  double in_flight = 0;    // micro-batches whose activations are held at the peak
  double total() const { return weights + master + grads + optimizer + activations; }
};

struct CommBreakdown {                  // bytes per rank per step
  double a2a_intra = 0, a2a_inter = 0;  // MoE dispatch + combine, forward and backward
  double a2a_per_layer_intra = 0, a2a_per_layer_inter = 0;  // one MoE layer, one micro-batch
  double dp = 0;        // reduce-scatter + all-gather (ZeRO-1) or all-reduce of gradients
  double pipeline = 0;  // activations and their gradients sent between stages
};

struct TimeBreakdown {               // seconds per step on the slowest stage
  double forward = 0, backward = 0;  // compute per micro-batch
  double a2a = 0, pipeline_p2p = 0;  // communication per micro-batch
  double imbalance = 0;              // busiest rank's extra expert compute per micro-batch
  double micro_batch = 0;            // one micro-batch after overlap
  double bubble = 0, dp_comm = 0, optimizer = 0;
  double step = 0;
};

struct Plan {
  int64_t world = 0, pp = 1, dp = 1, ep = 1, micro_batches = 1;
  Schedule schedule = Schedule::k1F1B;
  std::vector<UnitCost> units;
  std::vector<int64_t> stage_first_unit;  // stage s holds units [first[s], first[s+1])
  double flops_per_token = 0;             // model FLOPs (model::training_flops_per_token)
  MemoryBreakdown memory;
  std::vector<double> stage_memory;  // bytes per rank of each pipeline stage
  double load_imbalance = 1;         // busiest expert-parallel rank's rows over the mean
  double bubble_fraction = 0;        // idle over compute of the schedule (t_b = 2 t_f, no comm)
  CommBreakdown comm;
  TimeBreakdown time;
  double tokens_per_s_per_rank = 0, mfu = 0, gpu_hours_per_trillion = 0;
  bool fits = false;
  std::vector<std::string> assumptions;  // printed under the plan
};

// The per-token unit costs of `config` in model order: layers, then the LM head, then the MTP
// modules, preceded by the embedding (no compute; its parameters sit on the first stage).
std::vector<UnitCost> unit_costs(const Config& config, bool fused_attention);

// The stage split (trainer/pipeline/partition.h), here by time per unit.
using pipeline::balanced_partition;

// Validates the layout against `world` (Config::validate_for_world plus the schedule's own
// rules) and computes the plan. Throws ConfigError for a layout that cannot run.
Plan make_plan(const Config& config,
               int64_t world,
               const HardwareProfile& hw,
               const PlanOptions& options);

// Plans for every (pipeline_parallel, expert_parallel) pair that is valid for `world`, sorted
// by GPU-hours per trillion tokens (fitting layouts first); the others with the reason.
struct LayoutComparison {
  std::vector<Plan> plans;
  std::vector<std::string> skipped;  // "pp 32 x ep 64: <why>"
};
LayoutComparison compare_layouts(const Config& config,
                                 int64_t world,
                                 const HardwareProfile& hw,
                                 const PlanOptions& options,
                                 const std::vector<int64_t>& pp_values,
                                 const std::vector<int64_t>& ep_values);

}  // namespace condensa::trainer::plan
