// `condensa train` and `condensa data prepare` refuse bad inputs at start, through the built
// binary: exit code 2 with one line naming the key for configuration errors (directory or empty
// config, a key that is not a name, a model that cannot fit in memory, configs that differ
// between ranks, a run directory that cannot hold checkpoints), and stop signals that exit at
// once outside the steps.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <thread>

#include "tests/support/process.h"
#include "tests/support/test_util.h"

namespace fs = std::filesystem;
using namespace condensa::testing;

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// True once process `pid` has a handler (not the default action) for SIGTERM.
bool catches_sigterm(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("SigCgt:", 0) == 0) {
      const uint64_t mask = std::stoull(line.substr(7), nullptr, 16);
      return (mask >> (SIGTERM - 1)) & 1;
    }
  }
  return false;
}

std::vector<std::string> tiny_train(const TempDir& dir, std::vector<std::string> sets) {
  std::vector<std::string> argv = {CONDENSA_BINARY, "train", source_path("configs/tiny.yaml"),
                                   "--set", "run.dir=" + dir.str()};
  for (auto& s : sets) {
    argv.push_back("--set");
    argv.push_back(std::move(s));
  }
  return argv;
}

}  // namespace

TEST(StrictInputs, DirectoryOrEmptyConfigExitsTwo) {
  TempDir dir;
  auto r = run_condensa("train " + dir.str());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "is a directory, not a YAML file")) << r.output;
  std::ofstream(dir.path() / "empty.yaml") << "# nothing yet\n";
  r = run_condensa("train " + (dir.path() / "empty.yaml").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "is empty (no sections)")) << r.output;
}

TEST(StrictInputs, ComplexOrDuplicateKeyExitsTwoNamingTheLine) {
  TempDir dir;
  std::ofstream(dir.path() / "complex.yaml") << "train:\n  steps: 3\n  ? [a, b]\n  : 1\n";
  auto r = run_condensa("train " + (dir.path() / "complex.yaml").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "complex.yaml: line 3: a key in train is a list")) << r.output;
  EXPECT_FALSE(contains(r.output, "bad conversion")) << r.output;
  std::ofstream(dir.path() / "dup.yaml") << "train:\n  steps: 3\nlog:\n  every: 1\n  every: 2\n";
  r = run_condensa("train " + (dir.path() / "dup.yaml").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "line 5: duplicate key 'log.every' (first at line 4)"))
      << r.output;
}

TEST(StrictInputs, ModelThatCannotFitIsRefusedBeforeAllocating) {
  TempDir dir;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_condensa(tiny_train_args(
      dir.path(), "--set model.vocab_size=1073741824 --set model.hidden_size=1024"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "the run needs at least")) << r.output;
  EXPECT_TRUE(contains(r.output, "model.vocab_size (1073741824) x model.hidden_size (1024)"))
      << r.output;
  EXPECT_FALSE(contains(r.output, "what()")) << r.output;
  EXPECT_LT(seconds, 60) << "allocated before refusing?";
}

TEST(StrictInputs, CheckpointsThatCannotBeWrittenAreFoundAtStart) {
  TempDir dir;
  std::ofstream(dir.path() / "checkpoints") << "not a directory\n";
  auto r = run_condensa(tiny_train_args(dir.path(), "--set train.steps=3"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "checkpoints exists and is not a directory")) << r.output;
  EXPECT_FALSE(contains(r.output, "step 1")) << "trained before finding out: " << r.output;
}

TEST(StrictInputs, ConfigDifferingBetweenRanksExitsTwoNamingKeyAndRanks) {
  TempDir dir;
  const std::string rank_args = CONDENSA_BINARY + std::string(" train ") +
                                source_path("configs/tiny.yaml") + " --set run.dir=" + dir.str();
  auto r =
      run_command("mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -np 1 " +
                  rank_args + " --set train.steps=5 : -np 1 " + rank_args + " --set train.steps=7");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "rank 0 has train.steps: 5 but rank 1 has train.steps: 7"))
      << r.output;
}

TEST(StrictInputs, PrepareWithOnlyEmptyFilesWritesNothing) {
  TempDir in("in"), out("out");
  std::ofstream(in.path() / "a.txt") << "";
  std::ofstream(in.path() / "b.txt") << "";
  auto r = run_condensa("data prepare --input " + in.str() + " --out " +
                        (out.path() / "shard").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "every input file is empty (2 files)")) << r.output;
  EXPECT_FALSE(fs::exists(out.path() / "shard")) << r.output;
}

TEST(StopSignals, SigtermBeforeTheFirstStepExitsAtOnce) {
  TempDir dir;
  // Steps that would take long: a stop that waited for the first step would show.
  ChildProcess job(tiny_train(dir, {"train.steps=100000"}), (dir.path() / "out.txt").string());
  ASSERT_TRUE(wait_until([&] { return catches_sigterm(job.pid()); }, 60)) << job.output();
  ASSERT_EQ(kill(job.pid(), SIGTERM), 0);
  EXPECT_EQ(job.wait(60), 128 + SIGTERM) << job.output();
  EXPECT_TRUE(contains(job.output(), "stop signal before the first step: exiting now"))
      << job.output();
  EXPECT_FALSE(fs::exists(dir.path() / "checkpoints" / "latest")) << job.output();
}

TEST(StopSignals, SecondSigtermExitsWithoutFinishingTheStep) {
  TempDir dir;
  // One step of this width takes seconds on a CPU core: the second signal arrives mid-step.
  ChildProcess job(tiny_train(dir, {"train.steps=100000", "model.hidden_size=1024",
                                    "model.intermediate_size=8192", "train.seq_len=120",
                                    "train.global_batch_size=16", "train.micro_batch_size=16"}),
                   (dir.path() / "out.txt").string());
  ASSERT_TRUE(wait_until([&] { return contains(job.output(), "run dir "); }, 120)) << job.output();
  ASSERT_EQ(kill(job.pid(), SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(kill(job.pid(), SIGTERM), 0);
  EXPECT_EQ(job.wait(60), 128 + SIGTERM) << job.output();
  EXPECT_TRUE(contains(job.output(), "second stop signal: exiting now")) << job.output();
  EXPECT_FALSE(contains(job.output(), "saved checkpoint")) << job.output();
}

TEST(StopSignals, SigtermDuringTheFinalValidationExitsAtOnce) {
  TempDir dir;
  // One step, then a validation of 10^6 batches: far longer than the deadline below.
  ChildProcess job(tiny_train(dir, {"train.steps=1", "train.eval_batches=1000000"}),
                   (dir.path() / "out.txt").string());
  ASSERT_TRUE(wait_until([&] { return fs::exists(dir.path() / "checkpoints" / "latest"); }, 120))
      << job.output();
  // The validation starts right after the checkpoint is committed.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ASSERT_EQ(kill(job.pid(), SIGTERM), 0);
  EXPECT_EQ(job.wait(30), 128 + SIGTERM) << job.output();
  EXPECT_TRUE(contains(job.output(), "during the final validation: exiting now")) << job.output();
  EXPECT_TRUE(fs::exists(dir.path() / "checkpoints" / "step_00000001" / "meta.json"));
}
