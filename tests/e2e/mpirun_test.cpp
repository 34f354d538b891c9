// `condensa train` under `mpirun -np 2`, stopped by SIGTERM as docs/launch.md prescribes: the
// signal goes to one rank (signalling mpirun itself makes Open MPI kill the ranks after a grace
// period and exit non-zero). The ranks combine their stop flags every step, so signalling rank 1,
// which does not log, must stop both, save a committed checkpoint, make mpirun exit 0, and the
// next run must resume from that checkpoint; the same with two pipeline stages, rank 1 being
// the last one.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "tests/support/process.h"
#include "tests/support/test_util.h"

namespace fs = std::filesystem;
using namespace condensa::testing;

namespace {

constexpr double kDeadlineS = 300;  // bounds a broken run only; a healthy one takes seconds

std::vector<std::string> mpirun_train(const TempDir& dir,
                                      const std::string& steps,
                                      const std::vector<std::string>& layout) {
  std::vector<std::string> cmd{"mpirun",
                               "--allow-run-as-root",
                               "--oversubscribe",
                               "-x",
                               "OMP_NUM_THREADS=1",
                               "-np",
                               "2",
                               CONDENSA_BINARY,
                               "train",
                               source_path("configs/tiny.yaml"),
                               "--set",
                               "run.dir=" + dir.str(),
                               "--set",
                               "log.every=1",
                               "--set",
                               "checkpoint.every=0",
                               "--set",
                               "train.steps=" + steps};
  for (const auto& key : layout) cmd.insert(cmd.end(), {"--set", key});
  return cmd;
}

// The process of rank `rank` among the children of mpirun (0 if not found).
pid_t rank_pid(pid_t mpirun, int rank) {
  for (pid_t child : child_pids(mpirun)) {
    if (environment_of(child, "OMPI_COMM_WORLD_RANK") == std::to_string(rank)) return child;
  }
  return 0;
}

}  // namespace

static void sigterm_stops_every_rank_saves_and_resumes(const std::vector<std::string>& layout) {
  TempDir dir;
  int64_t step = 0;
  {
    ChildProcess job(mpirun_train(dir, "100000", layout), (dir.path() / "out1.txt").string());
    ASSERT_TRUE(wait_until([&] { return read_losses(dir.path()).count(3) > 0; }, kDeadlineS))
        << job.output();
    const pid_t rank1 = rank_pid(job.pid(), 1);
    ASSERT_GT(rank1, 0) << "no child of mpirun has OMPI_COMM_WORLD_RANK=1";
    ASSERT_EQ(kill(rank1, SIGTERM), 0);
    EXPECT_EQ(job.wait(kDeadlineS), 0) << job.output();
    const std::string text = job.output();
    std::smatch m;
    ASSERT_TRUE(std::regex_search(text, m, std::regex("stopped by signal after step (\\d+)")))
        << text;
    step = std::stoll(m[1]);
  }
  EXPECT_EQ(read_losses(dir.path()).rbegin()->first, step);
  char name[32];
  std::snprintf(name, sizeof name, "step_%08ld", static_cast<long>(step));
  std::string latest;
  std::ifstream(dir.path() / "checkpoints" / "latest") >> latest;
  EXPECT_EQ(latest, name);
  EXPECT_TRUE(fs::exists(dir.path() / "checkpoints" / name / "meta.json"));
  EXPECT_TRUE(fs::exists(dir.path() / "checkpoints" / name / "model-rank00001.safetensors"));

  // The same command with a finite step count continues from the saved step.
  ChildProcess resumed(mpirun_train(dir, std::to_string(step + 2), layout),
                       (dir.path() / "out2.txt").string());
  ASSERT_EQ(resumed.wait(kDeadlineS), 0) << resumed.output();
  EXPECT_NE(resumed.output().find("resumed from"), std::string::npos) << resumed.output();
  const auto losses = read_losses(dir.path());
  EXPECT_TRUE(losses.count(step + 1) && losses.count(step + 2)) << resumed.output();
  EXPECT_EQ(losses.rbegin()->first, step + 2);
}

TEST(TrainUnderMpirun, SigtermToOneRankStopsEveryRankSavesAndResumes) {
  sigterm_stops_every_rank_saves_and_resumes({"parallel.expert_parallel=2"});
}

// Rank 1 is the last pipeline stage: the stop flag, the save and the resume cross stages.
TEST(TrainUnderMpirun, SigtermToTheLastPipelineStageStopsBothStagesSavesAndResumes) {
  sigterm_stops_every_rank_saves_and_resumes(
      {"parallel.pipeline_parallel=2", "model.mtp_depth=1", "parallel.pipeline_schedule=1f1b"});
}
