// The planner's arithmetic: per-token unit costs, the pipeline partition, memory,
// communication and time. docs/plan.md writes out every formula used here.
#include "trainer/plan/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/accounting.h"

namespace condensa::trainer::plan {

Schedule parse_schedule(const std::string& name) {
  try {
    return pipeline::parse_schedule_kind(name);
  } catch (const ConfigError&) {
    throw ConfigError(str("--schedule: expected 1f1b, interleaved or dualpipe, got '", name, "'"));
  }
}

const char* schedule_name(Schedule s) { return pipeline::schedule_kind_name(s); }

double ExpertLoads::imbalance(int64_t ep) const {
  if (ep <= 1 || steps.empty()) return 1;
  std::vector<double> per_step;
  for (const auto& layers : steps) {
    double sum = 0;
    for (const auto& experts : layers) {
      const auto E = static_cast<int64_t>(experts.size());
      double busiest = 0, total = 0;
      for (int64_t r = 0; r < ep; ++r) {
        double rows = 0;
        for (int64_t e = r * E / ep; e < (r + 1) * E / ep; ++e) rows += experts[e];
        busiest = std::max(busiest, rows), total += rows;
      }
      sum += total > 0 ? busiest / (total / static_cast<double>(ep)) : 1.0;
    }
    per_step.push_back(sum / static_cast<double>(layers.size()));
  }
  std::sort(per_step.begin(), per_step.end());
  const size_t n = per_step.size();
  return n % 2 ? per_step[n / 2] : (per_step[n / 2 - 1] + per_step[n / 2]) / 2;
}

ExpertLoads read_expert_loads(const std::string& path, int64_t num_experts) {
  namespace fs = std::filesystem;
  ExpertLoads out;
  out.source = fs::is_directory(path) ? (fs::path(path) / "metrics.jsonl").string() : path;
  std::ifstream in(out.source);
  CONDENSA_CHECK(in.good(), ConfigError, "--expert-load: cannot read ", out.source);
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find("\"tokens_per_expert\"") == std::string::npos) continue;
    nlohmann::json rec;
    try {
      rec = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(str("--expert-load: ", out.source, " line ", line_no, ": ", e.what()));
    }
    if (!rec.contains("moe") || !rec.at("moe").is_array()) continue;
    std::vector<std::vector<double>> layers;
    for (const auto& layer : rec.at("moe")) {
      if (!layer.contains("tokens_per_expert")) continue;
      auto counts = layer.at("tokens_per_expert").get<std::vector<double>>();
      CONDENSA_CHECK(static_cast<int64_t>(counts.size()) == num_experts, ConfigError,
                     "--expert-load: ", out.source, " line ", line_no, " counts ", counts.size(),
                     " experts per layer, but model.num_routed_experts is ", num_experts);
      layers.push_back(std::move(counts));
    }
    if (!layers.empty()) out.steps.push_back(std::move(layers));
  }
  CONDENSA_CHECK(!out.steps.empty(), ConfigError, "--expert-load: ", out.source,
                 " has no per-expert token counts (\"moe\" records; the run needs MoE layers "
                 "and log.every steps)");
  return out;
}

double PlanOptions::imbalance(int64_t ep) const {
  return load_imbalance > 0 ? load_imbalance : expert_loads.imbalance(ep);
}

namespace {

// Matmul parameters of one MLA attention block (the projections; norms are not matmuls).
double attention_matmul_params(const model::ModelConfig& m) {
  const double D = m.hidden_size, H = m.num_heads;
  double q = m.q_lora_rank == 0 ? D * H * m.qk_head_dim()
                                : D * m.q_lora_rank + m.q_lora_rank * H * m.qk_head_dim();
  return q + D * (m.kv_lora_rank + m.qk_rope_head_dim) +
         m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim) + H * m.v_head_dim * D;
}

// One decoder layer (`layer` indexes layers, MTP blocks continue after the last layer).
UnitCost layer_cost(const model::ModelConfig& m,
                    int64_t layer,
                    int64_t seq_len,
                    double act_bytes,
                    bool fused_attention) {
  const double D = m.hidden_size, H = m.num_heads, qk = m.qk_head_dim(), v = m.v_head_dim;
  const double rope = m.qk_rope_head_dim, ql = m.q_lora_rank, kvl = m.kv_lora_rank;
  const double S = static_cast<double>(seq_len), E = m.num_routed_experts, k = m.top_k;
  UnitCost u;
  u.moe = m.is_moe_layer(layer);
  u.name = str(u.moe ? "moe" : "dense", " layer ", layer);
  const double attn_params = attention_matmul_params(m);
  const double expert = 3.0 * D * m.moe_intermediate_size;
  const double ffn_active =
      u.moe ? (k + m.num_shared_experts) * expert + D * E : 3.0 * D * m.intermediate_size;
  u.gemm_flops = 2.0 * (attn_params + ffn_active);
  // Causal attention: each query sees S / 2 keys; q.k over qk dims and p.v over v dims.
  u.attention_flops = H * (qk + v) * S;
  // Memory-bound traffic (elements read + written), forward. Attention block: 2 norms of the
  // stream and the two latents, rope, assembling q and k per head, residual add.
  double elems = 2 * D + 2 * ql + 2 * kvl + 2 * (H * rope + rope) + 4 * H * qk + 3 * D;
  // Unfused attention: scores written, scaled, masked, softmaxed and read: ~8 passes of H x S.
  if (!fused_attention) elems += 8 * H * S;
  elems += 2 * D + 3 * D;  // FFN norm and residual add
  const double I = u.moe ? m.moe_intermediate_size : m.intermediate_size;
  const double active_ffns = u.moe ? k + m.num_shared_experts : 1;
  elems += 3 * I * active_ffns;  // SwiGLU: read gate and up, write the product
  if (u.moe) elems += 4 * E + 2 * k * D + (2 * k + 1) * D + 3 * D;  // route, permute, combine
  u.memory_bytes = elems * act_bytes;
  // Saved for backward (elements per token).
  const double norms = 2 * D + ql + kvl;                          // norm outputs
  const double up = 2 * H * qk + H * v;                           // q, k, v from the up-projections
  double saved = 2 * D + ql + (kvl + rope) + H * v + norms + up;  // inputs, latents, attn out
  saved += fused_attention ? 2 * H : H * S;                       // softmax stats or probs
  saved += 3 * I * active_ffns;                                   // gate, up, product
  if (u.moe) saved += 2 * k * D + 2 * E;                          // expert rows in/out, scores
  const std::string& rc = m.recompute;
  if (rc == "norm_up") {
    saved -= norms + up;
    u.recompute_flops = 2.0 * ((ql > 0 ? ql * H * qk : 0) + kvl * H * (m.qk_nope_head_dim + v));
    u.recompute_bytes = (2 * D + 2 * ql + 2 * kvl + 2 * D) * act_bytes;
  } else if (rc == "full") {
    saved = D;  // the layer input; the layer is recomputed from it in backward
    u.recompute_flops = u.gemm_flops;
    u.recompute_attention_flops = u.attention_flops;
    u.recompute_bytes = u.memory_bytes;
  }
  u.saved_bytes = saved * act_bytes;
  u.dense_params = attn_params + (ql > 0 ? ql : 0) + kvl + 2 * D;  // + latent and block norms
  if (u.moe) {
    u.dense_params += m.num_shared_experts * expert + D * E;
    u.expert_params = E * expert;
  } else {
    u.dense_params += 3.0 * D * m.intermediate_size;
  }
  return u;
}

UnitCost head_cost(const model::ModelConfig& m, double act_bytes, bool shares_weights) {
  const double D = m.hidden_size, V = m.vocab_size;
  UnitCost u;
  u.name = shares_weights ? "MTP head" : "LM head";
  u.kind = UnitKind::kHead;
  u.gemm_flops = 2.0 * D * V;
  // Final norm; logits written, upcast and log-softmaxed in fp32, read for the loss.
  u.memory_bytes = 2 * D * act_bytes + V * act_bytes + 4.0 * V * 4;
  u.saved_bytes = 2 * D * act_bytes + V * 4.0;
  u.dense_params = shares_weights ? D : D * V + D;
  return u;
}

}  // namespace

std::vector<UnitCost> unit_costs(const Config& config, bool fused_attention) {
  const auto& m = config.model;
  const double a = config.train.dtype == "bf16" ? 2.0 : 4.0;
  std::vector<UnitCost> units;
  UnitCost emb;
  emb.name = "embedding";
  emb.kind = UnitKind::kEmbedding;
  emb.memory_bytes = m.hidden_size * a;
  emb.dense_params = static_cast<double>(m.vocab_size) * m.hidden_size;
  units.push_back(emb);
  for (int64_t l = 0; l < m.num_layers; ++l)
    units.push_back(layer_cost(m, l, config.train.seq_len, a, fused_attention));
  units.push_back(head_cost(m, a, false));
  for (int64_t k = 0; k < m.mtp_depth; ++k) {
    UnitCost u = layer_cost(m, m.num_layers + k, config.train.seq_len, a, fused_attention);
    const double D = m.hidden_size;
    u.name = str("MTP module ", k, " (", u.moe ? "moe" : "dense", ")");
    u.kind = UnitKind::kMtp;
    u.gemm_flops += 2.0 * 2 * D * D;  // eh_proj
    u.memory_bytes += 6 * D * a;      // enorm, hnorm, concatenation
    u.saved_bytes += 4 * D * a;
    u.dense_params += 2 * D * D + 2 * D;  // eh_proj, enorm, hnorm
    UnitCost head = head_cost(m, a, true);
    u.gemm_flops += head.gemm_flops;
    u.memory_bytes += head.memory_bytes;
    u.saved_bytes += head.saved_bytes;
    u.dense_params += head.dense_params;
    units.push_back(u);
  }
  return units;
}

namespace {

// Three significant digits, for the printed assumptions.
std::string g3(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

struct Rates {
  double gemm, attention, memory;  // FLOP/s, FLOP/s, B/s
  const HardwareProfile* hw = nullptr;
};

// Forward + backward seconds per token of a unit timed whole by the profile (0 if not).
double measured_s(const UnitCost& u, const Rates& r) {
  if (!r.hw || r.hw->moe_layer_s_per_token + r.hw->dense_layer_s_per_token <= 0) return 0;
  const auto& hw = *r.hw;
  const double in_model = hw.in_model_factor > 0 ? hw.in_model_factor : 1.0;
  const double layer = u.moe ? hw.moe_layer_s_per_token : hw.dense_layer_s_per_token;
  if (u.kind == UnitKind::kLayer) return in_model * layer;
  if (u.kind == UnitKind::kHead) return in_model * hw.head_s_per_token;
  if (u.kind == UnitKind::kMtp) return in_model * (layer + hw.head_s_per_token);
  return 0;
}

// Forward and backward compute seconds per token of one unit: a third and two thirds of the
// measured time when the profile timed the unit whole, else from FLOPs and bytes.
double forward_s(const UnitCost& u, const Rates& r) {
  if (const double whole = measured_s(u, r); whole > 0) return whole / 3;
  return u.gemm_flops / r.gemm + u.attention_flops / r.attention + u.memory_bytes / r.memory;
}
double backward_s(const UnitCost& u, const Rates& r) {
  const double recompute = u.recompute_flops / r.gemm + u.recompute_attention_flops / r.attention +
                           u.recompute_bytes / r.memory;
  if (const double whole = measured_s(u, r); whole > 0) return 2 * whole / 3 + recompute;
  return 2 * forward_s(u, r) + recompute;
}

}  // namespace

namespace {

// Probability that none of k experts drawn without replacement from `pool` lands in a given
// set of `group` experts: C(pool - group, k) / C(pool, k).
double miss_probability(double pool, double group, double k) {
  double p = 1;
  for (int64_t i = 0; i < static_cast<int64_t>(k); ++i) p *= (pool - group - i) / (pool - i);
  return std::max(p, 0.0);
}

}  // namespace

namespace {

// Bytes one rank sends per token for one all-to-all of a MoE layer (dispatch or combine),
// intra- and inter-node, for a dispatcher that sends each token once per destination node
// over the network and fans out to the destination ranks inside the node (DeepEP's normal
// kernels). Experts are uniform over the allowed nodes: node-limited routing restricts a
// token to max_nodes_per_token of the nodes its expert-parallel group spans.
struct A2ABytes {
  double intra = 0, inter = 0;
};
A2ABytes a2a_bytes_per_token(const model::ModelConfig& m,
                             int64_t ep,
                             int64_t ranks_per_node,
                             double elem_bytes) {
  A2ABytes b;
  if (ep <= 1) return b;
  const double E = m.num_routed_experts, k = m.top_k, D = m.hidden_size;
  const double per_rank = E / ep;
  const double ranks_in_node = static_cast<double>(std::min(ep, ranks_per_node));
  const double nodes = std::ceil(static_cast<double>(ep) / ranks_in_node);
  const double per_node = per_rank * ranks_in_node;
  const double allowed = (m.max_nodes_per_token > 0 && m.max_nodes_per_token < nodes)
                             ? static_cast<double>(m.max_nodes_per_token)
                             : nodes;
  const double pool = allowed * per_node;  // experts a token may choose from
  const double distinct_nodes = allowed * (1 - miss_probability(pool, per_node, k));
  const double distinct_ranks = allowed * ranks_in_node * (1 - miss_probability(pool, per_rank, k));
  b.inter = distinct_nodes * (nodes - 1) / nodes * D * elem_bytes;
  b.intra = distinct_ranks * (ranks_in_node - 1) / ranks_in_node * D * elem_bytes;
  return b;
}

void check_layout(const Config& c, int64_t world, const PlanOptions& o, int64_t num_units) {
  c.validate_for_world(world);
  const int64_t pp = c.parallel.pipeline_parallel;
  const int64_t m = c.train.global_batch_size / (c.train.micro_batch_size * c.data_parallel(world));
  if (pp > num_units) {
    throw ConfigError(str("parallel.pipeline_parallel (", pp, ") exceeds the model's ", num_units,
                          " pipeline units (embedding, layers, head, MTP modules)"));
  }
  if (o.schedule == Schedule::kInterleaved && o.virtual_stages < 1) {
    throw ConfigError(str("--virtual-stages (", o.virtual_stages, ") must be >= 1"));
  }
  if (pp > 1) {
    // The trainer's rules for the planned schedule (which --schedule may change).
    pipeline::ScheduleOptions so;
    so.kind = o.schedule;
    so.num_ranks = static_cast<int>(pp);
    so.num_micro_batches = static_cast<int>(m);
    so.virtual_stages = static_cast<int>(o.virtual_stages);
    pipeline::validate(so);
  }
}

}  // namespace

Plan make_plan(const Config& c, int64_t world, const HardwareProfile& hw, const PlanOptions& o) {
  Plan p;
  p.units = unit_costs(c, hw.fused_attention);
  check_layout(c, world, o, static_cast<int64_t>(p.units.size()));
  const auto& m = c.model;
  p.world = world;
  p.pp = c.parallel.pipeline_parallel;
  p.dp = c.data_parallel(world);
  p.ep = c.parallel.expert_parallel;
  p.schedule = o.schedule;
  p.micro_batches = c.train.global_batch_size / (c.train.micro_batch_size * p.dp);
  if (p.pp > 1) {
    pipeline::ScheduleOptions so;
    so.kind = o.schedule;
    so.num_ranks = static_cast<int>(p.pp);
    so.num_micro_batches = static_cast<int>(p.micro_batches);
    so.virtual_stages = static_cast<int>(o.virtual_stages);
    p.bubble_fraction = pipeline::theoretical_bubble(so);
  }
  p.flops_per_token = model::training_flops_per_token(m, c.train.seq_len);
  p.load_imbalance = o.imbalance(p.ep);
  const int64_t pp = p.pp, edp = p.dp / p.ep, mb = p.micro_batches;
  const double tokens = static_cast<double>(c.train.micro_batch_size * c.train.seq_len);
  const double a = c.train.dtype == "bf16" ? 2.0 : 4.0;
  const bool dualpipe = o.schedule == Schedule::kDualPipe;
  const bool overlap = dualpipe && p.ep > 1;
  // Overlapping communication gives up the compute units the communication kernels run on.
  const double share = overlap ? 1 - hw.comm_compute_share : 1.0;
  const Rates r{hw.peak_flops * hw.gemm_efficiency * share,
                hw.peak_flops * hw.attention_efficiency * share, hw.memory_bandwidth, &hw};

  // Stages: a contiguous split of the units balancing forward + backward compute.
  std::vector<double> cost;
  for (const auto& u : p.units) cost.push_back(forward_s(u, r) + backward_s(u, r));
  p.stage_first_unit = pipeline::balanced_partition(cost, pp);

  // Communication per micro-batch.
  const bool multi_node = world > hw.ranks_per_node;
  const A2ABytes per_token = a2a_bytes_per_token(m, p.ep, hw.ranks_per_node, a);
  // Dispatch + combine in forward, their transposes in backward: 4 all-to-alls per layer.
  p.comm.a2a_per_layer_intra = 4 * tokens * per_token.intra;
  p.comm.a2a_per_layer_inter = 4 * tokens * per_token.inter;
  const double a2a_layer_s =
      std::max(p.comm.a2a_per_layer_intra / hw.intra_node_bandwidth,
               multi_node ? p.comm.a2a_per_layer_inter / hw.inter_node_bandwidth : 0.0);
  const double p2p_link = multi_node ? hw.inter_node_bandwidth : hw.intra_node_bandwidth;
  const double chunks = o.schedule == Schedule::kInterleaved ? o.virtual_stages : 1;
  const double p2p_bytes = pp > 1 ? 2 * chunks * tokens * m.hidden_size * a : 0.0;

  // Uneven routing: the busiest rank computes (load_imbalance - 1) x the mean routed-expert
  // rows more per MoE layer, forward and backward (at the profile's measured time per expert
  // row, else at the matmul rate), while the others wait for it.
  const double expert_flops = 2.0 * m.top_k * 3.0 * m.hidden_size * m.moe_intermediate_size;
  const double expert_s =
      hw.expert_s_per_row > 0 ? m.top_k * hw.expert_s_per_row : 3 * expert_flops / r.gemm;
  const double extra_expert_s = (p.load_imbalance - 1) * expert_s;
  struct Stage {
    double fwd = 0, bwd = 0, a2a = 0, moe_layers = 0, saved = 0, dense = 0, expert = 0;
    double wait = 0;  // the busiest rank's extra expert compute (uneven routing)
  };
  std::vector<Stage> st(pp);
  for (int64_t s = 0; s < pp; ++s) {
    for (int64_t i = p.stage_first_unit[s]; i < p.stage_first_unit[s + 1]; ++i) {
      const auto& u = p.units[i];
      st[s].fwd += tokens * forward_s(u, r);
      st[s].bwd += tokens * backward_s(u, r);
      st[s].moe_layers += u.moe ? 1 : 0;
      st[s].wait += u.moe ? tokens * extra_expert_s : 0;
      st[s].saved += tokens * u.saved_bytes;
      st[s].dense += u.dense_params;
      st[s].expert += u.expert_params;
    }
    st[s].a2a = st[s].moe_layers * a2a_layer_s * p.load_imbalance;
  }
  // DualPipe: rank s runs stage s for half the micro-batches and stage pp-1-s for the other
  // half, holding both stages' parameters.
  auto device = [&](int64_t s) {
    if (!dualpipe) return st[s];
    const Stage &x = st[s], &y = st[pp - 1 - s];
    return Stage{(x.fwd + y.fwd) / 2,     (x.bwd + y.bwd) / 2,
                 (x.a2a + y.a2a) / 2,     (x.moe_layers + y.moe_layers) / 2,
                 (x.saved + y.saved) / 2, x.dense + y.dense,
                 x.expert + y.expert,     (x.wait + y.wait) / 2};
  };

  // Time: the slowest rank paces the pipeline.
  double worst = -1;
  for (int64_t s = 0; s < pp; ++s) {
    const Stage d = device(s);
    TimeBreakdown t;
    t.forward = d.fwd, t.backward = d.bwd, t.a2a = d.a2a, t.imbalance = d.wait;
    t.pipeline_p2p = p2p_bytes / p2p_link;
    if (dualpipe) {
      const double fb = std::max(d.fwd + d.bwd + d.wait, d.a2a + t.pipeline_p2p);
      t.micro_batch = fb;
      // (PP/2 - 1)(F&B + B - 3W) with W, the weight-gradient half of backward, = B / 2.
      t.bubble = (pp / 2 - 1) * (fb + d.bwd - 1.5 * d.bwd);
    } else {
      t.micro_batch = d.fwd + d.bwd + d.wait + d.a2a + t.pipeline_p2p;
      t.bubble = (pp - 1) * t.micro_batch / chunks;
    }
    // Data parallel: ZeRO-1 reduce-scatters fp32 gradients and all-gathers fp32 parameters;
    // ZeRO-0 all-reduces (the same bytes). Experts sync over the expert-data-parallel group.
    const double dense_local = d.dense, expert_local = d.expert / p.ep;
    const double dp_bytes = 8 * dense_local * (p.dp - 1) / p.dp;
    const double edp_bytes = 8 * expert_local * (edp - 1) / edp;
    const double dp_link =
        p.dp > hw.ranks_per_node ? hw.inter_node_bandwidth : hw.intra_node_bandwidth;
    const double edp_link = (p.ep >= hw.ranks_per_node || edp > hw.ranks_per_node)
                                ? hw.inter_node_bandwidth
                                : hw.intra_node_bandwidth;
    t.dp_comm = dp_bytes / dp_link + (edp > 1 ? edp_bytes / edp_link : 0.0);
    // AdamW on this rank's shard: read p, g, m, v and write p, m, v (fp32), refresh the copy.
    const double zero = c.parallel.zero_stage == 1;
    const double shard = dense_local / (zero ? p.dp : 1) + expert_local / (zero ? edp : 1);
    t.optimizer =
        (28 * shard + (a == 2 ? 2 * (dense_local + expert_local) : 0)) / hw.memory_bandwidth;
    t.step = mb * t.micro_batch + t.bubble + t.dp_comm + t.optimizer;
    if (t.step > worst) {
      worst = t.step;
      p.time = t;
      p.comm.a2a_intra = mb * d.moe_layers * p.comm.a2a_per_layer_intra;
      p.comm.a2a_inter = mb * d.moe_layers * p.comm.a2a_per_layer_inter;
      p.comm.dp = dp_bytes + edp_bytes;
      p.comm.pipeline = mb * p2p_bytes;
    }
  }

  // Memory: the rank with the highest total.
  for (int64_t s = 0; s < pp; ++s) {
    const Stage d = device(s);
    MemoryBreakdown mem;
    mem.stage = s;
    const double local = d.dense + d.expert / p.ep;
    const bool zero = c.parallel.zero_stage == 1;
    mem.weights = a == 2 ? 2 * local : 0;
    mem.master = 4 * local;
    mem.grads = 4 * local;
    mem.optimizer = 8 * (d.dense / (zero ? p.dp : 1) + d.expert / p.ep / (zero ? edp : 1));
    const double held = static_cast<double>(std::min<int64_t>(mb, pp - s));
    if (dualpipe) {
      mem.in_flight = pp + 1;
    } else if (o.schedule == Schedule::kInterleaved) {
      mem.in_flight = held * (1 + (pp - 1.0) / (pp * o.virtual_stages));
    } else {
      mem.in_flight = held;
    }
    mem.activations = d.saved * mem.in_flight;
    p.stage_memory.push_back(mem.total());
    if (s == 0 || mem.total() > p.memory.total()) p.memory = mem;
  }
  p.fits = p.memory.total() <= hw.usable_memory * hw.memory_bytes;

  const double step_tokens = static_cast<double>(c.train.global_batch_size * c.train.seq_len);
  p.tokens_per_s_per_rank = step_tokens / (p.time.step * world);
  p.mfu = p.flops_per_token * p.tokens_per_s_per_rank / hw.peak_flops;
  p.gpu_hours_per_trillion = 1e12 / p.tokens_per_s_per_rank / 3600.0;

  p.assumptions = {
      str("matmuls at ", g3(hw.gemm_efficiency * 100), "% and the attention core at ",
          g3(hw.attention_efficiency * 100), "% of ", g3(hw.peak_flops / 1e12),
          " TFLOP/s; memory-bound kernels at ", g3(hw.memory_bandwidth / 1e9), " GB/s"),
      str("all-to-all: one copy per token and destination node over ",
          g3(hw.inter_node_bandwidth / 1e9), " GB/s, fanned out in the node over ",
          g3(hw.intra_node_bandwidth / 1e9), " GB/s; experts uniform over the allowed nodes"),
      o.load_imbalance > 0 ? str("routing: the busiest expert-parallel rank holds ",
                                 g3(p.load_imbalance), " x the mean expert rows (--load-imbalance)")
      : o.expert_loads.steps.empty()
          ? std::string("routing: uniform over the experts (--expert-load RUN_DIR prices a "
                        "run's uneven routing)")
          : str("routing: the busiest expert-parallel rank holds ", g3(p.load_imbalance),
                " x the mean expert rows (median of ", o.expert_loads.steps.size(),
                " logged steps of ", o.expert_loads.source, ")"),
      overlap ? str("dualpipe overlaps all-to-all and pipeline sends with compute, which loses ",
                    g3(hw.comm_compute_share * 100), "% of the compute units to communication")
              : std::string("no overlap of communication with compute (condensa's step today)"),
      "data-parallel gradient sync and the optimizer step run after the pipeline, not overlapped",
      str("activations in ", c.train.dtype, ", recompute '", m.recompute,
          "'; fp32 master weights, gradients and AdamW moments; ", g3(hw.usable_memory * 100),
          "% of device memory usable"),
  };
  return p;
}

LayoutComparison compare_layouts(const Config& config,
                                 int64_t world,
                                 const HardwareProfile& hw,
                                 const PlanOptions& options,
                                 const std::vector<int64_t>& pp_values,
                                 const std::vector<int64_t>& ep_values) {
  LayoutComparison out;
  auto& plans = out.plans;
  for (int64_t pp : pp_values) {
    for (int64_t ep : ep_values) {
      Config c = config;
      c.parallel.pipeline_parallel = pp;
      c.parallel.expert_parallel = ep;
      try {
        c.validate();
        plans.push_back(make_plan(c, world, hw, options));
      } catch (const ConfigError& e) {
        out.skipped.push_back(str("pp ", pp, " x ep ", ep, ": ", e.what()));
      }
    }
  }
  std::stable_sort(plans.begin(), plans.end(), [](const Plan& x, const Plan& y) {
    if (x.fits != y.fits) return x.fits;
    return x.gpu_hours_per_trillion < y.gpu_hours_per_trillion;
  });
  return out;
}

}  // namespace condensa::trainer::plan
