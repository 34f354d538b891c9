// Process mesh: see mesh.h for the layout.
#include "parallel/mesh.h"

#include <algorithm>
#include <iomanip>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/hash.h"

namespace condensa::parallel {

std::vector<int> fake_node_map(int world_size, const MeshOptions& o) {
  if (o.ranks_per_node == 0) return {};
  std::vector<int> nodes(world_size);
  for (int r = 0; r < world_size; ++r) nodes[r] = r / o.ranks_per_node;
  return nodes;
}

void check_same_config(Communicator& comm, const std::string& config_text) {
  const auto hash = static_cast<int64_t>(hash_string(config_text));
  const std::vector<int64_t> hashes = comm.all_gather_int64({hash});
  std::vector<int> differ;
  for (int r = 1; r < comm.size(); ++r) {
    if (hashes[r] != hashes[0]) differ.push_back(r);
  }
  if (differ.empty()) return;
  std::ostringstream os;
  os << "config differs between ranks: rank" << (differ.size() > 1 ? "s " : " ");
  for (size_t i = 0; i < differ.size(); ++i) os << (i ? ", " : "") << differ[i];
  os << " of " << comm.name() << (differ.size() > 1 ? " have" : " has")
     << " a config whose hash differs from rank 0's (" << std::hex << std::setw(16)
     << std::setfill('0') << static_cast<uint64_t>(hashes[0])
     << "); launch every rank with the same config and --set overrides";
  throw CommError(os.str());
}

Mesh Mesh::create(Communicator& world, const MeshOptions& options) {
  // 1. Invariants of a validated config (Config::validate_for_world owns the rules and their
  // messages); checked before any split so that every rank throws and the world stays usable.
  const int w = world.size(), pp = options.pipeline_parallel, ep = options.expert_parallel;
  const int rpn = options.ranks_per_node;
  CONDENSA_CHECK(pp >= 1 && ep >= 1 && rpn >= 0 && w % pp == 0 && (w / pp) % ep == 0 &&
                     (rpn == 0 || w % rpn == 0),
                 Error, "Mesh::create: options (pipeline_parallel ", pp, ", expert_parallel ", ep,
                 ", ranks_per_node ", rpn, ") do not fit world size ", w,
                 "; build them with trainer::mesh_options from a config checked by "
                 "validate_for_world");

  Mesh m;
  m.world_rank_ = world.rank();
  m.world_size_ = world.size();
  m.pp_size_ = options.pipeline_parallel;
  m.dp_size_ = m.world_size_ / m.pp_size_;
  m.ep_size_ = options.expert_parallel;
  m.edp_size_ = m.dp_size_ / m.ep_size_;
  m.pp_rank_ = m.world_rank_ / m.dp_size_;
  m.dp_rank_ = m.world_rank_ % m.dp_size_;
  m.ep_rank_ = m.dp_rank_ % m.ep_size_;
  m.edp_rank_ = m.dp_rank_ / m.ep_size_;

  // 2. Node map: faked for tests, else discovered from shared memory.
  m.node_of_world_rank_ = fake_node_map(m.world_size_, options);
  if (m.node_of_world_rank_.empty()) m.node_of_world_rank_ = world.discover_node_map();

  // 3. Groups. Colors number the groups; keys order ranks inside them.
  auto split = [&world](int color, int key, const char* name) {
    std::shared_ptr<Communicator> c = world.split(color, key);
    c->set_name(name);
    return c;
  };
  const int ep_group = m.dp_rank_ / m.ep_size_;
  m.dp_ = split(m.pp_rank_, m.dp_rank_, "dp");
  m.ep_ = split(m.pp_rank_ * m.edp_size_ + ep_group, m.ep_rank_, "ep");
  m.edp_ = split(m.pp_rank_ * m.ep_size_ + m.ep_rank_, m.edp_rank_, "edp");
  m.pp_ = split(m.dp_rank_, m.pp_rank_, "pp");

  // 4. Nodes of this ep group, numbered densely in ep-rank order.
  std::vector<int> seen;
  for (int e = 0; e < m.ep_size_; ++e) {
    const int node = m.node_of_world_rank_[m.world_rank_of_ep_rank(e)];
    auto it = std::find(seen.begin(), seen.end(), node);
    if (it == seen.end()) it = seen.insert(seen.end(), node);
    m.node_of_ep_rank_.push_back(static_cast<int>(it - seen.begin()));
  }
  return m;
}

int Mesh::world_rank_of_ep_rank(int ep_rank) const {
  CONDENSA_CHECK(ep_rank >= 0 && ep_rank < ep_size_, CommError, "ep rank ", ep_rank,
                 " is not in [0, ", ep_size_, ")");
  return world_rank_ - ep_rank_ + ep_rank;  // ep groups are consecutive ranks
}

int Mesh::num_nodes() const {
  return 1 + *std::max_element(node_of_world_rank_.begin(), node_of_world_rank_.end());
}

int Mesh::node_of_ep_rank(int ep_rank) const {
  CONDENSA_CHECK(ep_rank >= 0 && ep_rank < ep_size_, CommError, "ep rank ", ep_rank,
                 " is not in [0, ", ep_size_, ")");
  return node_of_ep_rank_[ep_rank];
}

int Mesh::num_nodes_in_ep_group() const {
  return 1 + *std::max_element(node_of_ep_rank_.begin(), node_of_ep_rank_.end());
}

std::string Mesh::describe() const {
  return str("pp ", pp_size_, " x dp ", dp_size_, " (ep ", ep_size_, ", edp ", edp_size_, "), ",
             num_nodes(), num_nodes() == 1 ? " node" : " nodes");
}

}  // namespace condensa::parallel
