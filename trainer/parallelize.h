// The ordered construction of a training process: parallelism is applied to the model by
// separate free functions, called in this fixed order by the trainer (and, as far as it
// needs them, by `condensa bench moe`, so that a benchmark measures what training runs):
//
//   1. build_mesh            pp x dp, ep inside dp, node map (collective over world)
//   2. set_threads_per_rank  the node's cores shared by the ranks on it
//   3. build_model           expert parallelism applied at construction (all-to-all
//                            dispatchers + expert -> node map), layout-independent init keyed
//                            by global names, moved to the device
//   4. optimizer_groups      dense parameters over dp, experts over the expert-data-parallel
//                            replicas (norm summed over ep)
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
// 3. This rank's model: its experts only, initialised from run.seed, on `device`.
model::Transformer build_model(const Config& cfg, const parallel::Mesh& mesh, torch::Device device);
// 4. The optimizer's parameter groups ("dense", and "expert" when the model has experts).
std::vector<ParamGroupSpec> optimizer_groups(model::TransformerImpl& model,
                                             const parallel::Mesh& mesh);

}  // namespace condensa::trainer
