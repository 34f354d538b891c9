// The ordered construction of a training process: parallelism is applied to the model by
// separate free functions, called in this fixed order by the trainer (and, as far as it
// needs them, by `condensa bench moe`, so that a benchmark measures what training runs):
//
//   1. build_mesh            pp x dp, ep inside dp, node map (collective over world)
//   2. set_threads_per_rank  the node's cores shared by the ranks on it
//   3. build_model           this rank's pipeline stages only (model::ModelPart), expert
//                            parallelism applied at construction (all-to-all dispatchers +
//                            expert -> node map), layout-independent init keyed by global
//                            names, moved to the device
//   4. optimizer_groups      dense parameters over dp, experts over the expert-data-parallel
//                            replicas (norm summed over ep); with pipeline parallelism the
//                            replicated embedding in a group of its own, and under dualpipe
//                            both groups over the two ranks that hold the same stages
//
// Every rank runs the same sequence of collectives.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/transformer.h"
#include "parallel/communicator.h"
#include "parallel/mesh.h"
#include "trainer/config/config.h"
#include "trainer/optim/optimizer.h"

namespace condensa::trainer {

// 1. The mesh of a validated config. Collective over world.
parallel::Mesh build_mesh(const Config& cfg, parallel::Communicator& world);
// 2. run.threads, or (0) the node's hardware threads divided by the ranks on this node.
void set_threads_per_rank(const Config& cfg, const parallel::Mesh& mesh);
// 3. This rank's model: its part (nullptr: the whole model) and its experts only, initialised
// from run.seed, on `device`.
model::Transformer build_model(const Config& cfg,
                               const parallel::Mesh& mesh,
                               torch::Device device,
                               const model::ModelPart* part = nullptr);

// How pipeline parallelism changes the optimizer groups of one rank.
struct PipelineGroups {
  parallel::Communicator* dense = nullptr;   // replaces dp (dualpipe: dp x mirrored stage)
  parallel::Communicator* expert = nullptr;  // replaces edp (dualpipe: edp x mirrored stage)
  double norm_weight = 1.0;                  // dualpipe: 0 on one rank of each mirrored pair
  // The embedding is held by the first and the last stage: its own group on both ("embedding"),
  // counted in the norm and saved by the first stage only.
  bool embedding_group = false;
  bool embedding_owner = true;
};

// 4. The optimizer's parameter groups ("dense", and "expert" when the model has experts, and
// "embedding" when `pipe` says so).
std::vector<ParamGroupSpec> optimizer_groups(model::TransformerImpl& model,
                                             const parallel::Mesh& mesh,
                                             const PipelineGroups* pipe = nullptr);

}  // namespace condensa::trainer
