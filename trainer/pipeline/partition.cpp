// Pipeline stage partition: see partition.h. The dynamic program: best[s][i] is the smallest
// possible largest-run sum when the first s runs cover units [0, i). O(parts x units^2) with
// prefix sums: 61 layers x 16 stages is instant.
#include "trainer/pipeline/partition.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "model/accounting.h"

namespace condensa::trainer::pipeline {

std::vector<double> unit_costs(const model::ModelConfig& m) {
  const auto counts = model::count_parameters(m);
  std::vector<double> cost;
  cost.push_back(counts.embedding);
  for (int64_t l = 0; l < m.num_layers; ++l) cost.push_back(model::layer_active_params(m, l));
  cost.push_back(counts.lm_head + m.hidden_size + counts.mtp_active);
  return cost;
}

std::vector<int64_t> balanced_partition(const std::vector<double>& cost, int64_t parts) {
  const int64_t n = static_cast<int64_t>(cost.size());
  std::vector<double> prefix(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + cost[i];
  const double inf = std::numeric_limits<double>::infinity();
  // best[s][i]: slowest stage when units [0, i) form s stages; cut[s][i]: start of the last.
  std::vector<std::vector<double>> best(parts + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int64_t>> cut(parts + 1, std::vector<int64_t>(n + 1, 0));
  best[0][0] = 0;
  for (int64_t s = 1; s <= parts; ++s) {
    for (int64_t i = s; i <= n; ++i) {
      for (int64_t j = s - 1; j < i; ++j) {
        const double v = std::max(best[s - 1][j], prefix[i] - prefix[j]);
        if (v < best[s][i]) best[s][i] = v, cut[s][i] = j;
      }
    }
  }
  std::vector<int64_t> first(parts + 1);
  first[parts] = n;
  for (int64_t s = parts, i = n; s >= 1; --s) i = first[s - 1] = cut[s][i];
  return first;
}

std::vector<StageLayers> partition_layers(const model::ModelConfig& m,
                                          int64_t num_stages,
                                          const std::vector<int64_t>& layers_per_stage) {
  const int64_t L = m.num_layers, S = num_stages;
  CONDENSA_CHECK(S >= 1, ConfigError, "pipeline stages (", S, ") must be >= 1");
  CONDENSA_CHECK(L >= S, ConfigError, "model.num_layers (", L, ") is less than the pipeline's ", S,
                 " stages (parallel.pipeline_parallel x parallel.virtual_stages): each stage "
                 "needs at least one layer");
  const auto cost = unit_costs(m);
  std::vector<int64_t> counts;
  if (layers_per_stage.empty()) {
    // Layers as units, the embedding weighing on the first and head + MTP on the last.
    std::vector<double> layer_cost(cost.begin() + 1, cost.end() - 1);
    layer_cost.front() += cost.front();
    layer_cost.back() += cost.back();
    const auto first = balanced_partition(layer_cost, S);
    for (int64_t s = 0; s < S; ++s) counts.push_back(first[s + 1] - first[s]);
  } else {
    const auto n = static_cast<int64_t>(layers_per_stage.size());
    CONDENSA_CHECK(n == S, ConfigError, "parallel.pipeline_layers has ", n,
                   " entries; the pipeline has ", S,
                   " stages (parallel.pipeline_parallel x parallel.virtual_stages)");
    for (int64_t s = 0; s < S; ++s) {
      CONDENSA_CHECK(layers_per_stage[s] >= 1, ConfigError, "parallel.pipeline_layers[", s,
                     "] = ", layers_per_stage[s], ": every stage needs at least one layer");
    }
    const int64_t sum =
        std::accumulate(layers_per_stage.begin(), layers_per_stage.end(), int64_t{0});
    CONDENSA_CHECK(sum == L, ConfigError, "parallel.pipeline_layers sums to ", sum,
                   " layers; model.num_layers is ", L);
    counts = layers_per_stage;
  }
  std::vector<StageLayers> stages(S);
  int64_t first = 0;
  for (int64_t s = 0; s < S; ++s) {
    auto& st = stages[s];
    st.first_layer = first;
    st.num_layers = counts[s];
    st.embedding = s == 0;
    st.head = s == S - 1;
    for (int64_t l = first; l < first + counts[s]; ++l) st.active_params += cost[l + 1];
    if (st.embedding) st.active_params += cost.front();
    if (st.head) st.active_params += cost.back();
    first += counts[s];
  }
  return stages;
}

std::string describe_partition(const std::vector<StageLayers>& stages) {
  std::string out;
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& st = stages[s];
    const double p = st.active_params;
    char size[32];
    if (p >= 1e9) {
      std::snprintf(size, sizeof(size), "%.2fB", p / 1e9);
    } else if (p >= 1e6) {
      std::snprintf(size, sizeof(size), "%.2fM", p / 1e6);
    } else {
      std::snprintf(size, sizeof(size), "%.1fK", p / 1e3);
    }
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%sstage %zu: layers %ld-%ld%s%s (%s active)",
                  s == 0 ? "" : " | ", s, static_cast<long>(st.first_layer),
                  static_cast<long>(st.first_layer + st.num_layers - 1),
                  st.embedding ? " + embedding" : "", st.head ? " + head, MTP" : "", size);
    out += buf;
  }
  return out;
}

}  // namespace condensa::trainer::pipeline
