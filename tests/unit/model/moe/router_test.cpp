// Routing maths on hand-made score tables.
#include "model/moe/router.h"

#include <gtest/gtest.h>

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

TEST(Router, GroupLimitedWithBiasUsesTopTwoSum) {
  // 4 groups of 2. Group sums of top-2: g0 = 0.1+0.1, g1 = 0.6+0.0, g2 = 0.35+0.35, g3 = 0.2+0.2.
  // Max-score would pick g1 first; top-2 sum picks g2 (0.7) and g1 (0.6).
  auto scores = t2({{0.1, 0.1, 0.6, 0.0, 0.35, 0.35, 0.2, 0.2}});
  RoutingOptions opt;
  opt.top_k = 3;
  opt.num_groups = 4;
  opt.topk_groups = 2;
  opt.bias_in_use = true;
  auto bias = torch::zeros({8}, torch::kFloat64);
  auto [idx, probs] = select_experts(scores, bias, opt);
  EXPECT_EQ(sorted_row(idx, 0), (std::vector<int64_t>{2, 4, 5}));
  // Without bias the group score is the max: g1 (0.6) and g2 (0.35).
  opt.bias_in_use = false;
  auto [idx2, probs2] = select_experts(scores, torch::Tensor(), opt);
  EXPECT_EQ(sorted_row(idx2, 0), (std::vector<int64_t>{2, 4, 5}));
  // A table where the two rules disagree: g1 = {0.6, 0.0}, g2 = {0.5, 0.45}, g0 = {0.55, 0.0}.
  auto s3 = t2({{0.55, 0.0, 0.6, 0.0, 0.5, 0.45, 0.0, 0.0}});
  opt.top_k = 2;
  opt.bias_in_use = true;
  auto [a, pa] = select_experts(s3, bias, opt);  // sums: g0 .55 g1 .6 g2 .95 -> g2, g1
  EXPECT_EQ(sorted_row(a, 0), (std::vector<int64_t>{2, 4}));
  opt.bias_in_use = false;
  auto [b, pb] = select_experts(s3, torch::Tensor(), opt);  // max: g1 .6, g0 .55 -> experts 2, 0
  EXPECT_EQ(sorted_row(b, 0), (std::vector<int64_t>{0, 2}));
}

TEST(Router, NodeLimitedRoutingKeepsAtMostMNodes) {
  // 8 experts on 4 nodes (2 each); top-4 over at most 2 nodes, node score = sum of top 2.
  auto scores = t2({{0.9, 0.0, 0.8, 0.0, 0.5, 0.5, 0.45, 0.45}});
  RoutingOptions opt;
  opt.top_k = 4;
  opt.expert_node = {0, 0, 1, 1, 2, 2, 3, 3};
  opt.max_nodes = 2;
  auto [idx, probs] = select_experts(scores, torch::Tensor(), opt);
  // Node scores: n0 .9, n1 .8, n2 1.0, n3 .9 -> n2 and one of n0/n3 (tie .9; topk picks first).
  auto chosen = sorted_row(idx, 0);
  std::set<int64_t> nodes;
  for (auto e : chosen) nodes.insert(opt.expert_node[e]);
  EXPECT_LE(nodes.size(), 2u);
  EXPECT_TRUE(nodes.count(2));
  // Unlimited would take 0 (.9), 2 (.8), 4, 5 (.5): three nodes.
  opt.max_nodes = 0;
  auto [idx2, p2] = select_experts(scores, torch::Tensor(), opt);
  EXPECT_EQ(sorted_row(idx2, 0), (std::vector<int64_t>{0, 2, 4, 5}));
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
