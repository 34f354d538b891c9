// Training-state checkpoints: what each rank saves, by global name, and how any layout loads it.
//
// Every tensor is saved under its layout-independent global name: dense parameters as they
// are ("layers.0.self_attn.o_proj.weight"), routed experts one tensor per global expert
// ("layers.1.mlp.experts.5.gate_proj", model::expert_global_name in model/param_names.h), the
// balancing bias as a buffer. Dense parameters are written by data-parallel rank 0 of the
// stage that holds them, each expert shard by the first replica (edp rank 0) of its ep rank
// (SaveRequest::write_*).
// Optimizer state is written by the rank that owns it (all of it with ZeRO-0 by group rank 0;
// the rank's flat shard with ZeRO-1) as pieces: element ranges [start, end) of a flattened
// global tensor, described in the file's safetensors metadata. Loading assembles the global
// tensors a rank needs from all files, whatever layout wrote them: that is resharding.
// The directory mechanics (temp dir, manifests, fsync, atomic rename, `latest`) are
// trainer/checkpoint/directory.h.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "parallel/communicator.h"
#include "trainer/optim/optimizer.h"

namespace condensa::trainer {

struct SaveRequest {
  std::string root;  // <run.dir>/checkpoints
  int64_t step = 0;
  int keep = 0;
  nlohmann::json meta;  // trainer state: tokens seen, data fingerprint, config, layout
  // Which of this rank's model tensors it writes (each global tensor is written once):
  // dense parameters and buffers (data-parallel rank 0 of a stage), expert slices (edp rank 0).
  // Pipeline parallelism: a stage held twice (dualpipe) is written by one rank of the pair, and
  // the last stage's copy of the embedding by none (names starting with skip_prefix).
  bool write_dense = true;
  bool write_experts = true;
  std::string skip_prefix;
};

// Collective over world: every rank writes its files, rank 0 commits. Returns the
// committed step directory (on every rank).
std::string save_checkpoint(const SaveRequest& req,
                            model::TransformerImpl& model,
                            const Optimizer& optim,
                            parallel::Communicator& world);

// Loads model parameters, buffers and optimizer state from `step_dir` into this rank's layout.
// Returns meta.json. Throws CheckpointError naming the file or tensor.
nlohmann::json load_checkpoint(const std::string& step_dir,
                               model::TransformerImpl& model,
                               Optimizer& optim);

// Model tensors only (eval, generate, export), assembled by global name.
std::vector<std::pair<std::string, torch::Tensor>> load_global_model_tensors(
    const std::string& step_dir);

// Copies global tensors into a model of any layout (experts picked by global index).
void assign_global_tensors(model::TransformerImpl& model,
                           const std::function<torch::Tensor(const std::string&)>& get);

}  // namespace condensa::trainer
