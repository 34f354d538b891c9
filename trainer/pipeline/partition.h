// Which decoder layers each pipeline stage runs. Stages are contiguous runs of layers in model
// order; the embedding goes with the first stage, the final norm, LM head and MTP modules with
// the last (the MTP modules need the main model's last hidden state and the shared head).
//
// Balanced split (parallel.pipeline_layers empty): the contiguous split that minimises the
// largest stage's activated parameter count (model/accounting.h: what one token passes through,
// so dense layers weigh their MLP and MoE layers their top_k + shared experts and router), the
// embedding counted on the first stage and head + MTP on the last. Found exactly by dynamic
// programming over split points; among equal optima the earliest split points win, so every
// rank computes the same partition.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace condensa::trainer::pipeline {

struct StageLayers {
  int64_t first_layer = 0;  // index of the stage's first decoder layer
  int64_t num_layers = 0;
  bool embedding = false;    // token embedding (first stage)
  bool head = false;         // final norm, LM head and the MTP modules (last stage)
  double active_params = 0;  // the balanced split's cost of this stage
};

// A split of `cost` (in order) into `parts` non-empty contiguous runs minimising the largest
// run's sum: first[s] is the first index of run s, first[parts] = cost.size(). Among equal
// optima the earliest cuts win, so every rank computes the same split.
std::vector<int64_t> balanced_partition(const std::vector<double>& cost, int64_t parts);

// Activated parameters of each stage unit: [0] the embedding, [1..num_layers] the decoder
// layers, [num_layers + 1] final norm + LM head + MTP modules.
std::vector<double> unit_costs(const model::ModelConfig& m);

// Splits m's layers over `num_stages` stages (pipeline_parallel x virtual stages), balanced or
// by `layers_per_stage` (one count per stage, each >= 1, summing to model.num_layers). Errors
// name parallel.pipeline_layers / parallel.pipeline_parallel and model.num_layers with values.
std::vector<StageLayers> partition_layers(const model::ModelConfig& m,
                                          int64_t num_stages,
                                          const std::vector<int64_t>& layers_per_stage = {});

// "stage 0: layers 0-3 + embedding (1.2M active) | ..." for the start-up banner and plan.
std::string describe_partition(const std::vector<StageLayers>& stages);

}  // namespace condensa::trainer::pipeline
