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
#include <memory>
#include <string>

#include "data/sampler.h"
#include "model/transformer.h"
#include "parallel/mesh.h"
#include "trainer/config/config.h"
#include "trainer/optim/optimizer.h"
#include "trainer/tensorboard.h"

namespace condensa::trainer {

struct TrainSummary {
  int64_t first_step = 1, last_step = 0;
  double final_loss = 0, final_val_loss = 0;
  std::string checkpoint;  // last committed checkpoint dir ("" if none)
  bool interrupted = false;
};

class Trainer {
 public:
  Trainer(const Config& cfg,
          parallel::Communicator& world,
          const std::atomic<bool>* stop_flag = nullptr);
  TrainSummary run();

  model::TransformerImpl& model() { return *model_; }
  const parallel::Mesh& mesh() const { return mesh_; }

 private:
  struct StepStats {
    double loss = 0, mtp_loss = 0, aux_loss = 0;
  };
  StepStats forward_backward(int64_t step);
  void update_router_bias(int64_t step, std::vector<torch::Tensor>& global_loads);
  // Bins the last forward's routing by the micro-batch's language ids [B, S].
  void count_routing_by_language(const torch::Tensor& language_BS);
  // Every step: the expert load; at the end of a log interval: the per-language counts too.
  void reset_routing_stats(bool log_interval);
  double validation_loss();
  std::string save(int64_t step);
  int64_t resume();
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
  std::vector<torch::Tensor> language_counts_;  // per MoE layer [languages, E], log interval
};

}  // namespace condensa::trainer
