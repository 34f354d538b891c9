// Routing maths on hand-made score tables.
#include "model/moe/router.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "model/autocast.h"
#include "model/moe/balance.h"

using namespace condensa::model;

namespace {
torch::Tensor t2(std::vector<std::vector<double>> rows) {
  std::vector<torch::Tensor> r;
  for (auto& row : rows) r.push_back(torch::tensor(row, torch::kFloat64));
  return torch::stack(r);
}
std::vector<int64_t> sorted_row(const torch::Tensor& idx, int64_t t) {
  auto row = std::get<0>(idx[t].sort());
  return std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
}
}  // namespace

TEST(Router, TopKNormalisedAndScaled) {
  auto scores = t2({{0.9, 0.1, 0.5, 0.3}});
  RoutingOptions opt;
  opt.top_k = 2;
  opt.route_scale = 2.5;
  auto [idx, probs] = select_experts(scores, torch::Tensor(), opt);
  EXPECT_EQ(sorted_row(idx, 0), (std::vector<int64_t>{0, 2}));
  // 0.9 / 1.4 * 2.5 and 0.5 / 1.4 * 2.5, in selection order (descending).
  EXPECT_NEAR(probs[0][0].item<double>(), 0.9 / 1.4 * 2.5, 1e-12);
  EXPECT_NEAR(probs[0][1].item<double>(), 0.5 / 1.4 * 2.5, 1e-12);
}

TEST(Router, WithoutNormalisationKeepsRawScores) {
  auto scores = t2({{0.9, 0.1, 0.5, 0.3}});
  RoutingOptions opt;
  opt.top_k = 2;
  opt.norm_topk_prob = false;
  auto [idx, probs] = select_experts(scores, torch::Tensor(), opt);
  EXPECT_NEAR(probs[0][0].item<double>(), 0.9, 1e-12);
  EXPECT_NEAR(probs[0][1].item<double>(), 0.5, 1e-12);
}

TEST(Router, BiasChangesSelectionButNotWeights) {
  auto scores = t2({{0.9, 0.1, 0.5, 0.3}});
  auto bias = torch::tensor({0.0, 0.0, -1.0, 0.5}, torch::kFloat64);
  RoutingOptions opt;
  opt.top_k = 2;
  opt.bias_in_use = true;
  auto [idx, probs] = select_experts(scores, bias, opt);
  // Biased: {0.9, 0.1, -0.5, 0.8} -> experts 0 and 3; weights from unbiased 0.9 and 0.3.
  EXPECT_EQ(sorted_row(idx, 0), (std::vector<int64_t>{0, 3}));
  EXPECT_NEAR(probs.sum().item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(probs[0][0].item<double>(), 0.9 / 1.2, 1e-12);
  EXPECT_NEAR(probs[0][1].item<double>(), 0.3 / 1.2, 1e-12);
}

TEST(Router, GroupLimitedWithBiasRanksGroupsByTopTwoBiasedSum) {
  // 4 groups of 2 experts, top-2 experts from the best 2 groups. Biased scores (s + b):
  //   g0 {.70, .00}  g1 {.45, .40}  g2 {.50, .30}  g3 {.10, .05}
  // The bias pulls g3 down from unbiased {.90, .85}. Each wrong rule picks other groups:
  //   top-2 biased sum (DeepSeek-V3): g1 .85, g2 .80       -> experts 4 (.50), 2 (.45)
  //   top-1 biased score:             g0 .70, g2 .50       -> experts 0, 4
  //   top-2 unbiased sum:             g3 1.75, g1 .85      -> experts 2, 3
  //   top-1 unbiased score:           g3 .90, g0 .70       -> experts 0, 6
  auto scores = t2({{0.70, 0.00, 0.45, 0.40, 0.50, 0.30, 0.90, 0.85}});
  auto bias = torch::tensor({0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.8, -0.8}, torch::kFloat64);
  RoutingOptions opt;
  opt.top_k = 2;
  opt.num_groups = 4;
  opt.topk_groups = 2;
  opt.bias_in_use = true;
  auto [idx, probs] = select_experts(scores, bias, opt);
  EXPECT_EQ(sorted_row(idx, 0), (std::vector<int64_t>{2, 4}));
  // Gate weights: unbiased scores of the chosen experts, in selection order (4 first).
  EXPECT_NEAR(probs[0][0].item<double>(), 0.50 / 0.95, 1e-6);
  EXPECT_NEAR(probs[0][1].item<double>(), 0.45 / 0.95, 1e-6);
}

TEST(Router, GroupLimitedWithoutBiasRanksGroupsByMaxScore) {
  // No bias (DeepSeek-V3 inference code: group score = max). g0 {.55, 0}, g1 {.6, 0},
  // g2 {.5, .45}: max picks g1, g0 -> experts 2, 0; a top-2 sum would pick g2, g1 -> 2, 4.
  auto scores = t2({{0.55, 0.0, 0.6, 0.0, 0.5, 0.45, 0.0, 0.0}});
  RoutingOptions opt;
  opt.top_k = 2;
  opt.num_groups = 4;
  opt.topk_groups = 2;
  auto [idx, probs] = select_experts(scores, torch::Tensor(), opt);
  EXPECT_EQ(sorted_row(idx, 0), (std::vector<int64_t>{0, 2}));
}

TEST(Router, NodeLimitedRanksNodesBySumOfTopKOverMBiasedScores) {
  // 12 experts on 3 nodes of 4; top-4 on at most M = 2 nodes, so a node's score is the sum of
  // its top 4/2 = 2 biased scores. Biased scores (s + b):
  //   A {.90, .05, .04, .03}  B {.60, .58, .02, .01}  C {.62, .30, .29, .28}
  // The bias pulls C down from unbiased {.92, .60, .59, .58}. Each wrong rule picks other nodes:
  //   top-2 biased sum:   A .95, B 1.18, C .92 -> A, B -> experts 0, 4, 5, 1
  //   top-4 (= top_k):    A 1.02, B 1.21, C 1.49 -> B, C -> experts 8, 4, 5, 9
  //   top-1 biased score: A .90, B .60, C .62 -> A, C -> experts 0, 8, 9, 10
  //   top-2 unbiased sum: A .95, B 1.18, C 1.52 -> B, C -> experts 4, 5, 8, 9
  auto scores = t2({{0.90, 0.05, 0.04, 0.03, 0.60, 0.58, 0.02, 0.01, 0.92, 0.60, 0.59, 0.58}});
  auto bias = torch::zeros({12}, torch::kFloat64);
  bias.narrow(0, 8, 4).fill_(-0.3);
  RoutingOptions opt;
  opt.top_k = 4;
  opt.bias_in_use = true;
  opt.expert_node = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2};
  opt.max_nodes = 2;
  auto [idx, probs] = select_experts(scores, bias, opt);
  EXPECT_EQ(sorted_row(idx, 0), (std::vector<int64_t>{0, 1, 4, 5}));
  // Gate weights: the unbiased scores .90, .60, .58, .05 (selection order), normalised.
  const double sum = 0.90 + 0.60 + 0.58 + 0.05;
  EXPECT_NEAR(probs[0][0].item<double>(), 0.90 / sum, 1e-6);
  EXPECT_NEAR(probs[0][3].item<double>(), 0.05 / sum, 1e-6);
  // Without the limit the same biased scores take experts on all three nodes.
  opt.max_nodes = 0;
  auto [idx2, p2] = select_experts(scores, bias, opt);
  EXPECT_EQ(sorted_row(idx2, 0), (std::vector<int64_t>{0, 4, 5, 8}));
}

TEST(Router, NodeLimitedKeepsAtMostMNodesOnRandomScores) {
  // Random biased tables, 16 experts on 4 nodes, top-4 on at most 2 nodes: against a plain
  // per-token reference (node score = sum of its 2 best biased scores, best 2 nodes, then
  // the best 4 experts inside them).
  torch::manual_seed(17);
  const int64_t T = 50, E = 16, K = 4, M = 2, per_node = 4;
  auto scores = torch::rand({T, E}, torch::kFloat64);
  auto bias = torch::randn({E}, torch::kFloat64) * 0.2;
  RoutingOptions opt;
  opt.top_k = K;
  opt.bias_in_use = true;
  opt.max_nodes = M;
  for (int64_t e = 0; e < E; ++e) opt.expert_node.push_back(e / per_node);
  auto [idx, probs] = select_experts(scores, bias, opt);
  // The router selects in fp32.
  auto biased = (scores.to(torch::kFloat32) + bias.to(torch::kFloat32)).to(torch::kFloat64);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> b(E);
    for (int64_t e = 0; e < E; ++e) b[e] = biased[t][e].item<double>();
    std::vector<std::pair<double, int64_t>> node_score;
    for (int64_t n = 0; n < E / per_node; ++n) {
      std::vector<double> v(b.begin() + n * per_node, b.begin() + (n + 1) * per_node);
      std::sort(v.rbegin(), v.rend());
      node_score.push_back({v[0] + v[1], n});
    }
    std::sort(node_score.rbegin(), node_score.rend());
    std::vector<std::pair<double, int64_t>> candidates;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = e / per_node;
      if (n == node_score[0].second || n == node_score[1].second) candidates.push_back({b[e], e});
    }
    std::sort(candidates.rbegin(), candidates.rend());
    std::vector<int64_t> expected;
    for (int64_t k = 0; k < K; ++k) expected.push_back(candidates[k].second);
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(sorted_row(idx, t), expected) << "token " << t;
  }
}

TEST(Router, CapacityDropsLatestAssignments) {
  // 4 tokens all choosing expert 0 (k=1), 2 experts, capacity factor 1 -> capacity 2.
  auto idx = torch::tensor({0, 0, 1, 0}, torch::kInt64).view({4, 1});
  auto probs = torch::ones({4, 1});
  apply_capacity(idx, probs, 2, 1.0);
  EXPECT_EQ(idx.view(-1)[0].item<int64_t>(), 0);
  EXPECT_EQ(idx.view(-1)[1].item<int64_t>(), 0);
  EXPECT_EQ(idx.view(-1)[2].item<int64_t>(), 1);
  EXPECT_EQ(idx.view(-1)[3].item<int64_t>(), -1);
  EXPECT_EQ(probs.view(-1)[3].item<float>(), 0.0f);
}

TEST(Router, SequenceBalanceLossHandComputed) {
  // One sequence, 2 tokens, 2 experts, k = 1. scores: t0 = (0.6, 0.2), t1 = (0.3, 0.3).
  // normalised: t0 = (.75, .25), t1 = (.5, .5); P = (.625, .375).
  // choices: t0 -> 0, t1 -> 1: f_i = E/(K*S) * count = 2/2 * 1 = 1 each. loss = .625 + .375 = 1.
  auto scores = t2({{0.6, 0.2}, {0.3, 0.3}});
  auto idx = torch::tensor({0, 1}, torch::kInt64).view({2, 1});
  EXPECT_NEAR(sequence_balance_loss(scores, idx, 1, 1).item<double>(), 1.0, 1e-12);
  // Both choose expert 0: f = (2, 0): loss = 2 * .625 = 1.25.
  auto idx2 = torch::tensor({0, 0}, torch::kInt64).view({2, 1});
  EXPECT_NEAR(sequence_balance_loss(scores, idx2, 1, 1).item<double>(), 1.25, 1e-12);
  // Two sequences average: (1 + 1.25) / 2 with the second sequence a copy choosing 0, 0.
  auto s2 = torch::cat({scores, scores});
  auto i2 = torch::cat({idx, idx2});
  EXPECT_NEAR(sequence_balance_loss(s2, i2, 2, 1).item<double>(), 1.125, 1e-12);
}

TEST(Router, BiasUpdateFollowsTheSignRule) {
  // loads (10, 2, 6, 6): mean 6 -> overloaded expert 0 goes down, underloaded 1 up, 2 and 3 stay.
  auto bias = torch::tensor({0.5, -0.25, 0.0, 1.0}, torch::kFloat32);
  update_balance_bias(bias, torch::tensor({10, 2, 6, 6}, torch::kInt64), 0.001);
  EXPECT_FLOAT_EQ(bias[0].item<float>(), 0.499f);
  EXPECT_FLOAT_EQ(bias[1].item<float>(), -0.249f);
  EXPECT_FLOAT_EQ(bias[2].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(bias[3].item<float>(), 1.0f);
}

TEST(Router, ScoresStayFp32UnderBf16Autocast) {
  // bf16 autocast would compute the gate matmul in bf16: scores with 8 mantissa bits tie and
  // the 1e-3 bias steps vanish in rounding. The router opts out of autocast.
  ModelConfig c;
  c.hidden_size = 64;
  c.num_routed_experts = 16;
  c.top_k = 4;
  torch::manual_seed(8);
  Router r(c);
  {
    torch::NoGradGuard g;
    r->weight.normal_(0, 0.05);
  }
  auto x = torch::randn({32, 64});
  auto ref = r(x);
  AutocastState s = AutocastState::current();
  s.cpu_enabled = true;
  s.cpu_dtype = at::kBFloat16;
  RouterOutput got;
  {
    AutocastScope scope(s);
    got = r(x);
  }
  EXPECT_EQ(got.logits_TE.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(got.logits_TE, ref.logits_TE));
  EXPECT_TRUE(torch::equal(got.topk_idx_TK, ref.topk_idx_TK));
}
