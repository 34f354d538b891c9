// Process mesh: which ranks form the data-, expert-, expert-data- and pipeline-parallel groups.
//
// Key design choice: one fixed layout, written down once. world = pp x dp with pipeline stages
// outermost, so a data-parallel group is a block of consecutive ranks; expert parallelism lives
// inside the dp group (ep | dp), again as consecutive ranks, so that the token all-to-all stays
// inside a node where possible. With rank = pp_rank * dp + dp_rank:
//   dp_rank  = rank % dp          pp_rank  = rank / dp
//   ep_rank  = dp_rank % ep       edp_rank = dp_rank / ep   (edp = dp / ep ranks share experts)
// The mesh is built from a validated config (trainer/config: Config::validate_for_world holds
// every layout rule and its user-facing message); it does not re-validate, it only asserts
// its own invariants. A Mesh is a value: copies share the sub-communicators; there is no
// global parallel state.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace condensa::parallel {

// From a validated config: trainer::mesh_options(config) after validate_for_world.
struct MeshOptions {
  int pipeline_parallel = 1;  // parallel.pipeline_parallel, divides the world size
  int expert_parallel = 1;    // parallel.expert_parallel, divides the data-parallel size
  int ranks_per_node = 0;     // parallel.ranks_per_node: 0 = discover, k = fake nodes of k ranks
};

// Node index of each rank for fake nodes of `options.ranks_per_node` consecutive ranks, or an
// empty vector when it is 0 (discover).
std::vector<int> fake_node_map(int world_size, const MeshOptions& options);

// Hashes config_text on every rank and throws CommError on every rank if any rank's hash
// differs from rank 0's, naming those ranks. Collective.
void check_same_config(Communicator& comm, const std::string& config_text);

class Mesh {
 public:
  // Collective over world: discovers (or fakes) the node map, splits the groups. `options`
  // come from a config validated for this world; an options/world mismatch is a programming
  // error (condensa::Error, thrown on every rank before any split), not a config message.
  static Mesh create(Communicator& world, const MeshOptions& options);

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int pp_rank() const { return pp_rank_; }
  int pp_size() const { return pp_size_; }
  int dp_rank() const { return dp_rank_; }
  int dp_size() const { return dp_size_; }
  int ep_rank() const { return ep_rank_; }
  int ep_size() const { return ep_size_; }
  int edp_rank() const { return edp_rank_; }
  int edp_size() const { return edp_size_; }

  // Sub-communicators, named "dp", "ep", "edp", "pp".
  Communicator& dp() const { return *dp_; }
  Communicator& ep() const { return *ep_; }
  Communicator& edp() const { return *edp_; }
  Communicator& pp() const { return *pp_; }

  // World rank of ep rank `ep_rank` in this rank's ep group (and likewise for the others).
  int world_rank_of_ep_rank(int ep_rank) const;
  // Node of each world rank (dense indices, numbered by lowest rank), this rank's node.
  const std::vector<int>& node_of_world_rank() const { return node_of_world_rank_; }
  int node() const { return node_of_world_rank_[world_rank_]; }
  int num_nodes() const;
  // Node of ep rank `ep_rank` of this rank's ep group, numbered densely within the group
  // (0 .. num_nodes_in_ep_group() - 1, in ep-rank order): what node-limited routing needs.
  int node_of_ep_rank(int ep_rank) const;
  int num_nodes_in_ep_group() const;

  // "pp 1 x dp 4 (ep 2, edp 2), 2 nodes", for logs.
  std::string describe() const;

 private:
  Mesh() = default;

  int world_rank_ = 0, world_size_ = 1;
  int pp_rank_ = 0, pp_size_ = 1;
  int dp_rank_ = 0, dp_size_ = 1;
  int ep_rank_ = 0, ep_size_ = 1;
  int edp_rank_ = 0, edp_size_ = 1;
  std::shared_ptr<Communicator> dp_, ep_, edp_, pp_;
  std::vector<int> node_of_world_rank_;
  std::vector<int> node_of_ep_rank_;  // dense within this rank's ep group
};

}  // namespace condensa::parallel
