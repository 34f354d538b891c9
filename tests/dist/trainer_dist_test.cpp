// The central contracts under mpirun: layout independence of the loss curve (world 1, ep 2,
// ep = world, ZeRO 0 and 1), bitwise resume on the same layout, and resume on a different
// layout from a checkpoint saved on 2 ranks with expert parallel 2.
//
// Tolerance: fp32 curves of 20 steps agree within kLossTol absolute (reduction order only).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/dist/dist_env.h"
#include "tests/dist/train_run.h"
#include "trainer/config/config.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;
using namespace condensa;
using condensa::testing::Curve;
using condensa::testing::first_ranks;
using condensa::testing::read_curve;

namespace {

constexpr double kLossTol =
    1e-5;  // measured max over 20 steps: 2.4e-7 (world 1 vs 4, ep 4, ZeRO-1)
constexpr int64_t kSteps = 20;

// Runs `condensa train configs/tiny.yaml` in-process on the ranks of `comm` (others pass null).
void train(parallel::Communicator* comm,
           const std::string& dir,
           std::vector<std::string> overrides) {
  overrides.insert(overrides.end(),
                   {"run.dir=" + dir, "log.every=1", "train.steps=" + std::to_string(kSteps),
                    "train.global_batch_size=8", "train.micro_batch_size=2", "train.eval_batches=1",
                    "checkpoint.every=0", "run.threads=1"});
  condensa::testing::train_tiny(comm, overrides);
}

void expect_close(const Curve& a, const Curve& b, int64_t from, const std::string& what) {
  for (int64_t s = from; s <= kSteps; ++s) {
    ASSERT_TRUE(a.count(s) && b.count(s)) << what << ": step " << s << " missing";
    EXPECT_NEAR(a.at(s), b.at(s), kLossTol) << what << ": step " << s;
  }
}

class TrainerDist : public condensa::testing::SharedRunDirTest {
 protected:
  TrainerDist() : SharedRunDirTest("condensa-dist-") {}
  // The single-process curve (rank 0 computes, everyone reads).
  Curve reference() {
    auto one = first_ranks(1);
    train(one.get(), dir("world1"), {});
    return read_curve(dir("world1"));
  }
};

TEST_F(TrainerDist, LossCurveIsLayoutIndependent) {
  auto& world = condensa::testing::mpi_world();
  const Curve ref = reference();
  ASSERT_EQ(ref.size(), static_cast<size_t>(kSteps));
  std::vector<int> eps{2};
  if (world.size() != 2) eps.push_back(world.size());
  for (int ep : eps) {
    for (int zero : {0, 1}) {
      const std::string name = "ep" + std::to_string(ep) + "_zero" + std::to_string(zero);
      train(&world, dir(name),
            {"parallel.expert_parallel=" + std::to_string(ep),
             "parallel.zero_stage=" + std::to_string(zero)});
      expect_close(ref, read_curve(dir(name)), 1,
                   "world " + std::to_string(world.size()) + " " + name);
    }
  }
}

TEST_F(TrainerDist, ResumeOnTheSameLayoutIsBitwise) {
  auto& world = condensa::testing::mpi_world();
  const std::vector<std::string> layout{"parallel.expert_parallel=" + std::to_string(world.size()),
                                        "parallel.zero_stage=1"};
  condensa::testing::expect_resume_is_bitwise(
      [&](const std::string& d, const std::vector<std::string>& keys) { train(&world, d, keys); },
      root_, layout, kSteps);
}

TEST_F(TrainerDist, CheckpointFromTwoRanksResumesOnOtherLayouts) {
  auto& world = condensa::testing::mpi_world();
  const Curve ref = reference();
  // Save at step 10 on 2 ranks with expert parallel 2 and ZeRO-1.
  auto two = first_ranks(2);
  train(two.get(), dir("saved"),
        {"parallel.expert_parallel=2", "parallel.zero_stage=1", "train.stop_at_step=10"});
  const std::string ckpt = dir("saved") + "/checkpoints/step_00000010";
  ASSERT_TRUE(fs::exists(ckpt + "/meta.json"));
  // Resume on 1 rank.
  auto one = first_ranks(1);
  train(one.get(), dir("on1"), {"checkpoint.resume=" + ckpt});
  expect_close(ref, read_curve(dir("on1")), 11, "resumed on 1 rank");
  // Resume on the whole world with ep = world (and ZeRO-0, a different optimizer sharding).
  train(&world, dir("onN"),
        {"checkpoint.resume=" + ckpt, "parallel.expert_parallel=" + std::to_string(world.size()),
         "parallel.zero_stage=0"});
  expect_close(ref, read_curve(dir("onN")), 11,
               "resumed on " + std::to_string(world.size()) + " ranks");
}

}  // namespace
