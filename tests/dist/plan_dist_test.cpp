// The planner's measurements under mpirun: a timed collective is called equally often on every
// rank, however different the ranks' speeds (a count taken from each rank's own clock left one
// rank in an all-to-all while the other had gone on to the next collective: a hang).
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/dist/dist_env.h"
#include "trainer/plan/hardware.h"

namespace condensa::testing {
namespace {

TEST(PlanDist, TimedCollectiveIsCalledEquallyOftenOnEveryRank) {
  auto& world = mpi_world();
  int64_t calls = 0;
  auto x = torch::ones({4});
  const double seconds = trainer::plan::collective_seconds_per_call(
      world,
      [&] {
        // Rank 0 is fast, the others slow before they join the collective.
        if (world.rank() != 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        world.all_reduce(x, parallel::ReduceOp::kSum);
        ++calls;
      },
      // Ranks asking for different durations still agree on one count (with counts from each
      // rank's own clock, rank 0 would leave after 0.05 s while the others kept calling).
      0.05 * (1 + world.rank()));
  EXPECT_GT(seconds, 0.0);
  auto counts =
      torch::tensor({static_cast<double>(calls), -static_cast<double>(calls)}, torch::kFloat64);
  world.all_reduce(counts, parallel::ReduceOp::kMax);
  EXPECT_EQ(counts[0].item<double>(), static_cast<double>(calls))
      << "rank " << world.rank() << " made " << calls << " calls";
  EXPECT_EQ(-counts[1].item<double>(), static_cast<double>(calls))
      << "rank " << world.rank() << " made " << calls << " calls";
  EXPECT_GE(calls, 3);  // one warm-up, one probe, at least one timed call
}

}  // namespace
}  // namespace condensa::testing
