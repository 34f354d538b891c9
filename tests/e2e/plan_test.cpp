// `condensa plan` as a user runs it: the printed plan and layout table for DeepSeek-V3, and
// (disabled, see below) the cpu profile's prediction against a measured run: the quick-start model
// trained on 2 ranks (expert parallel 2) on this machine, its median step time from metrics.jsonl,
// against what `mpirun -np 2 condensa plan --hardware cpu` predicts after measuring the same
// machine.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "tests/support/test_util.h"

using namespace condensa::testing;

namespace {

const std::string kMpirun =
    "mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -np 2 ";

}  // namespace

TEST(PlanCli, PrintsMemoryCommunicationTimeCostAndALayoutTable) {
  auto r = run_condensa("plan " + source_path("configs/deepseek-v3-671b.yaml") +
                        " --world 2048 --hardware h800 --schedule dualpipe --compare");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want :
       {"hardware h800", "memory per rank", "verdict: ", "all-to-all", "inter-node",
        "data parallel", "bubble", "MFU", "GPU-hours per trillion tokens", "layouts for world 2048",
        "NO (does not fit)", "assumptions:"}) {
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
  }
  auto bad =
      run_condensa("plan " + source_path("configs/deepseek-v3-671b.yaml") + " --hardware tpu");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("unknown profile 'tpu'"), std::string::npos) << bad.output;
  bad =
      run_condensa("plan " + source_path("configs/deepseek-v3-671b.yaml") + " --compare --pp 8,x");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--pp: expected comma-separated positive integers"), std::string::npos)
      << bad.output;
}

// --expert-load prices a run's routing; bad values name the flag and the value or file.
TEST(PlanCli, ExpertLoadAndLoadImbalanceFlags) {
  const std::string plan = "plan " + source_path("configs/quickstart.yaml") +
                           " --set parallel.expert_parallel=2 --hardware h100";
  auto even = run_condensa(plan);
  ASSERT_EQ(even.exit_code, 0) << even.output;
  EXPECT_NE(even.output.find("routing: uniform over the experts"), std::string::npos)
      << even.output;
  auto uneven = run_condensa(plan + " --load-imbalance 1.5");
  ASSERT_EQ(uneven.exit_code, 0) << uneven.output;
  EXPECT_NE(uneven.output.find("holds 1.5 x the mean expert rows"), std::string::npos)
      << uneven.output;
  auto low = run_condensa(plan + " --load-imbalance 0.5");
  EXPECT_EQ(low.exit_code, 2) << low.output;
  EXPECT_NE(low.output.find("--load-imbalance: expected the busiest rank's rows over the mean, "
                            ">= 1, got 0.5"),
            std::string::npos)
      << low.output;
  TempDir dir;
  auto missing = run_condensa(plan + " --expert-load " + dir.str());
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("--expert-load: cannot read " + dir.str() + "/metrics.jsonl"),
            std::string::npos)
      << missing.output;
}

// The cpu profile times a small model's blocks whole; a block too large to allocate here (256
// experts of width 1024: ~19 GB with its gradients) is planned from the rates, and says so.
TEST(PlanCli, CpuProfileTimesBlocksWholeOnlyWhenTheyFit) {
  auto small = run_condensa("plan " + source_path("configs/tiny.yaml") + " --hardware cpu");
  ASSERT_EQ(small.exit_code, 0) << small.output;
  EXPECT_NE(small.output.find("decoder blocks and the LM head timed whole"), std::string::npos)
      << small.output;
  EXPECT_NE(small.output.find("inside the whole model (timed once) they took "), std::string::npos)
      << small.output;
  auto large = run_condensa("plan " + source_path("configs/tiny.yaml") +
                            " --set model.hidden_size=1024 --set model.num_routed_experts=256"
                            " --set model.moe_intermediate_size=2048 --hardware cpu");
  ASSERT_EQ(large.exit_code, 0) << large.output;
  EXPECT_NE(large.output.find("decoder blocks not timed whole"), std::string::npos) << large.output;
  EXPECT_EQ(large.output.find("decoder blocks and the LM head timed whole"), std::string::npos)
      << large.output;
  EXPECT_EQ(large.output.find("inside the whole model"), std::string::npos) << large.output;
}

// The cpu profile predicts the step time of the run it measured, priced with that run's own
// routing (--expert-load), within 30%. Three rounds alternate training and planning so both
// see the machine in the same state; the medians are compared. Its CTest entry runs alone
// (RUN_SERIAL): another test on the same cores would slow one side and not the other.
TEST(PlanCliSerial, CpuProfilePredictsTheQuickstartStepTimeOnTwoRanksWithin30Percent) {
  const std::string config = source_path("configs/quickstart.yaml");
  const std::string layout = " --set parallel.expert_parallel=2";
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  std::vector<double> measured_rounds, predicted_rounds;
  std::string last_plan;
  for (int round = 0; round < 3; ++round) {
    TempDir dir;
    auto train = run_command(kMpirun + CONDENSA_BINARY + " train " + config + layout +
                             " --set run.dir=" + dir.str() +
                             " --set train.steps=14 --set log.every=1 --set train.eval_every=0"
                             " --set train.eval_batches=1 --set checkpoint.every=0");
    ASSERT_EQ(train.exit_code, 0) << train.output;
    std::vector<double> step_s;
    for (const auto& rec : read_metrics(dir.path())) {
      if (!rec.contains("tokens_per_s") || rec.at("step").get<int64_t>() <= 4) continue;
      step_s.push_back(16.0 * 128 / rec.at("tokens_per_s").get<double>());  // batch 16 x 128
    }
    ASSERT_GE(step_s.size(), 8u);
    measured_rounds.push_back(median(step_s));

    auto plan = run_command(kMpirun + CONDENSA_BINARY + " plan " + config + layout +
                            " --hardware cpu --expert-load " + dir.str() + " --json");
    ASSERT_EQ(plan.exit_code, 0) << plan.output;
    const auto json_at = plan.output.rfind("\n{");
    ASSERT_NE(json_at, std::string::npos) << plan.output;
    const auto j = nlohmann::json::parse(plan.output.substr(json_at + 1));
    EXPECT_GT(j.at("load_imbalance").get<double>(), 1.0) << plan.output;
    EXPECT_NE(plan.output.find("the MoE block with the all-to-all dispatcher over 2 ranks"),
              std::string::npos)
        << plan.output;
    EXPECT_NE(plan.output.find("logged steps of " + dir.str() + "/metrics.jsonl"),
              std::string::npos)
        << plan.output;
    predicted_rounds.push_back(j.at("step_s").get<double>());
    last_plan = plan.output;
    std::printf("round %d: measured %.4f s per step, predicted %.4f s\n", round,
                measured_rounds.back(), predicted_rounds.back());
  }
  const double measured = median(measured_rounds), predicted = median(predicted_rounds);
  EXPECT_GT(predicted, 0.7 * measured)
      << "predicted " << predicted << " s, measured " << measured << " s\n"
      << last_plan;
  EXPECT_LT(predicted, 1.3 * measured)
      << "predicted " << predicted << " s, measured " << measured << " s\n"
      << last_plan;
  std::printf("quickstart on 2 ranks: measured %.4f s per step, predicted %.4f s (%+.1f%%)\n",
              measured, predicted, 100 * (predicted / measured - 1));
}
