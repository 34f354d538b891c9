// main of condensa_dist_tests, run as `mpirun -np N condensa_dist_tests`.
//
// Initialises MPI, lets only rank 0 print gtest's report (other ranks print nothing but their
// own failed assertions, prefixed with the rank), reduces the result over ranks (any rank
// failing makes every rank exit non-zero) and finalises MPI.
//
// The NCCL backend's contract cases are registered only where every rank can run them; when they
// are not, rank 0 prints "NCCL backend: not run (...)" with their number.
//
// With CONDENSA_DIST_MODE=hang it is instead the child job of the watchdog test: rank 0 sleeps
// instead of joining an all_reduce, and the others' watchdog must abort the job. With
// pipeline_stall / pipeline_dead it is the child job of the PipelineWatchdog tests.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/error.h"
#include "parallel/mpi/mpi_communicator.h"
#include "tests/dist/dist_env.h"
#include "trainer/pipeline/runtime.h"

namespace {

using condensa::parallel::MpiCommunicator;
using condensa::parallel::MpiRuntime;

double env_double(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atof(v) : fallback;
}

// Child job of WatchdogTest.HungCollectiveAbortsEveryRank.
int run_hang_mode(int argc, char** argv) {
  MpiRuntime mpi(&argc, &argv);
  auto world = MpiCommunicator::world(env_double("CONDENSA_DIST_HANG_TIMEOUT_S", 3.0));
  if (world->rank() == 0) {
    // "Computing": holds no watchdog guard, so this rank's watchdog must stay quiet.
    std::this_thread::sleep_for(std::chrono::seconds(60));
    std::fprintf(stderr, "hang mode: rank 0 woke up; the job was not aborted\n");
    std::_Exit(0);
  }
  torch::Tensor t = torch::ones({4});
  world->all_reduce(t);  // never completes: rank 0 does not join
  std::fprintf(stderr, "hang mode: all_reduce returned on rank %d\n", world->rank());
  return 0;
}

// Child job of the PipelineWatchdog tests: a 1f1b program over 2 ranks (2 micro-batches)
// whose rank 0 stalls ("pipeline_stall": computing for 60 s, holding no watchdog guard) or dies
// ("pipeline_dead") in its second forward pass; rank 1 waits for that activation.
int run_pipeline_mode(int argc, char** argv, bool dead) {
  namespace pl = condensa::trainer::pipeline;
  MpiRuntime mpi(&argc, &argv);
  auto world = MpiCommunicator::world(env_double("CONDENSA_DIST_HANG_TIMEOUT_S", 3.0));
  const auto channels = pl::make_channels(*world);
  pl::ScheduleOptions o;
  o.num_ranks = 2;
  o.num_micro_batches = 2;
  const auto program = pl::build_program(o, pl::build_schedule(o));
  pl::Passes passes;
  passes.forward = [&](const pl::Action& a, const torch::Tensor& x) {
    if (world->rank() == 0 && a.micro_batch == 1) {
      if (dead) std::_Exit(3);
      std::this_thread::sleep_for(std::chrono::seconds(60));
      std::fprintf(stderr, "pipeline mode: rank 0 woke up; the job was not aborted\n");
      std::_Exit(0);
    }
    return a.stage == 0 ? torch::ones({2, 3}) : torch::Tensor();
  };
  passes.backward = [&](const pl::Action& a, const torch::Tensor& g) {
    return a.stage == 1 ? torch::ones({2, 3}) : torch::Tensor();
  };
  pl::run_program(program[world->rank()], passes, channels, {2, 3},
                  torch::TensorOptions().dtype(torch::kFloat32));
  std::fprintf(stderr, "pipeline mode: rank %d finished its program\n", world->rank());
  return 0;
}

// Non-zero ranks: print only failed assertions, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

// One line on stdout when the NCCL backend's contract cases were not registered (no CUDA
// device on some rank, or a build without CUDA): they did not run and are not counted as passed.
// Their number is that of the MPI cases of the same suites, which they mirror one for one.
void report_backends_not_run() {
  std::string reason;
  if (condensa::testing::backend_world("nccl", &reason)) return;
  int cases = 0;
  const auto& unit = *::testing::UnitTest::GetInstance();
  for (int i = 0; i < unit.total_test_suite_count(); ++i) {
    const auto& suite = *unit.GetTestSuite(i);
    if (std::string(suite.name()).rfind("Backends/", 0) != 0) continue;
    for (int k = 0; k < suite.total_test_count(); ++k) {
      const char* param = suite.GetTestInfo(k)->value_param();
      if (param && std::string(param).find("mpi") != std::string::npos) ++cases;
    }
  }
  const std::string prefix = "NCCL backend skipped: ";
  if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
  std::printf("NCCL backend: not run (%s): %d communicator contract cases not registered\n",
              reason.c_str(), cases);
}

}  // namespace

int main(int argc, char** argv) {
  const char* mode = std::getenv("CONDENSA_DIST_MODE");
  if (mode && std::string(mode) == "hang") return run_hang_mode(argc, argv);
  if (mode && std::string(mode) == "pipeline_stall") return run_pipeline_mode(argc, argv, false);
  if (mode && std::string(mode) == "pipeline_dead") return run_pipeline_mode(argc, argv, true);

  MpiRuntime mpi(&argc, &argv);
  // Before InitGoogleTest: registering the communicator contract asks every rank, collectively,
  // which backends can run. A hung test aborts the run instead of hanging CTest.
  condensa::testing::set_mpi_world(
      MpiCommunicator::world(env_double("CONDENSA_DIST_TIMEOUT_S", 120.0)));
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = condensa::testing::mpi_world().rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }

  const int local = RUN_ALL_TESTS() == 0 ? 0 : 1;
  if (rank == 0 && !::testing::GTEST_FLAG(list_tests)) report_backends_not_run();
  torch::Tensor failed = torch::full({1}, static_cast<int64_t>(local), torch::kInt64);
  condensa::testing::mpi_world().all_reduce(failed, condensa::parallel::ReduceOp::kMax);
  const int rc = failed.item<int64_t>() == 0 ? 0 : 1;
  if (rank == 0 && rc != 0 && local == 0) {
    std::fprintf(stderr, "condensa_dist_tests: a test failed on another rank (see [rank N])\n");
  }
  condensa::testing::release_communicators();
  return rc;
}
