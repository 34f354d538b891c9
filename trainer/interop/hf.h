// Hugging Face DeepseekV3 interop: config.json keys, tensor lists and directories.
//
// Our global names are the HF names without the "model." prefix, except for the parts HF
// lays out differently: routed experts and MTP modules (which HF stores as extra layers that
// carry copies of the shared embedding and head). The name mapping itself is a name rule and
// lives with the others in model/param_names.h; this file moves tensors and config keys.
//
// Key design choice: an export never claims more than it computes. config.json keeps the
// routing keys DeepSeek's own code reads (scoring_func, topk_method) and states the routing
// again in a `condensa_routing` block, because HF transformers' DeepseekV3 ignores those keys
// (it always routes with sigmoid scores plus e_score_correction_bias and top-2-sum group
// scores); transformers_routing_differences() lists where that would compute another model.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace condensa::trainer {

using NamedTensorList = std::vector<std::pair<std::string, torch::Tensor>>;

// Where HF transformers' DeepseekV3 (see above) would compute a different model than `m`, one
// sentence each naming the model key; empty when it computes the same one.
std::vector<std::string> transformers_routing_differences(const model::ModelConfig& m);

// config.json for `m`; the special token ids are those of data.tokenizer `tokenizer`.
nlohmann::json hf_config_json(const model::ModelConfig& m, const std::string& tokenizer);
// From config.json: our own "condensa_model" block when present (exact), else the HF keys
// (DeepseekV3 or V2). Throws CheckpointError naming the file and key.
model::ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& file);

// Global checkpoint tensors -> HF tensors (adds MTP copies of embedding and head).
NamedTensorList to_hf_tensors(const model::ModelConfig& m, const NamedTensorList& global);
// HF tensors -> global checkpoint tensors (drops the MTP copies). A model without the
// selection bias (router_bias false: DeepseekV2, or V3 with topk_method greedy /
// group_limited_greedy) may lack e_score_correction_bias; it gets a zero one. A model that
// uses the bias must have it (CheckpointError naming the tensor).
NamedTensorList from_hf_tensors(const model::ModelConfig& m, const NamedTensorList& hf);

struct HfExportOptions {
  int64_t max_shard_bytes = 5000000000LL;
  torch::ScalarType dtype = torch::kFloat32;
  std::string tokenizer = "byte";  // data.tokenizer: the special token ids in config.json
};

// Writes config.json and model.safetensors, or model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json when the tensors exceed max_shard_bytes.
void write_hf_directory(const std::string& dir,
                        const model::ModelConfig& m,
                        const NamedTensorList& global,
                        const HfExportOptions& opt);

struct HfModel {
  model::ModelConfig config;
  NamedTensorList tensors;  // global checkpoint names
  std::string tokenizer;    // "condensa_tokenizer" of config.json; empty for other exporters
};
// Reads a HF directory (single file or index).
HfModel read_hf_directory(const std::string& dir);

// An output directory that is written whole or not at all. The constructor refuses (ConfigError
// naming `flag`) an `out` that is a file, or a non-empty directory unless `force`, or one that
// is or contains a path of `keep` (the input, the working directory). Files are written into
// staging(), a hidden sibling; commit() then replaces `out` with it, removing everything that
// was there (so nothing stale survives). Without commit() the staging directory is removed and
// `out` is left as it was.
class OutputDirectory {
 public:
  OutputDirectory(const std::string& out,
                  bool force,
                  const std::string& flag,
                  const std::vector<std::string>& keep);
  ~OutputDirectory();
  OutputDirectory(const OutputDirectory&) = delete;
  OutputDirectory& operator=(const OutputDirectory&) = delete;
  const std::string& staging() const { return staging_; }
  void commit();

 private:
  std::string out_, staging_;
  bool committed_ = false;
};

}  // namespace condensa::trainer
