// Metrics: one JSON object per logged step in <run.dir>/metrics.jsonl, and the console line.
//
// metrics.jsonl is the run's loss curve. On resume the records after the resumed step are
// dropped first, so the file always holds one consistent curve.
#pragma once

#include <torch/torch.h>

#include <fstream>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace condensa::trainer {

struct MoELayerRecord {
  torch::Tensor tokens_per_expert;  // global, this step
  torch::Tensor bias;               // router bias after the update
  torch::Tensor
      languages;  // [L, E] tokens per language and expert (all ranks, log interval) or undefined
};

struct MetricsRecord {
  int64_t step = 0, total_steps = 0, tokens_seen = 0;
  double loss = 0, mtp_loss = 0, aux_loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, mfu = 0, eta_s = 0;
  std::vector<MoELayerRecord> moe;
};

// Tokens per (language, expert) of one MoE layer's routing, [L, E] int64 on the device of
// topk_idx_TK (global experts, -1 = dropped, not counted); language_T [T]: the language of
// each token (ids outside [0, num_languages) are not counted). No host sync.
torch::Tensor count_tokens_by_language(const torch::Tensor& topk_idx_TK,
                                       const torch::Tensor& language_T,
                                       int64_t num_languages,
                                       int64_t num_experts);

// max / mean of a load vector (1 = perfectly balanced).
double load_imbalance(const torch::Tensor& load);

void write_metrics_line(std::ofstream& out,
                        const MetricsRecord& rec,
                        const std::vector<std::string>& languages);
void write_eval_line(std::ofstream& out, int64_t step, double val_loss);
void print_progress_line(const MetricsRecord& rec);
// Keeps the records with step <= last_step (all when the file does not exist).
void truncate_metrics_after(const std::string& path, int64_t last_step);
// The name of entry `i` of a record's `moe` list (model::moe_layers order): "layer3" for the
// transformer block it sits in, "mtp0" for the first MTP module.
std::string moe_layer_name(const model::ModelConfig& m, size_t i);
// "4 layers (1 dense), d 64, 8 experts top-2 + 1 shared, 1.2M params (0.6M active)".
std::string describe_model(const model::ModelConfig& m);

}  // namespace condensa::trainer
