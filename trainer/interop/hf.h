// Hugging Face DeepseekV3 interop: config.json keys, tensor lists and directories.
//
// Our global names are the HF names without the "model." prefix, except for the parts HF
// lays out differently: routed experts and MTP modules (which HF stores as extra layers that
// carry copies of the shared embedding and head). The name mapping itself is a name rule and
// lives with the others in model/param_names.h; this file moves tensors and config keys.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace condensa::trainer {

using NamedTensorList = std::vector<std::pair<std::string, torch::Tensor>>;

nlohmann::json hf_config_json(const model::ModelConfig& m);
// From config.json: our own "condensa_model" block when present (exact), else the HF keys.
model::ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& file);

// Global checkpoint tensors -> HF tensors (adds MTP copies of embedding and head).
NamedTensorList to_hf_tensors(const model::ModelConfig& m, const NamedTensorList& global);
// HF tensors -> global checkpoint tensors (drops the MTP copies, checking they match).
NamedTensorList from_hf_tensors(const model::ModelConfig& m, const NamedTensorList& hf);

// Writes config.json and model.safetensors, or model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json when the tensors exceed max_shard_bytes.
void write_hf_directory(const std::string& dir,
                        const model::ModelConfig& m,
                        const NamedTensorList& global,
                        int64_t max_shard_bytes,
                        torch::ScalarType dtype);
// Reads a HF directory (single file or index); returns the config and global tensors.
std::pair<model::ModelConfig, NamedTensorList> read_hf_directory(const std::string& dir);

}  // namespace condensa::trainer
