#include "trainer/parallelize.h"

#include <algorithm>
#include <thread>

#include "model/init.h"
#include "model/param_names.h"
#include "parallel/expert_parallel.h"

namespace condensa::trainer {

parallel::Mesh build_mesh(const Config& cfg, parallel::Communicator& world) {
  parallel::MeshOptions o;
  o.pipeline_parallel = static_cast<int>(cfg.parallel.pipeline_parallel);
  o.expert_parallel = static_cast<int>(cfg.parallel.expert_parallel);
  o.ranks_per_node = static_cast<int>(cfg.parallel.ranks_per_node);
  return parallel::Mesh::create(world, o);
}

void set_threads_per_rank(const Config& cfg, const parallel::Mesh& mesh) {
  int64_t threads = cfg.run.threads;
  if (threads == 0) {
    int ranks_here = 0;
    for (int n : mesh.node_of_world_rank()) ranks_here += (n == mesh.node());
    threads = std::max<int64_t>(1, std::thread::hardware_concurrency() / std::max(1, ranks_here));
  }
  at::set_num_threads(static_cast<int>(threads));
}

model::Transformer build_model(const Config& cfg,
                               const parallel::Mesh& mesh,
                               torch::Device device,
                               const model::ModelPart* part) {
  // Expert parallelism: each MoE layer gets a dispatcher over the ep group, which also gives
  // its router the node of every expert (node-limited routing).
  model::Transformer model(
      cfg.model, parallel::apply_expert_parallel(mesh, cfg.model.num_routed_experts), part);
  // Initialisation keyed by global names: identical for every layout.
  model::init_parameters(*model, static_cast<uint64_t>(cfg.run.seed));
  model->to(device);
  return model;
}

std::vector<ParamGroupSpec> optimizer_groups(model::TransformerImpl& model,
                                             const parallel::Mesh& mesh,
                                             const PipelineGroups* pipe) {
  const double scale = 1.0 / mesh.dp_size();
  ParamGroupSpec dense{"dense", {}, &mesh.dp(), nullptr, scale};
  ParamGroupSpec expert{"expert", {}, &mesh.edp(), &mesh.ep(), scale};
  ParamGroupSpec embedding{"embedding", {}, &mesh.dp(), nullptr, scale};
  if (pipe) {
    if (pipe->dense) dense.reduce_comm = pipe->dense;
    if (pipe->expert) expert.reduce_comm = pipe->expert;
    dense.norm_weight = expert.norm_weight = pipe->norm_weight;
    embedding.norm_weight = pipe->embedding_owner ? 1.0 : 0.0;
    embedding.save_state = pipe->embedding_owner;
  }
  const bool own_embedding_group = pipe && pipe->embedding_group;
  for (auto& item : model.named_parameters()) {
    auto& group = model::is_expert_param(item.key())                                 ? expert
                  : own_embedding_group && item.key().rfind("embed_tokens.", 0) == 0 ? embedding
                                                                                     : dense;
    group.params.push_back({item.key(), item.value()});
  }
  std::vector<ParamGroupSpec> groups;
  for (auto* g : {&dense, &embedding, &expert}) {
    if (!g->params.empty()) groups.push_back(*g);
  }
  return groups;
}

}  // namespace condensa::trainer
