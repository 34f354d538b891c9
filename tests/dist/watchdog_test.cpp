// The watchdog aborts a job whose collective hangs.
//
// Rank 0 launches a separate `mpirun -np 2` job of this binary in CONDENSA_DIST_MODE=hang (see
// main.cpp: its rank 0 sleeps instead of joining an all_reduce) and checks that the job dies
// with a non-zero exit code within timeout + margin, printing the watchdog's line for rank 1.
// The other ranks of this run wait at a barrier meanwhile.
#include <gtest/gtest.h>

#include "common/error.h"
#include "tests/dist/child_job.h"
#include "tests/dist/dist_env.h"

namespace condensa::testing {
namespace {

// The upper bound only has to tell "aborted by the watchdog" from "never aborted": generous, so
// that starting two ranks on a loaded machine cannot exceed it.
constexpr double kTimeoutS = 3;
constexpr double kMarginS = 60;
constexpr double kKillAfterS = 180;  // a broken watchdog must fail this test, not hang it

TEST(WatchdogTest, HungCollectiveAbortsEveryRank) {
  if (mpi_world().rank() == 0) {
    const ChildResult child =
        run_child_job({"CONDENSA_DIST_MODE=hang", str("CONDENSA_DIST_HANG_TIMEOUT_S=", kTimeoutS)},
                      {}, kKillAfterS);
    SCOPED_TRACE("child job output:\n" + child.output);
    EXPECT_FALSE(child.killed_by_test) << "the hung job was not aborted by its watchdog";
    EXPECT_FALSE(exited_cleanly(child)) << "the hung job exited 0";
    EXPECT_LT(child.elapsed_s, kTimeoutS + kMarginS);
    EXPECT_GE(child.elapsed_s, kTimeoutS);
    EXPECT_NE(child.output.find("condensa: rank 1 (host "), std::string::npos);
    EXPECT_NE(child.output.find("): collective all_reduce on world did not complete within 3 s; "
                                "aborting the job"),
              std::string::npos);
    // Rank 0 was computing, not in a collective: its watchdog must not have fired.
    EXPECT_EQ(child.output.find("condensa: rank 0 (host "), std::string::npos);
  }
  mpi_world().barrier();
}

}  // namespace
}  // namespace condensa::testing
