// The run configuration's schema: one plain struct per YAML section, with defaults and a
// `visit` method that lists its keys. `visit` is the single source of truth for every key:
// the YAML reader, the YAML writer, the config hash and the reference in docs/config.md all
// walk it (trainer/config/yaml.cpp), so a key cannot exist in one and be missing in another.
//
// Validation has two stages, both in trainer/config/validate.cpp, each rule written once:
// `validate()` (per section, then across sections) right after parsing, and
// `validate_for_world()` for the rules that need the world size (pipeline, data- and
// expert-parallel divisibility, fake node sizes, batch split), before any communicator is
// split. Everything downstream (the mesh, the dispatcher, the trainer) trusts a validated
// config and does not re-check it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace condensa::trainer::pipeline {
struct ScheduleOptions;
}
namespace condensa::parallel {
struct MeshOptions;
}  // namespace condensa::parallel

namespace condensa::trainer {

struct RunConfig {
  std::string dir = "runs/default";
  int64_t seed = 1234;
  int64_t threads = 0;  // intra-op threads per rank; 0 = cores / local ranks
  bool overwrite = false;
  template <class V>
  void visit(V& v) {
    v("dir", dir, "run directory: config.yaml, metrics.jsonl, checkpoints/");
    v("seed", seed, "seed for weights and data (layout-independent)");
    v("threads", threads, "intra-op threads per rank; 0 = cores / ranks on the node");
    v("overwrite", overwrite,
      "with checkpoint.resume: none, delete the checkpoints and metrics of a run already in "
      "run.dir (refused otherwise)");
  }
  void validate() const;
};

struct DataConfig {
  std::string source = "synthetic";  // synthetic | tokens
  std::string path;
  std::string tokenizer = "byte";
  double val_fraction = 0.05;
  template <class V>
  void visit(V& v) {
    v("source", source, "synthetic (built-in mixture) | tokens (shards from condensa data)");
    v("path", path, "token shard directory (source: tokens)");
    v("tokenizer", tokenizer, "tokenizer name (byte)");
    v("val_fraction", val_fraction, "fraction of token data held out for validation");
  }
  void validate() const;
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t global_batch_size = 8;  // sequences per optimizer step, all ranks together
  int64_t micro_batch_size = 4;   // sequences per rank per forward
  int64_t seq_len = 64;
  std::string dtype = "fp32";  // fp32 | bf16 (compute dtype; master weights stay fp32)
  double grad_clip = 1.0;
  int64_t eval_every = 0;  // 0 = only at the end
  int64_t eval_batches = 4;
  int64_t stop_at_step = 0;  // 0 = run to `steps`
  int64_t max_skipped_steps = 3;
  template <class V>
  void visit(V& v) {
    v("steps", steps, "optimizer steps");
    v("global_batch_size", global_batch_size, "sequences per optimizer step, all ranks together");
    v("micro_batch_size", micro_batch_size, "sequences per rank per forward pass");
    v("seq_len", seq_len, "tokens per sequence");
    v("dtype", dtype, "compute dtype: fp32 | bf16 (master weights and optimizer stay fp32)");
    v("grad_clip", grad_clip, "global gradient-norm clip; 0 = off");
    v("eval_every", eval_every, "validation every N steps; 0 = only at the end");
    v("eval_batches", eval_batches, "global batches per validation");
    v("stop_at_step", stop_at_step,
      "save and exit after this step without changing the schedule (time-sliced jobs); 0 = off");
    v("max_skipped_steps", max_skipped_steps,
      "consecutive steps with a non-finite loss or gradient norm skipped (not applied) before the "
      "run aborts; 0 = abort at the first");
  }
  void validate() const;
};

struct OptimConfig {
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup_steps = 10;
  std::string schedule = "cosine";  // cosine | linear | constant
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool fused = true;  // one fused AdamW kernel (at::_fused_adamw_) instead of element-wise ops
  template <class V>
  void visit(V& v) {
    v("lr", lr, "peak learning rate");
    v("min_lr", min_lr, "final learning rate of the decay");
    v("warmup_steps", warmup_steps, "linear warm-up steps from 0 to lr");
    v("schedule", schedule, "decay after warm-up: cosine | linear | constant");
    v("beta1", beta1, "AdamW beta1");
    v("beta2", beta2, "AdamW beta2");
    v("eps", eps, "AdamW epsilon");
    v("weight_decay", weight_decay, "AdamW decoupled weight decay (not on norms and biases)");
    v("fused", fused, "fused AdamW kernel; false = the element-wise reference update");
  }
  void validate() const;
};

struct ParallelConfig {
  int64_t expert_parallel = 1;
  int64_t pipeline_parallel = 1;
  int64_t zero_stage = 0;
  double timeout_s = 300.0;
  std::string backend = "auto";            // auto | mpi | nccl
  int64_t ranks_per_node = 0;              // 0 = discover; > 0 fakes nodes of that many ranks
  std::string pipeline_schedule = "1f1b";  // 1f1b | interleaved | dualpipe
  int64_t virtual_stages = 1;              // model chunks per rank (interleaved)
  std::string pipeline_layers;             // "" = balanced; else layer counts per stage
  template <class V>
  void visit(V& v) {
    v("expert_parallel", expert_parallel, "ranks sharing one MoE layer's experts (divides dp)");
    v("pipeline_parallel", pipeline_parallel, "pipeline stages (divides the world size)");
    v("pipeline_schedule", pipeline_schedule,
      "pipeline schedule: 1f1b | interleaved | dualpipe (read when pipeline_parallel > 1)");
    v("virtual_stages", virtual_stages, "model chunks per pipeline rank (interleaved only, >= 2)");
    v("pipeline_layers", pipeline_layers,
      "decoder layers per stage, e.g. \"3,4,4,2\" (one per stage); empty = balanced by "
      "activated parameters");
    v("zero_stage", zero_stage, "0 = replicated AdamW state, 1 = sharded over data parallel");
    v("timeout_s", timeout_s, "abort every rank when a collective exceeds this; 0 = never");
    v("backend", backend, "communicator: auto | mpi | nccl");
    v("ranks_per_node", ranks_per_node, "override the node map (testing); 0 = discover");
  }
  void validate() const;
  // pipeline_layers as numbers ("[3, 4]" or "3,4"); ConfigError naming the key otherwise.
  std::vector<int64_t> pipeline_layer_counts() const;
};

struct CheckpointConfig {
  int64_t every = 0;  // 0 = only at the end
  int64_t keep = 3;
  std::string resume = "auto";  // auto | none | <path to a step directory>
  bool allow_config_change = false;
  template <class V>
  void visit(V& v) {
    v("every", every, "save every N steps (and at the end); 0 = only at the end");
    v("keep", keep, "complete checkpoints kept; 0 = all");
    v("resume", resume, "auto (newest in run.dir) | none | path to a step directory");
    v("allow_config_change", allow_config_change,
      "resume even when model, data, seed, optimizer, schedule, batch or dtype keys differ from "
      "the checkpoint's config");
  }
  void validate() const;
};

struct LogConfig {
  int64_t every = 10;
  bool tensorboard = true;
  template <class V>
  void visit(V& v) {
    v("every", every, "console line and metrics.jsonl record every N steps");
    v("tensorboard", tensorboard, "also write the records as TensorBoard events in run.dir/tb/");
  }
  void validate() const;
};

struct Config {
  RunConfig run;
  DataConfig data;
  model::ModelConfig model;
  TrainConfig train;
  OptimConfig optim;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  LogConfig log;

  template <class V>
  void visit_sections(V& v) {
    v.section("run", run);
    v.section("data", data);
    v.section("model", model);
    v.section("train", train);
    v.section("optim", optim);
    v.section("parallel", parallel);
    v.section("checkpoint", checkpoint);
    v.section("log", log);
  }

  // Per-section and cross-section checks that need no world size (expert_parallel divides
  // model.num_routed_experts is one of them: it holds for every world).
  void validate() const;
  // Checks that need the world size, before any communicator is split: pipeline_parallel
  // divides the world, expert_parallel divides data parallel, ranks_per_node divides the
  // world, the global batch splits into micro-batches over data parallel.
  void validate_for_world(int64_t world_size) const;

  int64_t data_parallel(int64_t world_size) const {
    return world_size / parallel.pipeline_parallel;
  }
};

// The mesh layout of a config that passed validate_for_world(world size): pipeline stages,
// expert parallel and the fake node size. Include parallel/mesh.h to call it.
parallel::MeshOptions mesh_options(const Config& config);

// The pipeline schedule of a config on a world of `world` ranks: kind, p, micro-batches per
// step (global batch / (dp x micro batch)), virtual stages. Include trainer/pipeline/schedule.h.
pipeline::ScheduleOptions pipeline_schedule_options(const Config& config, int64_t world);

}  // namespace condensa::trainer
