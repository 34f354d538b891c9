// Pipeline stage partition: the balanced split against a brute force over every contiguous
// split, the placement of the embedding and head, explicit counts and their errors.
#include "trainer/pipeline/partition.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>

#include "common/error.h"
#include "model/accounting.h"
#include "tests/support/test_util.h"
#include "trainer/config/config.h"

namespace condensa::trainer::pipeline {
namespace {

using ::testing::HasSubstr;

model::ModelConfig small_model(int64_t layers, int64_t dense, int64_t vocab) {
  model::ModelConfig m;
  m.vocab_size = vocab;
  m.hidden_size = 64;
  m.num_layers = layers;
  m.num_dense_layers = dense;
  m.intermediate_size = 512;  // dense layers weigh more than MoE ones here
  m.num_heads = 2;
  m.q_lora_rank = 0;
  m.kv_lora_rank = 16;
  m.qk_nope_head_dim = 8;
  m.qk_rope_head_dim = 8;
  m.v_head_dim = 8;
  m.num_routed_experts = 8;
  m.num_shared_experts = 1;
  m.top_k = 2;
  m.moe_intermediate_size = 32;
  m.mtp_depth = 1;
  return m;
}

// The shipped DeepSeek-V3 config's model (61 layers, 3 dense, 256 experts top-8, MTP 1).
model::ModelConfig deepseek_v3() {
  return load_config(testing::source_path("configs/deepseek-v3-671b.yaml"), {}).model;
}

double largest(const std::vector<StageLayers>& stages) {
  double c = 0;
  for (const auto& s : stages) c = std::max(c, s.active_params);
  return c;
}

// The smallest largest-stage cost over every split of the layers into `stages` non-empty
// contiguous runs, by enumeration.
double brute_force_best(const model::ModelConfig& m, int64_t stages) {
  const auto cost = unit_costs(m);
  const int64_t L = m.num_layers;
  double best = std::numeric_limits<double>::infinity();
  std::vector<int64_t> counts;
  std::function<void(int64_t)> rec = [&](int64_t used) {
    const auto s = static_cast<int64_t>(counts.size());
    if (s == stages) {
      if (used != L) return;
      double worst = 0;
      int64_t layer = 0;
      for (int64_t i = 0; i < stages; ++i) {
        double c = (i == 0 ? cost.front() : 0) + (i == stages - 1 ? cost.back() : 0);
        for (int64_t k = 0; k < counts[i]; ++k) c += cost[1 + layer++];
        worst = std::max(worst, c);
      }
      best = std::min(best, worst);
      return;
    }
    for (int64_t n = 1; used + n <= L - (stages - s - 1); ++n) {
      counts.push_back(n);
      rec(used + n);
      counts.pop_back();
    }
  };
  rec(0);
  return best;
}

TEST(PipelinePartition, UnitCostsSumToTheActivatedParameters) {
  const auto m = deepseek_v3();
  const auto cost = unit_costs(m);
  ASSERT_EQ(cost.size(), static_cast<size_t>(m.num_layers + 2));
  double sum = 0;
  for (double c : cost) sum += c;
  const auto counts = model::count_parameters(m);
  EXPECT_NEAR(sum, counts.active + counts.mtp_active, 1e-9 * sum);
}

TEST(PipelinePartition, BalancedSplitIsOptimalAgainstEveryContiguousSplit) {
  // Heavy embedding and head (large vocabulary), light ones, dense layers first.
  for (int64_t vocab : {259, 20000}) {
    for (int64_t layers : {5, 9}) {
      const auto m = small_model(layers, 2, vocab);
      for (int64_t stages = 1; stages <= std::min<int64_t>(layers, 5); ++stages) {
        const auto split = partition_layers(m, stages);
        EXPECT_NEAR(largest(split), brute_force_best(m, stages), 1e-6)
            << "vocab " << vocab << ", " << layers << " layers, " << stages
            << " stages: " << describe_partition(split);
      }
    }
  }
}

TEST(PipelinePartition, StagesCoverTheLayersInOrderWithEmbeddingFirstAndHeadLast) {
  const auto m = deepseek_v3();
  const auto stages = partition_layers(m, 16);
  ASSERT_EQ(stages.size(), 16u);
  int64_t next = 0;
  for (size_t s = 0; s < stages.size(); ++s) {
    EXPECT_EQ(stages[s].first_layer, next) << s;
    EXPECT_GE(stages[s].num_layers, 1) << s;
    EXPECT_EQ(stages[s].embedding, s == 0) << s;
    EXPECT_EQ(stages[s].head, s + 1 == stages.size()) << s;
    next += stages[s].num_layers;
  }
  EXPECT_EQ(next, 61);
  // The embedding (0.93B) and head + MTP module (1.5B) weigh about one to three MoE layers
  // (0.4B activated each): the end stages take fewer layers than the middle ones.
  EXPECT_LT(stages.front().num_layers, stages[8].num_layers) << describe_partition(stages);
  EXPECT_LT(stages.back().num_layers, stages[8].num_layers) << describe_partition(stages);
}

TEST(PipelinePartition, DescriptionNamesEachStage) {
  const std::string d = describe_partition(partition_layers(deepseek_v3(), 16));
  EXPECT_THAT(d, HasSubstr("stage 0: layers 0-2 + embedding (2.68B active) | stage 1: layers 3-6"));
  EXPECT_THAT(d, HasSubstr(" | stage 15: layers 59-60 + head, MTP (2.79B active)"));
}

TEST(PipelinePartition, ExplicitCountsAreUsedAsGiven) {
  const auto m = small_model(9, 2, 259);
  const auto stages = partition_layers(m, 3, {1, 5, 3});
  ASSERT_EQ(stages.size(), 3u);
  EXPECT_EQ(stages[0].first_layer, 0);
  EXPECT_EQ(stages[1].first_layer, 1);
  EXPECT_EQ(stages[2].first_layer, 6);
  EXPECT_EQ(stages[2].num_layers, 3);
  const auto cost = unit_costs(m);
  EXPECT_DOUBLE_EQ(stages[0].active_params, cost[0] + cost[1]);
  EXPECT_DOUBLE_EQ(stages[2].active_params, cost[7] + cost[8] + cost[9] + cost[10]);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(PipelinePartition, ErrorsNameTheKeysAndValues) {
  const auto m = small_model(4, 1, 259);
  EXPECT_THAT(error_of([&] { partition_layers(m, 5); }),
              HasSubstr("model.num_layers (4) is less than the pipeline's 5 stages"));
  EXPECT_THAT(error_of([&] {
                partition_layers(m, 2, {1, 2, 1});
              }),
              HasSubstr("parallel.pipeline_layers has 3 entries; the pipeline has 2 stages"));
  EXPECT_THAT(error_of([&] {
                partition_layers(m, 2, {4, 0});
              }),
              HasSubstr("parallel.pipeline_layers[1] = 0"));
  EXPECT_THAT(error_of([&] {
                partition_layers(m, 2, {2, 3});
              }),
              HasSubstr("parallel.pipeline_layers sums to 5 layers; model.num_layers is 4"));
}

}  // namespace
}  // namespace condensa::trainer::pipeline
