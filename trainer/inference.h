// Using a trained checkpoint: load it into a single-process model, evaluate loss/perplexity,
// generate text with the compressed MLA KV cache.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/transformer.h"
#include "trainer/config/config.h"

namespace condensa::trainer {

// A step directory (has meta.json), or a run directory / checkpoints root: its newest
// complete checkpoint. Throws CheckpointError naming the path.
std::string resolve_checkpoint_dir(const std::string& path);

struct LoadedModel {
  Config config;
  model::Transformer model{nullptr};
  std::string dir;
  int64_t step = 0;
};
// Single process, every expert local, eval mode.
LoadedModel load_model_for_inference(const std::string& path);

struct EvalResult {
  double loss = 0, perplexity = 0;
  int64_t tokens = 0, windows = 0;
};
// Mean next-token loss over non-overlapping windows of seq_len+1 tokens of `tokens`. When
// `nll` is not null, it receives the loss of each target, in order: entry i is the loss of
// tokens[i + 1] (windows of seq_len inputs start every seq_len tokens, so each target once).
EvalResult evaluate_tokens(model::TransformerImpl& model,
                           const std::vector<int64_t>& tokens,
                           int64_t seq_len,
                           int64_t max_windows,
                           std::vector<double>* nll = nullptr);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = all
  uint64_t seed = 0;
  bool use_cache = true;  // false recomputes the whole prefix each token (reference)
  int64_t stop_token = -1;
  // Sample only ids below this: the tokenizer's vocabulary, when the model's is padded beyond
  // it (those ids have no text). 0 = every id of the model.
  int64_t num_sampled_ids = 0;
};
// Returns the generated ids (without the prompt). Logits of each step go to *step_logits.
std::vector<int64_t> generate(model::TransformerImpl& model,
                              const std::vector<int64_t>& prompt,
                              const GenerateOptions& opt,
                              std::vector<torch::Tensor>* step_logits = nullptr);

// Evaluation tokens from --data: a token shard directory, a directory of shards, or a raw text
// file (encoded with `tok`, wrapped in BOS ... EOS). Throws DataError naming the path.
std::vector<int64_t> read_eval_tokens(const std::string& path, const data::Tokenizer& tok);

}  // namespace condensa::trainer
