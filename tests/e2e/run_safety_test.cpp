// Nothing lost, nothing silent: what `condensa train` does when the user points two runs at one
// run.dir, starts over in a used one, changes the config on resume, trains into non-finite
// numbers, or finds every checkpoint damaged. Each case checks the exit code, that the message
// names the key or file, and that the run directory's history (checkpoints, metrics.jsonl,
// configs) is what it was or what the message says.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/process.h"
#include "tests/support/test_util.h"

namespace fs = std::filesystem;
using namespace condensa::testing;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> step_dirs(const fs::path& run_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run_dir / "checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step_", 0) == 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

#define EXPECT_HAS(text, part)                                                              \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "lacks: " << (part) << "\n" \
                                                             << (text)

}  // namespace

TEST(RunSafety, SecondRunOnALockedRunDirIsRefusedNamingTheHolder) {
  TempDir dir;
  ChildProcess first(
      {CONDENSA_BINARY, "train", source_path("configs/tiny.yaml"), "--set", "run.dir=" + dir.str(),
       "--set", "log.every=1", "--set", "train.steps=100000", "--set", "checkpoint.every=0"},
      (dir.path() / "first.txt").string());
  ASSERT_TRUE(wait_until([&] { return read_losses(dir.path()).count(2) > 0; }, 300))
      << first.output();
  const auto metrics_before = read_losses(dir.path()).size();
  auto second = run_condensa(tiny_train_args(dir.path(), "--set train.steps=3"));
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_HAS(second.output, "run.dir " + dir.str() + " is in use");
  EXPECT_HAS(second.output, "pid " + std::to_string(first.pid()));
  EXPECT_HAS(second.output, dir.str() + "/.lock");
  EXPECT_GE(read_losses(dir.path()).size(), metrics_before) << "the second run truncated metrics";
  kill(first.pid(), SIGTERM);
  ASSERT_EQ(first.wait(300), 0) << first.output();
  // Released on exit: the next run resumes the first one's checkpoint.
  auto third = run_condensa(tiny_train_args(dir.path(),
                                            "--set train.steps=100000 "
                                            "--set train.stop_at_step=1"));
  EXPECT_EQ(third.exit_code, 0) << third.output;
  EXPECT_HAS(third.output, "resumed from");
  EXPECT_EQ(third.output.find("did not exit cleanly"), std::string::npos) << third.output;
}

TEST(RunSafety, FreshStartInAUsedRunDirNeedsRunOverwrite) {
  TempDir dir;
  auto a =
      run_condensa(tiny_train_args(dir.path(), "--set train.steps=4 --set checkpoint.every=2"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string metrics = slurp(dir.path() / "metrics.jsonl");
  const auto ckpts = step_dirs(dir.path());
  ASSERT_EQ(ckpts, (std::vector<std::string>{"step_00000002", "step_00000004"}));

  auto refused =
      run_condensa(tiny_train_args(dir.path(), "--set train.steps=3 --set checkpoint.resume=none"));
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_HAS(refused.output, "2 checkpoint(s), newest step_00000004 and metrics.jsonl");
  EXPECT_HAS(refused.output, "run.overwrite=true");
  EXPECT_EQ(slurp(dir.path() / "metrics.jsonl"), metrics) << "history changed";
  EXPECT_EQ(step_dirs(dir.path()), ckpts);

  auto fresh = run_condensa(tiny_train_args(
      dir.path(), "--set train.steps=3 --set checkpoint.resume=none --set run.overwrite=true"));
  ASSERT_EQ(fresh.exit_code, 0) << fresh.output;
  EXPECT_HAS(fresh.output, "run.overwrite: deleted the previous run");
  // Only the new run is left: a later `auto` cannot resume the old one's step 4.
  EXPECT_EQ(step_dirs(dir.path()), (std::vector<std::string>{"step_00000003"}));
  EXPECT_EQ(read_losses(dir.path()).size(), 3u);
  auto later = run_condensa(tiny_train_args(dir.path(), "--set train.steps=5"));
  ASSERT_EQ(later.exit_code, 0) << later.output;
  EXPECT_HAS(later.output, "step_00000003 (step 3)");
}

// optim.lr=1e30: step 1 moves the weights to ~1e29, step 2 onwards have a NaN loss. Measured
// before: step 2's update applied, its checkpoint committed with non-finite weights.
TEST(RunSafety, NonFiniteStepsAreSkippedLoggedAndAbortTheRunAfterTheLimit) {
  TempDir dir;
  auto r = run_condensa(
      tiny_train_args(dir.path(),
                      "--set optim.lr=1e30 --set train.steps=20 --set checkpoint.every=1 "
                      "--set checkpoint.keep=0 --set train.max_skipped_steps=2"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "step 2 skipped (not applied)");
  EXPECT_HAS(r.output, "training diverged: 3 steps in a row");
  EXPECT_HAS(r.output, "train.max_skipped_steps (2)");
  EXPECT_EQ(r.output.find("what():"), std::string::npos) << r.output;
  int64_t skipped = 0;
  for (const auto& j : read_metrics(dir.path())) {
    if (j.value("skipped", false)) {
      ++skipped;
      EXPECT_EQ(j["consecutive_skips"], skipped) << j.dump();
      EXPECT_EQ(j["step"], skipped + 1) << j.dump();
      EXPECT_FALSE(j.contains("loss")) << "a skipped step is not a point of the loss curve";
    }
  }
  EXPECT_EQ(skipped, 3);
  EXPECT_EQ(read_losses(dir.path()).size(), 1u);  // step 1 only
  // The checkpoints of the skipped steps hold step 1's (finite) weights: no update was applied.
  const auto ckpts = step_dirs(dir.path());
  EXPECT_EQ(ckpts, (std::vector<std::string>{"step_00000001", "step_00000002", "step_00000003"}));
  auto meta = nlohmann::json::parse(slurp(dir.path() / "checkpoints/step_00000003/meta.json"));
  EXPECT_EQ(meta["optimizer_steps"], 1);
}

// optim.lr=1e39 without warm-up or decay: step 1's loss and gradient are finite, its update
// overflows fp32, and the checkpoint of step 1 would hold infinite weights. (With the default
// cosine schedule a one-step run would take min_lr at step 1.)
TEST(RunSafety, NonFiniteWeightsAreNeverSaved) {
  TempDir dir;
  auto r = run_condensa(tiny_train_args(
      dir.path(),
      "--set optim.lr=1e39 --set optim.warmup_steps=0 --set optim.schedule=constant "
      "--set train.steps=1"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "refusing to save checkpoint step_00000001");
  EXPECT_HAS(r.output, "not finite");
  EXPECT_TRUE(step_dirs(dir.path()).empty());
  EXPECT_FALSE(fs::exists(dir.path() / "checkpoints" / ".tmp-step_00000001"));
}

TEST(RunSafety, ResumeComparesTheConfigWithTheCheckpoints) {
  TempDir dir;
  auto a = run_condensa(tiny_train_args(dir.path(), "--set train.steps=4"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string metrics = slurp(dir.path() / "metrics.jsonl");
  // A trajectory change is refused, listing the differences, and changes nothing on disk.
  auto lr = run_condensa(
      tiny_train_args(dir.path(), "--set train.steps=6 --set optim.lr=1e-2 --set run.seed=9"));
  EXPECT_EQ(lr.exit_code, 2) << lr.output;
  EXPECT_HAS(lr.output, "run.seed: 1234 -> 9, optim.lr: 0.003 -> 0.01");
  EXPECT_HAS(lr.output, "checkpoint.allow_config_change=true");
  EXPECT_EQ(slurp(dir.path() / "metrics.jsonl"), metrics);
  // Fewer steps than the checkpoint's is an error; as many says the run is complete.
  auto fewer = run_condensa(tiny_train_args(dir.path(), "--set train.steps=2"));
  EXPECT_EQ(fewer.exit_code, 2) << fewer.output;
  EXPECT_HAS(fewer.output, "train.steps (2) is below the step of the checkpoint it resumes (4");
  auto same = run_condensa(tiny_train_args(dir.path(), "--set train.steps=4"));
  EXPECT_EQ(same.exit_code, 0) << same.output;
  EXPECT_HAS(same.output, "run already complete");
  EXPECT_EQ(same.output.find("done: steps"), std::string::npos) << same.output;
  EXPECT_EQ(slurp(dir.path() / "metrics.jsonl"), metrics);
  // Extending the run is allowed and noted; each segment keeps its config.
  auto more = run_condensa(tiny_train_args(dir.path(), "--set train.steps=6"));
  ASSERT_EQ(more.exit_code, 0) << more.output;
  EXPECT_HAS(more.output, "note: config changed since the checkpoint: train.steps: 4 -> 6");
  EXPECT_HAS(slurp(dir.path() / "config.step_00000000.yaml"), "\n  steps: 4\n");
  EXPECT_HAS(slurp(dir.path() / "config.step_00000004.yaml"), "\n  steps: 6\n");
  // With the explicit key the change goes through, and is noted.
  auto allowed = run_condensa(tiny_train_args(
      dir.path(),
      "--set train.steps=7 --set optim.lr=1e-2 --set checkpoint.allow_config_change=true"));
  ASSERT_EQ(allowed.exit_code, 0) << allowed.output;
  EXPECT_HAS(allowed.output, "optim.lr: 0.003 -> 0.01 (changes the trajectory");
  EXPECT_EQ(read_losses(dir.path()).size(), 7u);
}

TEST(RunSafety, AllCheckpointsCorruptIsRefusedListingEach) {
  TempDir dir;
  auto a = run_condensa(tiny_train_args(
      dir.path(), "--set train.steps=4 --set checkpoint.every=2 --set checkpoint.keep=0"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string metrics = slurp(dir.path() / "metrics.jsonl");
  const auto ck = dir.path() / "checkpoints";
  fs::resize_file(ck / "step_00000004" / "model-rank00000.safetensors", 100);
  // An edited meta.json (an optimizer file dropped from it) fails its checksum.
  auto meta = nlohmann::json::parse(slurp(ck / "step_00000002" / "meta.json"));
  meta["files"].erase("optim-rank00000.safetensors");
  std::ofstream(ck / "step_00000002" / "meta.json") << meta.dump(2) << "\n";
  auto r = run_condensa(tiny_train_args(dir.path(), "--set train.steps=6"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "none of the 2 checkpoints");
  EXPECT_HAS(r.output, "step_00000004: checkpoint file");
  EXPECT_HAS(r.output, "model-rank00000.safetensors is 100 bytes");
  EXPECT_HAS(r.output, "step_00000002: checkpoint file");
  EXPECT_HAS(r.output, "meta.json edited or corrupted");
  EXPECT_EQ(slurp(dir.path() / "metrics.jsonl"), metrics) << "metrics.jsonl was truncated";
}
