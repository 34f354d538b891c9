// The capacity planner (trainer/plan/): its FLOPs and parameters against model/accounting, its
// memory and all-to-all bytes against closed forms written out here, the pipeline partition
// against brute force, profile files, and the DeepSeek-V3 cost check: the published 180,000
// H800 GPU-hours per trillion tokens, predicted from efficiencies set from microbenchmarks
// (docs/plan.md), never fitted to that figure.
#include "trainer/plan/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <random>

#include "common/error.h"
#include "model/accounting.h"
#include "tests/support/test_util.h"
#include "trainer/config/config.h"
#include "trainer/plan/measure.h"

using namespace condensa::trainer;
using namespace condensa::trainer::plan;
using condensa::testing::source_path;
using condensa::testing::TempDir;
namespace model = condensa::model;

namespace {

Config load(const std::string& rel, const std::vector<std::string>& sets = {}) {
  return load_config(source_path(rel), sets);
}

// A profile whose every rate is a round number, so expected times are easy to write down.
HardwareProfile round_profile() {
  HardwareProfile h;
  h.name = "round";
  h.peak_flops = 1e12;
  h.gemm_efficiency = 0.5;
  h.attention_efficiency = 0.25;
  h.memory_bytes = 1e12;
  h.memory_bandwidth = 1e11;
  h.intra_node_bandwidth = 1e10;
  h.inter_node_bandwidth = 1e9;
  h.ranks_per_node = 8;
  return h;
}

double sum_gemm_and_attention(const std::vector<UnitCost>& units) {
  double f = 0;
  for (const auto& u : units) f += 3 * (u.gemm_flops + u.attention_flops);
  return f;
}

}  // namespace

TEST(Plan, UnitFlopsEqualTheMfuAccounting) {
  for (const char* f : {"configs/deepseek-v3-671b.yaml", "configs/quickstart.yaml",
                        "configs/deepseek-v2-lite-16b.yaml"}) {
    Config c = load(f);
    const double want = condensa::model::training_flops_per_token(c.model, c.train.seq_len);
    EXPECT_NEAR(sum_gemm_and_attention(unit_costs(c, true)), want, 1e-9 * want) << f;
  }
}

TEST(Plan, UnitParametersEqualTheParameterCount) {
  for (const char* f : {"configs/deepseek-v3-671b.yaml", "configs/quickstart.yaml"}) {
    Config c = load(f);
    const auto counts = condensa::model::count_parameters(c.model);
    double dense = 0, expert = 0;
    for (const auto& u : unit_costs(c, true)) dense += u.dense_params, expert += u.expert_params;
    const double want = counts.total + counts.mtp_total;
    EXPECT_NEAR(dense + expert, want, 1e-9 * want) << f;
    const int64_t moe_blocks = c.model.num_layers + c.model.mtp_depth - c.model.num_dense_layers;
    EXPECT_NEAR(expert,
                moe_blocks * c.model.num_routed_experts * 3.0 * c.model.hidden_size *
                    c.model.moe_intermediate_size,
                1)
        << f;
  }
}

TEST(Plan, BalancedPartitionMatchesBruteForce) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> cost(0.1, 3.0);
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 3 + trial % 6;
    std::vector<double> c(n);
    for (auto& x : c) x = cost(rng);
    for (int parts = 1; parts <= std::min(n, 4); ++parts) {
      // Brute force over every placement of parts - 1 cuts.
      double best = 1e30;
      std::vector<int> cuts(parts - 1);
      std::function<void(int, int)> rec = [&](int k, int from) {
        if (k == parts - 1) {
          double worst = 0, run = 0;
          int next = 0;
          for (int i = 0; i < n; ++i) {
            if (next < parts - 1 && i == cuts[next]) worst = std::max(worst, run), run = 0, ++next;
            run += c[i];
          }
          best = std::min(best, std::max(worst, run));
          return;
        }
        for (int i = from; i <= n - (parts - 1 - k); ++i) cuts[k] = i, rec(k + 1, i + 1);
      };
      rec(0, 1);
      const auto first = balanced_partition(c, parts);
      ASSERT_EQ(first.size(), static_cast<size_t>(parts + 1));
      double worst = 0;
      for (int s = 0; s < parts; ++s) {
        ASSERT_LT(first[s], first[s + 1]) << "empty stage";
        double run = 0;
        for (int64_t i = first[s]; i < first[s + 1]; ++i) run += c[i];
        worst = std::max(worst, run);
      }
      EXPECT_NEAR(worst, best, 1e-12) << "n " << n << " parts " << parts;
    }
  }
}

TEST(Plan, MemoryOfOneStageFromTheParameterCount) {
  // pp 1: every parameter on every rank. fp32 compute: no bf16 copy; master 4 B, grads 4 B,
  // AdamW 8 B per parameter, the dense ones sharded over dp 4 with ZeRO-1, the experts split
  // over ep 2 and their state over dp / ep = 2.
  Config c = load("configs/quickstart.yaml", {"parallel.expert_parallel=2", "parallel.zero_stage=1",
                                              "train.dtype=fp32", "train.micro_batch_size=4"});
  const auto counts = condensa::model::count_parameters(c.model);
  const double all = counts.total + counts.mtp_total;
  double expert = 0;
  for (const auto& u : unit_costs(c, true)) expert += u.expert_params;
  const double dense = all - expert;
  const Plan p = make_plan(c, 4, round_profile(), {});
  const double local = dense + expert / 2;
  EXPECT_DOUBLE_EQ(p.memory.weights, 0);
  EXPECT_NEAR(p.memory.master, 4 * local, 1e-6);
  EXPECT_NEAR(p.memory.grads, 4 * local, 1e-6);
  EXPECT_NEAR(p.memory.optimizer, 8 * (dense / 4 + expert / 2 / 2), 1e-6);
  EXPECT_DOUBLE_EQ(p.memory.in_flight, 1);
  // bf16 adds the 2-byte compute copy; ZeRO-0 keeps the whole AdamW state.
  Config b = c;
  b.train.dtype = "bf16";
  b.parallel.zero_stage = 0;
  const Plan q = make_plan(b, 4, round_profile(), {});
  EXPECT_NEAR(q.memory.weights, 2 * local, 1e-6);
  EXPECT_NEAR(q.memory.optimizer, 8 * local, 1e-6);
  // 2-byte activations, except the heads' fp32 logits (vocab x 4 B per token and head).
  const double T = c.train.micro_batch_size * c.train.seq_len;
  const double logits = (1 + c.model.mtp_depth) * 4.0 * c.model.vocab_size * T;
  EXPECT_NEAR(q.memory.activations, (p.memory.activations - logits) / 2 + logits, 1e-6);
}

TEST(Plan, UnitsTimedWholeReplaceTheRatesForLayersAndHeads) {
  // quickstart: 1 dense layer, 3 MoE layers, one MoE MTP module, one LM head. With whole-unit
  // times in the profile, compute per micro-batch is tokens x (dense + 3 moe + (moe + head) +
  // head) + the embedding's traffic at the memory rate; forward a third, backward two thirds.
  Config c = load("configs/quickstart.yaml", {"train.dtype=fp32"});
  HardwareProfile h = round_profile();
  h.dense_layer_s_per_token = 3e-6;
  h.moe_layer_s_per_token = 6e-6;
  h.head_s_per_token = 1.5e-6;
  const Plan p = make_plan(c, 1, h, {});
  const double T = static_cast<double>(c.train.micro_batch_size * c.train.seq_len);
  const double embedding = T * c.model.hidden_size * 4 / h.memory_bandwidth;
  const double whole = T * (3e-6 + 3 * 6e-6 + (6e-6 + 1.5e-6) + 1.5e-6);
  EXPECT_NEAR(p.time.forward, whole / 3 + embedding, 1e-12);
  EXPECT_NEAR(p.time.backward, 2 * whole / 3 + 2 * embedding, 1e-12);
  // Without them the same profile times units from FLOPs and bytes: a different number.
  const Plan q = make_plan(c, 1, round_profile(), {});
  EXPECT_GT(std::abs(q.time.forward - p.time.forward), 1e-3 * p.time.forward);
  // Units 25% slower inside the whole model than alone: every unit's time scales, the
  // embedding's traffic does not.
  h.in_model_factor = 1.25;
  const Plan r = make_plan(c, 1, h, {});
  EXPECT_NEAR(r.time.forward, 1.25 * whole / 3 + embedding, 1e-12);
  EXPECT_NEAR(r.time.backward, 2 * 1.25 * whole / 3 + 2 * embedding, 1e-12);
}

TEST(Plan, RecomputeTradesActivationsForBackwardTime) {
  Config c = load("configs/deepseek-v3-671b.yaml");
  auto with = [&](const std::string& rc) {
    Config x = c;
    x.model.recompute = rc;
    return make_plan(x, 2048, builtin_profile("h800"), {});
  };
  const Plan none = with("none"), norm_up = with("norm_up"), full = with("full");
  EXPECT_GT(none.memory.activations, norm_up.memory.activations);
  EXPECT_GT(norm_up.memory.activations, full.memory.activations);
  EXPECT_LT(none.time.backward, norm_up.time.backward);
  EXPECT_LT(norm_up.time.backward, full.time.backward);
}

TEST(Plan, AllToAllBytesFollowTheRouting) {
  // top-1: each token goes to one rank, uniformly over the ep group.
  Config c = load("configs/quickstart.yaml",
                  {"model.top_k=1", "model.num_groups=1", "model.topk_groups=1",
                   "parallel.expert_parallel=4", "train.dtype=fp32", "train.micro_batch_size=4"});
  const double T = c.train.micro_batch_size * c.train.seq_len, D = c.model.hidden_size;
  Plan p = make_plan(c, 4, round_profile(), {});
  // 4 all-to-alls per layer (dispatch, combine, and both in backward), 3/4 of tokens leave.
  EXPECT_NEAR(p.comm.a2a_per_layer_intra, 4 * T * 0.75 * D * 4, 1e-6);
  EXPECT_DOUBLE_EQ(p.comm.a2a_per_layer_inter, 0);
  // 16 ranks on 2 nodes of 8, at most one node per token: half the tokens cross nodes, once.
  Config n = c;
  n.model.num_routed_experts = 16;
  n.parallel.expert_parallel = 16;
  n.model.max_nodes_per_token = 1;
  n.train.global_batch_size = 16 * c.train.micro_batch_size;
  p = make_plan(n, 16, round_profile(), {});
  EXPECT_NEAR(p.comm.a2a_per_layer_inter, 4 * T * 0.5 * D * 4, 1e-6);
  // In the node, the token reaches one of 8 ranks: 7/8 of them are another rank.
  EXPECT_NEAR(p.comm.a2a_per_layer_intra, 4 * T * 7.0 / 8 * D * 4, 1e-6);
  // ep 1: no all-to-all.
  p = make_plan(load("configs/quickstart.yaml"), 1, round_profile(), {});
  EXPECT_DOUBLE_EQ(p.comm.a2a_per_layer_intra + p.comm.a2a_per_layer_inter, 0);
}

// Uneven routing: the busiest expert-parallel rank's rows over the mean, from a run's logged
// counts (experts split contiguously, averaged over layers, median over steps), prices extra
// expert compute at the matmul rate and a longer all-to-all on that rank.
TEST(Plan, UnevenRoutingSlowsTheBusiestRank) {
  TempDir dir;
  {
    std::ofstream f(dir.path() / "metrics.jsonl");
    // 4 experts, 2 layers. ep 2: ranks hold {0,1} and {2,3}.
    // step 1: layer loads (30+10 | 0+0) -> 2.0, (10+10 | 10+10) -> 1.0: mean 1.5
    // step 2: (10+10 | 20+20) -> 40/30, (5+5 | 5+25) -> 30/20: mean 1.41667
    // step 3: (1+1 | 1+1) -> 1.0 twice: mean 1.0   => median 1.41667
    f << R"({"step":1,"moe":[{"tokens_per_expert":[30,10,0,0]},{"tokens_per_expert":[10,10,10,10]}]})"
      << "\n"
      << R"({"step":2,"moe":[{"tokens_per_expert":[10,10,20,20]},{"tokens_per_expert":[5,5,5,25]}]})"
      << "\n"
      << R"({"step":3,"loss":1})"
      << "\n"
      << R"({"step":3,"moe":[{"tokens_per_expert":[1,1,1,1]},{"tokens_per_expert":[1,1,1,1]}]})"
      << "\n";
  }
  const ExpertLoads loads = read_expert_loads(dir.str(), 4);
  ASSERT_EQ(loads.steps.size(), 3u);
  EXPECT_NEAR(loads.imbalance(2), (40.0 / 30 + 30.0 / 20) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(loads.imbalance(1), 1.0);
  // ep 4: step 1 (30/10 = 3, 10/10 = 1) -> 2; step 2 (20/15, 25/10) -> 1.9167; step 3 -> 1.
  EXPECT_NEAR(loads.imbalance(4), (20.0 / 15 + 25.0 / 10) / 2, 1e-12);
  EXPECT_THROW(read_expert_loads(dir.str(), 8), condensa::ConfigError);  // 4 experts logged
  EXPECT_THROW(read_expert_loads((dir.path() / "none").string(), 4), condensa::ConfigError);

  Config c = load("configs/quickstart.yaml", {"parallel.expert_parallel=2", "train.dtype=fp32"});
  const auto hw = round_profile();
  const Plan even = make_plan(c, 2, hw, {});
  EXPECT_DOUBLE_EQ(even.load_imbalance, 1.0);
  EXPECT_DOUBLE_EQ(even.time.imbalance, 0.0);
  PlanOptions o;
  o.load_imbalance = 1.5;
  const Plan uneven = make_plan(c, 2, hw, o);
  // Per micro-batch: 0.5 x the routed-expert forward + backward FLOPs of every MoE block
  // (3 layers and the MTP module) at the matmul rate.
  const auto& m = c.model;
  const double T = c.train.micro_batch_size * c.train.seq_len;
  const double expert_fb = 3 * 2.0 * m.top_k * 3 * m.hidden_size * m.moe_intermediate_size;
  const double moe_blocks = (m.num_layers - m.num_dense_layers) + m.mtp_depth;
  EXPECT_NEAR(uneven.time.imbalance,
              0.5 * moe_blocks * T * expert_fb / (hw.peak_flops * hw.gemm_efficiency), 1e-12);
  EXPECT_NEAR(uneven.time.a2a, 1.5 * even.time.a2a, 1e-15);
  EXPECT_NEAR(uneven.time.micro_batch - even.time.micro_batch,
              uneven.time.imbalance + 0.5 * even.time.a2a, 1e-12);
  // The run's loads, read at the plan's own ep.
  o.load_imbalance = 0;
  o.expert_loads = loads;
  EXPECT_NEAR(make_plan(c, 2, hw, o).load_imbalance, loads.imbalance(2), 1e-12);
}

TEST(Plan, SchedulesBubblesAndOverlap) {
  Config c = load("configs/deepseek-v3-671b.yaml");
  const auto hw = builtin_profile("h800");
  PlanOptions o;
  const Plan f = make_plan(c, 2048, hw, o);
  EXPECT_NEAR(f.time.bubble, (f.pp - 1) * f.time.micro_batch, 1e-9);
  EXPECT_NEAR(f.time.micro_batch,
              f.time.forward + f.time.backward + f.time.a2a + f.time.pipeline_p2p, 1e-12);
  EXPECT_DOUBLE_EQ(f.memory.in_flight, 16);  // stage 0 of 1F1B holds pp micro-batches
  o.schedule = Schedule::kInterleaved;
  o.virtual_stages = 4;
  // Interleaving needs micro-batches in groups of pp: 120 per step is refused, 128 runs.
  EXPECT_THROW(make_plan(c, 2048, hw, o), condensa::ConfigError);
  Config c128 = c;
  c128.train.global_batch_size = 16384;
  const Plan i = make_plan(c128, 2048, hw, o);
  EXPECT_NEAR(i.time.bubble, (i.pp - 1) * i.time.micro_batch / 4, 1e-9);
  EXPECT_NEAR(i.bubble_fraction, 15.0 / (4 * 128), 1e-12);
  EXPECT_NEAR(f.bubble_fraction, 15.0 / 120, 1e-12);
  ASSERT_EQ(f.stage_memory.size(), 16u);
  EXPECT_DOUBLE_EQ(*std::max_element(f.stage_memory.begin(), f.stage_memory.end()),
                   f.memory.total());
  o.schedule = Schedule::kDualPipe;
  const Plan d = make_plan(c, 2048, hw, o);
  // Overlap: a micro-batch costs its compute or its communication, whichever is longer.
  EXPECT_NEAR(d.time.micro_batch,
              std::max(d.time.forward + d.time.backward, d.time.a2a + d.time.pipeline_p2p), 1e-12);
  EXPECT_DOUBLE_EQ(d.memory.in_flight, 17);  // PP + 1
  // DualPipe rank s holds the parameters of stages s and pp-1-s (fp32 master: 4 B each).
  double local = 0;
  for (int64_t s : {d.memory.stage, d.pp - 1 - d.memory.stage}) {
    for (int64_t u = d.stage_first_unit[s]; u < d.stage_first_unit[s + 1]; ++u)
      local += d.units[u].dense_params + d.units[u].expert_params / d.ep;
  }
  EXPECT_NEAR(d.memory.master, 4 * local, 1e-3 * local);
  EXPECT_LT(d.time.step, f.time.step);
  // Step = micro-batches x per-micro-batch + bubble + data-parallel sync + optimizer.
  EXPECT_NEAR(
      d.time.step,
      d.micro_batches * d.time.micro_batch + d.time.bubble + d.time.dp_comm + d.time.optimizer,
      1e-9);
}

TEST(Plan, DeepSeekV3On2048H800sIsWithin20PercentOfThePublishedCost) {
  // DeepSeek's layout: PP 16 (DualPipe), EP 64 over 8 nodes, ZeRO-1, 4 nodes per token, seq
  // 4096, 15,360 sequences per step. Published: 180,000 H800 GPU-hours per trillion tokens.
  Config c = load("configs/deepseek-v3-671b.yaml");
  ASSERT_EQ(c.parallel.pipeline_parallel, 16);
  ASSERT_EQ(c.parallel.expert_parallel, 64);
  ASSERT_EQ(c.model.max_nodes_per_token, 4);
  PlanOptions o;
  o.schedule = Schedule::kDualPipe;
  const Plan p = make_plan(c, 2048, builtin_profile("h800"), o);
  EXPECT_EQ(p.micro_batches, 120);
  EXPECT_GT(p.gpu_hours_per_trillion, 0.8 * 180000);
  EXPECT_LT(p.gpu_hours_per_trillion, 1.2 * 180000);
  // The same arithmetic: GPU-hours from tokens/s per GPU, tokens/s from the step time.
  EXPECT_NEAR(p.gpu_hours_per_trillion, 1e12 / p.tokens_per_s_per_rank / 3600, 1e-6);
  EXPECT_NEAR(p.tokens_per_s_per_rank, 15360.0 * 4096 / (p.time.step * 2048), 1e-6);
}

TEST(Plan, CompareSortsByCostFittingFirstAndSaysWhatItSkipped) {
  Config c = load("configs/deepseek-v3-671b.yaml", {"model.recompute=full"});
  PlanOptions o;
  o.schedule = Schedule::kDualPipe;
  auto hw = builtin_profile("h800");
  const auto cmp = compare_layouts(c, 2048, hw, o, {8, 16, 32}, {32, 64, 128});
  ASSERT_GE(cmp.plans.size(), 4u);
  for (size_t i = 1; i < cmp.plans.size(); ++i) {
    const auto &a = cmp.plans[i - 1], &b = cmp.plans[i];
    EXPECT_TRUE(a.fits >= b.fits);
    if (a.fits == b.fits) {
      EXPECT_LE(a.gpu_hours_per_trillion, b.gpu_hours_per_trillion);
    }
  }
  EXPECT_TRUE(std::any_of(cmp.plans.begin(), cmp.plans.end(), [](auto& p) { return p.fits; }));
  EXPECT_TRUE(std::any_of(cmp.plans.begin(), cmp.plans.end(), [](auto& p) { return !p.fits; }));
  // pp 32 leaves dp 64, which ep 128 does not divide.
  ASSERT_EQ(cmp.skipped.size(), 1u);
  EXPECT_NE(cmp.skipped[0].find("pp 32 x ep 128"), std::string::npos) << cmp.skipped[0];
}

TEST(Plan, BadLayoutsAreConfigErrors) {
  Config c = load("configs/deepseek-v3-671b.yaml");
  PlanOptions o;
  o.schedule = Schedule::kDualPipe;
  c.parallel.pipeline_parallel = 3;
  c.parallel.expert_parallel = 1;
  c.train.global_batch_size = 7;
  try {
    make_plan(c, 3, builtin_profile("h800"), o);
    FAIL() << "an odd pipeline under dualpipe was accepted";
  } catch (const condensa::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("dualpipe"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_schedule("gpipe"), condensa::ConfigError);
  try {
    builtin_profile("a100");
    FAIL();
  } catch (const condensa::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'a100'"), std::string::npos) << e.what();
  }
}

TEST(Plan, ProfileFilesAreCheckedKeyByKey) {
  TempDir dir;
  auto write = [&](const std::string& text) {
    const auto path = (dir.path() / "hw.yaml").string();
    std::ofstream(path) << text;
    return path;
  };
  const std::string good =
      "peak_tflops: 100\ngemm_efficiency: 0.5\nattention_efficiency: 0.4\nmemory_gib: 16\n"
      "memory_bandwidth_gbps: 900\nintra_node_gbps: 100\ninter_node_gbps: 25\n"
      "ranks_per_node: 4\n";
  const HardwareProfile h = load_profile(write(good + "name: box\nfused_attention: false\n"));
  EXPECT_EQ(h.name, "box");
  EXPECT_DOUBLE_EQ(h.peak_flops, 100e12);
  EXPECT_DOUBLE_EQ(h.memory_bytes, 16.0 * 1024 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(h.inter_node_bandwidth, 25e9);
  EXPECT_EQ(h.ranks_per_node, 4);
  EXPECT_FALSE(h.fused_attention);
  auto error_of = [&](const std::string& text) {
    try {
      load_profile(write(text));
    } catch (const condensa::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(good + "nvlink: 3\n").find("unknown key 'nvlink'"), std::string::npos);
  std::string missing = good;
  missing.erase(missing.find("ranks_per_node"));
  EXPECT_NE(error_of(missing).find("missing key 'ranks_per_node'"), std::string::npos);
  std::string high = good;
  high.replace(high.find("gemm_efficiency: 0.5"), 20, "gemm_efficiency: 1.5");
  EXPECT_NE(error_of(high).find("gemm_efficiency = 1.5"), std::string::npos) << error_of(high);
  EXPECT_NE(error_of(good + "usable_memory: lots\n").find("usable_memory = 'lots'"),
            std::string::npos);
  EXPECT_NE(error_of(good).find("no error"), std::string::npos);
  // The shipped what-if profile parses; its FP8 matmuls make DeepSeek-V3 cheaper than bf16.
  const HardwareProfile fp8 = load_profile(source_path("configs/hardware/h800-fp8.yaml"));
  EXPECT_EQ(fp8.name, "h800-fp8");
  PlanOptions o;
  o.schedule = Schedule::kDualPipe;
  Config c = load("configs/deepseek-v3-671b.yaml");
  EXPECT_LT(make_plan(c, 2048, fp8, o).gpu_hours_per_trillion,
            make_plan(c, 2048, builtin_profile("h800"), o).gpu_hours_per_trillion);
}

// The cpu profile times a decoder block and the experts with the weights a run starts from:
// modules leave their weights uninitialised, and timing garbage (denormals, NaNs, a router
// sending tokens anywhere) made the measured expert time swing tenfold between runs.
TEST(CpuProfile, TimesUnitsWithTheWeightsTrainingStartsFrom) {
  const auto m = load("configs/quickstart.yaml").model;
  model::DispatcherFactory local = [&](int64_t) {
    return std::make_shared<model::LocalDispatcher>(m.num_routed_experts);
  };
  auto check = [&](torch::nn::Module& unit, const std::string& what) {
    int64_t norms = 0, weights = 0;
    for (const auto& item : unit.named_parameters()) {
      const auto& p = item.value();
      EXPECT_TRUE(torch::isfinite(p).all().item<bool>()) << what << " " << item.key();
      if (item.key().find("norm.weight") != std::string::npos) {
        EXPECT_TRUE(torch::equal(p, torch::ones_like(p))) << what << " " << item.key();
        ++norms;
      } else {
        ++weights;
        if (p.numel() < 1000) continue;
        EXPECT_NEAR(p.mean().item<double>(), 0.0, 0.1 * m.init_std) << what << " " << item.key();
        EXPECT_NEAR(p.std().item<double>(), m.init_std, 0.05 * m.init_std)
            << what << " " << item.key();
      }
    }
    for (const auto& item : unit.named_buffers()) {
      if (item.key().find("e_score_correction_bias") == std::string::npos) continue;
      EXPECT_EQ(item.value().abs().max().item<double>(), 0.0) << what << " " << item.key();
    }
    EXPECT_GT(weights, 0) << what;
    return norms;
  };
  for (int64_t layer : {int64_t{0}, m.num_dense_layers}) {
    auto block = plan::timed_block(m, layer, local, 5);
    EXPECT_GE(check(*block, "layer " + std::to_string(layer)), 2);
  }
  auto experts = plan::timed_experts(m, 4, 5);
  check(*experts, "experts");
  // The same seed draws the same weights (every rank times the same block).
  auto a = plan::timed_block(m, 1, local, 9), b = plan::timed_block(m, 1, local, 9);
  for (const auto& item : a->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), b->named_parameters()[item.key()])) << item.key();
  }
}
