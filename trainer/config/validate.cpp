// Every config rule, written once. Per-section rules in each section's validate(), rules
// across sections in Config::validate(), rules that need the world size in
// Config::validate_for_world(). Messages name the YAML key(s) and the values, and for a
// relation both operands: "parallel.expert_parallel (3) must divide ... (4)".
#include <initializer_list>

#include "common/args.h"
#include "common/error.h"
#include "parallel/mesh.h"
#include "trainer/config/schema.h"
#include "trainer/pipeline/partition.h"
#include "trainer/pipeline/schedule.h"

namespace condensa::trainer {

namespace {
template <class T>
void require(bool ok, const std::string& key, const T& value, const std::string& rule) {
  if (!ok) throw ConfigError(str(key, " = ", value, ": ", rule));
}
void require_one_of(const std::string& key,
                    const std::string& value,
                    std::initializer_list<const char*> allowed) {
  std::string all;
  for (const char* a : allowed) {
    if (value == a) return;
    all += (all.empty() ? "" : " | ") + std::string(a);
  }
  throw ConfigError(str(key, " = '", value, "': must be one of ", all));
}
// Upper bounds keep every count far below what would overflow or exhaust memory before the
// memory estimate (trainer/config/memory.h) can name the keys; they are generous for real runs.
template <class T>
void require_in(const std::string& key, T value, T lo, T hi, const std::string& note = "") {
  require(value >= lo && value <= hi, key, value,
          str("must be in [", lo, ", ", hi, "]", note.empty() ? "" : " ", note));
}
constexpr int64_t kMaxThreads = 1024;
constexpr int64_t kMaxSteps = int64_t{1} << 40;
constexpr int64_t kMaxBatch = int64_t{1} << 24;  // sequences per step
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;
constexpr int64_t kMaxEvalBatches = 1000000;
constexpr int64_t kMaxRanks = int64_t{1} << 20;
constexpr double kMaxTimeoutS = 7 * 24 * 3600.0;
constexpr int64_t kMaxKeep = 1000000;
constexpr int64_t kMaxLayers = 100000;
}  // namespace

void RunConfig::validate() const {
  require(!dir.empty(), "run.dir", "''", "must not be empty");
  require(seed >= 0, "run.seed", seed, "must be >= 0");
  require_in<int64_t>("run.threads", threads, 0, kMaxThreads, "(0 = cores / ranks on the node)");
}

void DataConfig::validate() const {
  require_one_of("data.source", source, {"synthetic", "tokens"});
  if (source == "tokens") {
    require(!path.empty(), "data.path", "''",
            "must name a token shard directory when data.source = tokens");
  }
  require_one_of("data.tokenizer", tokenizer, {"byte"});
  require(val_fraction > 0 && val_fraction < 1, "data.val_fraction", val_fraction,
          "must be in (0, 1)");
}

void TrainConfig::validate() const {
  require_in<int64_t>("train.steps", steps, 1, kMaxSteps);
  require_in<int64_t>("train.global_batch_size", global_batch_size, 1, kMaxBatch);
  require_in<int64_t>("train.micro_batch_size", micro_batch_size, 1, global_batch_size,
                      "(at most train.global_batch_size)");
  require_in<int64_t>("train.seq_len", seq_len, 2, kMaxSeqLen);
  require_one_of("train.dtype", dtype, {"fp32", "bf16"});
  require(grad_clip >= 0, "train.grad_clip", grad_clip, "must be >= 0");
  require_in<int64_t>("train.eval_every", eval_every, 0, kMaxSteps, "(0 = only at the end)");
  require_in<int64_t>("train.eval_batches", eval_batches, 1, kMaxEvalBatches);
  require_in<int64_t>("train.stop_at_step", stop_at_step, 0, kMaxSteps, "(0 = off)");
  require_in<int64_t>("train.max_skipped_steps", max_skipped_steps, 0, kMaxSteps);
}

void OptimConfig::validate() const {
  require(lr > 0, "optim.lr", lr, "must be > 0");
  require(min_lr >= 0 && min_lr <= lr, "optim.min_lr", min_lr,
          str("must be in [0, optim.lr (", lr, ")]"));
  require_in<int64_t>("optim.warmup_steps", warmup_steps, 0, kMaxSteps);
  require_one_of("optim.schedule", schedule, {"cosine", "linear", "constant"});
  require(beta1 >= 0 && beta1 < 1, "optim.beta1", beta1, "must be in [0, 1)");
  require(beta2 >= 0 && beta2 < 1, "optim.beta2", beta2, "must be in [0, 1)");
  require(eps > 0 && eps <= 1, "optim.eps", eps, "must be in (0, 1]");
  require(weight_decay >= 0, "optim.weight_decay", weight_decay, "must be >= 0");
}

void ParallelConfig::validate() const {
  require_in<int64_t>("parallel.expert_parallel", expert_parallel, 1, kMaxRanks);
  require_in<int64_t>("parallel.pipeline_parallel", pipeline_parallel, 1, kMaxRanks);
  require(zero_stage == 0 || zero_stage == 1, "parallel.zero_stage", zero_stage, "must be 0 or 1");
  require_in<double>("parallel.timeout_s", timeout_s, 0, kMaxTimeoutS, "(0 disables the watchdog)");
  require_one_of("parallel.backend", backend, {"auto", "mpi", "nccl"});
  require_in<int64_t>("parallel.ranks_per_node", ranks_per_node, 0, kMaxRanks, "(0 = discover)");
  pipeline::parse_schedule_kind(pipeline_schedule);
  require_in<int64_t>("parallel.virtual_stages", virtual_stages, 1, 64);
  if (virtual_stages != 1 && pipeline_schedule != "interleaved") {
    throw ConfigError(str("parallel.virtual_stages (", virtual_stages,
                          ") is read by parallel.pipeline_schedule interleaved only, not '",
                          pipeline_schedule, "'; set it to 1"));
  }
  pipeline_layer_counts();
}

std::vector<int64_t> ParallelConfig::pipeline_layer_counts() const {
  std::vector<int64_t> out;
  std::string bad;
  const bool ok = parse_int_list(pipeline_layers, &out, &bad);
  for (int64_t v : out) {
    if (ok && (v < 1 || v > kMaxLayers)) bad = std::to_string(v);
  }
  if (!bad.empty()) {
    throw ConfigError(str("parallel.pipeline_layers ('", pipeline_layers, "'): '", bad,
                          "' is not a layer count in [1, ", kMaxLayers,
                          "]; write one count per stage, e.g. \"3,4,4,2\""));
  }
  return out;
}

void CheckpointConfig::validate() const {
  require_in<int64_t>("checkpoint.every", every, 0, kMaxSteps, "(0 = only at the end)");
  require_in<int64_t>("checkpoint.keep", keep, 0, kMaxKeep, "(0 = all)");
  require(!resume.empty(), "checkpoint.resume", "''", "must be auto, none or a path");
}

void LogConfig::validate() const { require_in<int64_t>("log.every", every, 1, kMaxSteps); }

void Config::validate() const {
  run.validate();
  data.validate();
  model.validate();
  train.validate();
  optim.validate();
  parallel.validate();
  checkpoint.validate();
  log.validate();
  if (data.tokenizer == "byte" && model.vocab_size < 259) {
    throw ConfigError(str("model.vocab_size (", model.vocab_size,
                          ") is smaller than the vocabulary of data.tokenizer 'byte' (259)"));
  }
  if (train.seq_len + model.mtp_depth > model.max_seq_len) {
    // MTP module k predicts k tokens further, so the RoPE tables must cover seq_len + mtp_depth.
    const std::string need = model.mtp_depth == 0
                                 ? str("train.seq_len (", train.seq_len, ")")
                                 : str("train.seq_len (", train.seq_len, ") + model.mtp_depth (",
                                       model.mtp_depth, ") = ", train.seq_len + model.mtp_depth);
    throw ConfigError(str(need, " exceeds model.max_seq_len (", model.max_seq_len, ")"));
  }
  if (model.num_routed_experts % parallel.expert_parallel != 0) {
    throw ConfigError(str("parallel.expert_parallel (", parallel.expert_parallel,
                          ") must divide model.num_routed_experts (", model.num_routed_experts,
                          ")"));
  }
}

void Config::validate_for_world(int64_t world) const {
  if (world < 1) throw ConfigError(str("world size (", world, ") must be >= 1"));
  if (world % parallel.pipeline_parallel != 0) {
    throw ConfigError(str("parallel.pipeline_parallel (", parallel.pipeline_parallel,
                          ") must divide the world size (", world, ")"));
  }
  int64_t dp = data_parallel(world);
  if (dp % parallel.expert_parallel != 0) {
    throw ConfigError(str("parallel.expert_parallel (", parallel.expert_parallel,
                          ") must divide the data-parallel size (", dp, ") = world (", world,
                          ") / pipeline_parallel (", parallel.pipeline_parallel, ")"));
  }
  if (parallel.ranks_per_node > 0 && world % parallel.ranks_per_node != 0) {
    throw ConfigError(str("parallel.ranks_per_node (", parallel.ranks_per_node,
                          ") must divide the world size (", world, ")"));
  }
  if (train.global_batch_size % (train.micro_batch_size * dp) != 0) {
    throw ConfigError(str("train.global_batch_size (", train.global_batch_size,
                          ") must be divisible by train.micro_batch_size (", train.micro_batch_size,
                          ") x data-parallel size (", dp, ") = ", train.micro_batch_size * dp));
  }
  if (parallel.pipeline_parallel > 1) {
    const auto o = pipeline_schedule_options(*this, world);
    pipeline::validate(o);
    pipeline::partition_layers(model, pipeline::num_stages(o), parallel.pipeline_layer_counts());
  } else if (!parallel.pipeline_layers.empty()) {
    throw ConfigError(str("parallel.pipeline_layers ('", parallel.pipeline_layers,
                          "') is set but parallel.pipeline_parallel is 1"));
  }
}

pipeline::ScheduleOptions pipeline_schedule_options(const Config& c, int64_t world) {
  pipeline::ScheduleOptions o;
  o.kind = pipeline::parse_schedule_kind(c.parallel.pipeline_schedule);
  o.num_ranks = static_cast<int>(c.parallel.pipeline_parallel);
  o.num_micro_batches = static_cast<int>(c.train.global_batch_size /
                                         (c.data_parallel(world) * c.train.micro_batch_size));
  o.virtual_stages = static_cast<int>(c.parallel.virtual_stages);
  return o;
}

parallel::MeshOptions mesh_options(const Config& c) {
  parallel::MeshOptions o;
  o.pipeline_parallel = static_cast<int>(c.parallel.pipeline_parallel);
  o.expert_parallel = static_cast<int>(c.parallel.expert_parallel);
  o.ranks_per_node = static_cast<int>(c.parallel.ranks_per_node);
  return o;
}

}  // namespace condensa::trainer
