// The test harness itself: a failure on one rank only must fail the whole job, and be shown.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "tests/dist/child_job.h"
#include "tests/dist/dist_env.h"

namespace condensa::testing {
namespace {

// Fails only on the rank named by CONDENSA_DIST_FAIL_ON_RANK; skipped in normal runs.
TEST(HarnessTest, FailsOnTheRequestedRank) {
  const char* fail_rank = std::getenv("CONDENSA_DIST_FAIL_ON_RANK");
  if (!fail_rank) GTEST_SKIP() << "helper of FailureOnOneRankFailsTheJob (runs in its child job)";
  if (std::atoi(fail_rank) == mpi_world().rank()) {
    ADD_FAILURE() << "deliberate failure on rank " << mpi_world().rank();
  }
}

TEST(HarnessTest, FailureOnOneRankFailsTheJob) {
  if (mpi_world().rank() == 0) {
    const ChildResult child = run_child_job({"CONDENSA_DIST_FAIL_ON_RANK=1"},
                                            {"--gtest_filter=HarnessTest.FailsOnTheRequestedRank"},
                                            /*kill_after_s=*/300);
    SCOPED_TRACE("child job output:\n" + child.output);
    EXPECT_FALSE(child.killed_by_test);
    EXPECT_FALSE(exited_cleanly(child));
    EXPECT_NE(child.output.find("[rank 1] FAILED HarnessTest.FailsOnTheRequestedRank"),
              std::string::npos);
    EXPECT_NE(child.output.find("deliberate failure on rank 1"), std::string::npos);
    EXPECT_NE(child.output.find("a test failed on another rank"), std::string::npos);
  }
  mpi_world().barrier();
}

}  // namespace
}  // namespace condensa::testing
