// The run configuration: one struct per YAML section, each with defaults, a `visit` method
// that lists its keys (the single source of truth for reading, printing, hashing and
// documenting them) and a `validate()` that runs right after parsing.
//
// Loading order: YAML file -> `--set section.key=value` overrides -> typed parse (unknown
// keys and wrong types are errors) -> per-section validate() -> cross-section validate().
// Every error is a ConfigError whose message names the YAML path and the values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace condensa::trainer {

struct RunConfig {
  std::string dir = "runs/default";
  int64_t seed = 1234;
  int64_t threads = 0;  // intra-op threads per rank; 0 = cores / local ranks
  template <class V>
  void visit(V& v) {
    v("dir", dir, "run directory: config.yaml, metrics.jsonl, checkpoints/");
    v("seed", seed, "seed for weights and data (layout-independent)");
    v("threads", threads, "intra-op threads per rank; 0 = cores / ranks on the node");
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
  }
  void validate() const;
};

struct ParallelConfig {
  int64_t expert_parallel = 1;
  int64_t pipeline_parallel = 1;
  int64_t zero_stage = 0;
  double timeout_s = 300.0;
  std::string backend = "auto";  // auto | mpi | nccl
  int64_t ranks_per_node = 0;    // 0 = discover; > 0 fakes nodes of that many ranks
  template <class V>
  void visit(V& v) {
    v("expert_parallel", expert_parallel, "ranks sharing one MoE layer's experts (divides dp)");
    v("pipeline_parallel", pipeline_parallel, "pipeline stages (divides the world size)");
    v("zero_stage", zero_stage, "0 = replicated AdamW state, 1 = sharded over data parallel");
    v("timeout_s", timeout_s, "abort every rank when a collective exceeds this; 0 = never");
    v("backend", backend, "communicator: auto | mpi | nccl");
    v("ranks_per_node", ranks_per_node, "override the node map (testing); 0 = discover");
  }
  void validate() const;
};

struct CheckpointConfig {
  int64_t every = 0;  // 0 = only at the end
  int64_t keep = 3;
  std::string resume = "auto";  // auto | none | <path to a step directory>
  template <class V>
  void visit(V& v) {
    v("every", every, "save every N steps (and at the end); 0 = only at the end");
    v("keep", keep, "complete checkpoints kept; 0 = all");
    v("resume", resume, "auto (newest in run.dir) | none | path to a step directory");
  }
  void validate() const;
};

struct LogConfig {
  int64_t every = 10;
  template <class V>
  void visit(V& v) {
    v("every", every, "console line and metrics.jsonl record every N steps");
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

  // Per-section and cross-section checks that need no communicator.
  void validate() const;
  // Checks that need the world size (batch divisibility, expert parallel), before any split.
  void validate_for_world(int64_t world_size) const;

  int64_t data_parallel(int64_t world_size) const {
    return world_size / parallel.pipeline_parallel;
  }
};

// Reads a YAML file and applies `--set key=value` overrides; validates. Throws ConfigError.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses YAML text (for tests and checkpoints).
Config parse_config_text(const std::string& yaml_text,
                         const std::vector<std::string>& overrides = {},
                         const std::string& source_name = "<config>");
// The resolved config as YAML (every key, defaults included).
std::string config_to_yaml(const Config& config);
// Markdown tables of every key with its default and description (docs/config.md).
std::string config_reference_markdown();

}  // namespace condensa::trainer
