// The training loop: data -> forward/backward over micro-batches -> gradient reduction ->
// clip -> AdamW -> router bias update -> metrics -> checkpoint.
//
// Parallelism is applied to the model by the ordered construction steps of
// trainer/parallelize.h (mesh -> threads -> model with expert parallelism, init -> optimizer
// groups), then resume. The trainer reads routing statistics and updates the balancing bias
// through the model's API (model/transformer.h), never through router internals. Every rank
// runs the same sequence of collectives each step.
#pragma once

#include <atomic>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "data/sampler.h"
#include "model/transformer.h"
#include "parallel/mesh.h"
#include "trainer/config/config.h"
#include "trainer/optim/optimizer.h"
#include "trainer/parallelize.h"
#include "trainer/pipeline/partition.h"
#include "trainer/pipeline/runtime.h"
#include "trainer/pipeline/schedule.h"
#include "trainer/tensorboard.h"

namespace condensa::trainer {

struct TrainSummary {
  int64_t first_step = 1, last_step = 0;
  double final_loss = 0, final_val_loss = 0;
  std::string checkpoint;  // last committed checkpoint dir ("" if none)
  bool interrupted = false;
};

// `Trainer::benchmark`: step times after warm-up (the slowest rank's), median throughput.
struct BenchResult {
  int64_t steps = 0, tokens_per_step = 0;
  double median_step_s = 0, min_step_s = 0, max_step_s = 0;
  double tokens_per_s = 0, flops_per_token = 0, peak_flops_per_rank = 0, mfu = 0;
  double final_loss = 0;
  // Pipeline parallelism: per pipeline rank (data-parallel rank 0 of each stage), seconds per
  // step inside passes and waiting for other stages, medians over the timed steps.
  std::vector<double> stage_compute_s, stage_wait_s;
};

// Pipeline parallelism (parallel.pipeline_parallel > 1): what this rank runs and holds.
struct PipelineState {
  pipeline::ScheduleOptions schedule;
  std::vector<pipeline::StageLayers> stages;   // every stage of the model
  std::vector<pipeline::ProgramStep> program;  // this rank's training step
  pipeline::Channels channels;                 // activations and gradients between pipeline ranks
  std::unique_ptr<parallel::Communicator> embedding;  // first + last stage: embedding gradient
  std::unique_ptr<parallel::Communicator> mirror_dp, mirror_edp;  // dualpipe: both copies
  PipelineGroups groups;
  bool owner = true;              // writes its stages (dualpipe: one rank of each mirrored pair)
  bool embedding_copy = false;    // holds the last stage's copy of the embedding
  std::vector<int64_t> moe_rows;  // row of each local MoE layer among the model's MoE layers
  int64_t num_moe_rows = 0;
  pipeline::PassTiming timing;  // the last step's
};

class Trainer {
 public:
  Trainer(const Config& cfg,
          parallel::Communicator& world,
          const std::atomic<bool>* stop_flag = nullptr);
  TrainSummary run();
  // Times `steps` training steps after `warmup` untimed ones, from the initial weights: no
  // resume, checkpoint, evaluation or metrics file (`condensa bench train`).
  BenchResult benchmark(int64_t warmup, int64_t steps);
  // Called when the steps begin (after resume) and when the final validation begins (after the
  // last checkpoint): `condensa train` makes a stop signal exit at once outside the steps.
  enum class Phase { kSteps, kFinalValidation };
  void set_phase_listener(std::function<void(Phase)> listener) { on_phase_ = std::move(listener); }

  model::TransformerImpl& model() { return *model_; }
  const parallel::Mesh& mesh() const { return mesh_; }

 private:
  struct StepStats {
    double loss = 0, mtp_loss = 0, aux_loss = 0;
  };
  struct StepResult {
    StepStats stats;  // averaged over data-parallel ranks
    double grad_norm = 0, lr = 0;
    bool applied = true;  // false: non-finite loss or gradient norm, update skipped
  };
  // One optimizer step: micro-batches, gradient reduction, clip, then (unless the loss or the
  // global gradient norm is not finite, decided identically on every rank) AdamW and the bias
  // update.
  StepResult train_step(int64_t step, std::vector<torch::Tensor>& global_loads);
  // Forward and backward of this rank's micro-batches: [loss, mtp, aux] sums on the device.
  torch::Tensor forward_backward(int64_t step);
  // Pipeline parallelism (trainer/pipeline_step.cpp): the schedule, partition and groups of
  // this rank (collective over world: splits communicators); returns the model part to build.
  model::ModelPart setup_pipeline();
  // forward_backward through the stages: the losses are summed on the stages that compute them.
  torch::Tensor forward_backward_pipeline(int64_t step);
  // The last stage's copy of the embedding gets the first stage's gradient and vice versa.
  void sync_embedding_gradient();
  double validation_loss_pipeline();
  // Rows of this rank's MoE layers [L_local, ...] placed among all of the model's MoE layers
  // [L, ...], summed over the pipeline ranks (collective over pp; the input as is when pp 1).
  torch::Tensor global_moe_rows(const torch::Tensor& local);
  // Cross-entropy of the head and the weighted MTP loss of one micro-batch's output (tokens
  // [B, S + 1]).
  std::pair<torch::Tensor, torch::Tensor> head_losses(const model::ModelOutput& out,
                                                      const torch::Tensor& tokens,
                                                      int64_t step) const;
  void update_router_bias(int64_t step, std::vector<torch::Tensor>& global_loads);
  // Bins the last forward's routing by the micro-batch's language ids [B, S].
  void count_routing_by_language(const torch::Tensor& language_BS);
  // Every step: the expert load; at the end of a log interval: the per-language counts too.
  void reset_routing_stats(bool log_interval);
  double validation_loss();
  std::string save(int64_t step);
  int64_t resume();
  // checkpoint.resume: none in a run.dir that already holds a run: refused unless run.overwrite,
  // which deletes that run's checkpoints and metrics first (rank 0 decides, every rank throws).
  void start_fresh();
  // The checkpoint's config against ours (trainer/checkpoint/resume_rules.h); prints the notes.
  void check_resumed_config(const nlohmann::json& meta, const std::string& dir);
  // Averages the step's losses over data parallel and returns whether the step may be applied:
  // false when any rank's loss or the global gradient norm is not finite, on every rank alike.
  bool reduce_step_stats(const torch::Tensor& loss_sums, double grad_norm, StepStats* st);
  // Records a step whose update was skipped; throws after train.max_skipped_steps in a row.
  void skip_step(int64_t step, const StepStats& st, double grad_norm);
  // Throws on every rank when `error` (rank 0's verdict) is not empty.
  void throw_if_rank0_failed(const std::string& error, bool config_error);
  void log_step(int64_t step,
                const StepStats& st,
                double lr,
                double grad_norm,
                double step_s,
                const std::vector<torch::Tensor>& loads);
  bool stop_requested();
  bool is_logger() const { return world_.rank() == 0; }

  Config cfg_;
  parallel::Communicator& world_;
  parallel::Mesh mesh_;
  const std::atomic<bool>* stop_flag_;
  model::Transformer model_{nullptr};
  std::unique_ptr<Optimizer> optim_;
  std::unique_ptr<data::DataSource> data_;
  std::ofstream metrics_;
  std::unique_ptr<TensorBoardLog> tensorboard_;  // rank 0, when log.tensorboard
  torch::Device device_{torch::kCPU};
  int64_t tokens_seen_ = 0;
  double flops_per_token_ = 0, peak_flops_ = 0;
  double train_seconds_ = 0;
  int64_t timed_steps_ = 0;
  std::string last_checkpoint_;
  int64_t consecutive_skips_ = 0;
  std::vector<torch::Tensor> language_counts_;  // per MoE layer [languages, E], log interval
  std::function<void(Phase)> on_phase_;
  std::unique_ptr<PipelineState> pipe_;  // pipeline_parallel > 1
};

}  // namespace condensa::trainer
