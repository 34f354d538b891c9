// Memory estimate of a training run: see memory.h for what is counted and why it is a bound.
#include "trainer/config/memory.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>

#include "common/error.h"
#include "model/accounting.h"

namespace condensa::trainer {

namespace {

constexpr double kFp32 = 4;

// Bytes per parameter: fp32 weight and gradient, and AdamW's two fp32 moments divided over the
// ranks that shard them (ZeRO-1; 1 = replicated).
double bytes_per_param(double optimizer_shards) { return 2 * kFp32 + 2 * kFp32 / optimizer_shards; }

// The cgroup memory limit of this process (v2, then v1); 0 when none is set.
double cgroup_limit_bytes() {
  for (const char* file :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(file);
    std::string text;
    if (!(in >> text) || text == "max") continue;
    try {
      const double v = std::stod(text);
      if (v > 0) return v;
    } catch (const std::exception&) {
    }
  }
  return 0;
}

}  // namespace

double MemoryEstimate::total_bytes() const {
  double sum = 0;
  for (const auto& t : terms) sum += t.bytes;
  return sum;
}

MemoryEstimate estimate_memory(const Config& cfg, int64_t world_size) {
  const auto& m = cfg.model;
  const auto c = model::count_parameters(m);
  const double pp = static_cast<double>(cfg.parallel.pipeline_parallel);
  const double dp = static_cast<double>(cfg.data_parallel(world_size));
  const double ep = static_cast<double>(cfg.parallel.expert_parallel);
  const bool zero1 = cfg.parallel.zero_stage == 1;
  const double dense_bytes = bytes_per_param(zero1 ? dp : 1) / pp;
  const double expert_bytes = bytes_per_param(zero1 ? dp / ep : 1) / pp;
  const double mb = static_cast<double>(cfg.train.micro_batch_size);
  const double S = static_cast<double>(cfg.train.seq_len);

  MemoryEstimate e;
  auto add = [&e](std::string what, std::string keys, double bytes) {
    e.terms.push_back({std::move(what), std::move(keys), bytes});
  };
  add("embedding + LM head",
      str("model.vocab_size (", m.vocab_size, ") x model.hidden_size (", m.hidden_size, ")"),
      (c.embedding + c.lm_head) * dense_bytes);
  add("attention",
      str("model.num_layers (", m.num_layers, ") x model.num_heads (", m.num_heads,
          ") x model.hidden_size (", m.hidden_size, ") and the head dims / lora ranks"),
      c.attention * dense_bytes);
  add("dense MLPs",
      str("model.num_dense_layers (", m.num_dense_layers, ") x model.intermediate_size (",
          m.intermediate_size, ") x model.hidden_size (", m.hidden_size, ")"),
      c.dense_mlp * dense_bytes);
  add("experts",
      str("MoE layers (", m.num_layers - m.num_dense_layers, ") x (model.num_routed_experts (",
          m.num_routed_experts, ") / parallel.expert_parallel (", cfg.parallel.expert_parallel,
          ") + model.num_shared_experts (", m.num_shared_experts,
          ")) x model.moe_intermediate_size (", m.moe_intermediate_size, ") x model.hidden_size (",
          m.hidden_size, ")"),
      c.routed_experts / ep * expert_bytes + (c.shared_experts + c.routers) * dense_bytes);
  add("MTP modules", str("model.mtp_depth (", m.mtp_depth, ")"), c.mtp_total * dense_bytes);
  add("logits of one micro-batch",
      str("train.micro_batch_size (", cfg.train.micro_batch_size, ") x train.seq_len (",
          cfg.train.seq_len, ") x model.vocab_size (", m.vocab_size, ")"),
      mb * S * static_cast<double>(m.vocab_size) * kFp32 * 2 * (1.0 + m.mtp_depth));
  add("attention scores of one layer",
      str("train.micro_batch_size (", cfg.train.micro_batch_size, ") x model.num_heads (",
          m.num_heads, ") x train.seq_len (", cfg.train.seq_len, ")^2"),
      mb * static_cast<double>(m.num_heads) * S * S * kFp32);
  add("hidden states",
      str("train.micro_batch_size (", cfg.train.micro_batch_size, ") x train.seq_len (",
          cfg.train.seq_len, ") x model.hidden_size (", m.hidden_size, ") x model.num_layers (",
          m.num_layers, ")"),
      mb * S * static_cast<double>(m.hidden_size) * static_cast<double>(m.num_layers) * kFp32 * 4);
  // fp64 angles, cos and sin of max_seq_len x rope_dim / 2.
  add("RoPE tables",
      str("model.max_seq_len (", m.max_seq_len, ") x model.qk_rope_head_dim (", m.qk_rope_head_dim,
          ")"),
      static_cast<double>(m.max_seq_len) * static_cast<double>(m.qk_rope_head_dim) / 2 * 8 * 3);
  return e;
}

void check_memory_fits(const MemoryEstimate& estimate,
                       int64_t ranks_on_node,
                       double machine_bytes) {
  const double per_rank = estimate.total_bytes();
  const double need = per_rank * static_cast<double>(std::max<int64_t>(1, ranks_on_node));
  if (machine_bytes <= 0 || need <= machine_bytes) return;
  std::vector<MemoryTerm> terms = estimate.terms;
  std::sort(terms.begin(), terms.end(),
            [](const MemoryTerm& a, const MemoryTerm& b) { return a.bytes > b.bytes; });
  std::string largest;
  for (size_t i = 0; i < terms.size() && i < 3 && terms[i].bytes > 0; ++i) {
    largest += str(i ? "; " : "", terms[i].what, " ", format_bytes(terms[i].bytes), " (",
                   terms[i].keys, ")");
  }
  throw ConfigError(str("the run needs at least ", format_bytes(per_rank), " per rank",
                        ranks_on_node > 1 ? str(" x ", ranks_on_node, " ranks on this node") : "",
                        ", more than this machine's ", format_bytes(machine_bytes),
                        " of memory; largest: ", largest));
}

double machine_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  double bytes = pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0;
  const double limit = cgroup_limit_bytes();
  if (limit > 0 && (bytes == 0 || limit < bytes)) bytes = limit;
  return bytes;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) bytes /= 1024, ++u;
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

}  // namespace condensa::trainer
