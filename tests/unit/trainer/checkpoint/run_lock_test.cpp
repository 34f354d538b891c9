// The run-directory lock: one holder at a time, the refusal names the holder, a clean release
// leaves nothing stale, and a lock whose holder died is taken over and reported.
#include "trainer/checkpoint/run_lock.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "common/error.h"
#include "tests/support/test_util.h"

namespace condensa::trainer {
namespace {

namespace fs = std::filesystem;
using condensa::testing::TempDir;

std::string hostname() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

TEST(RunDirLock, SecondHolderIsRefusedWithTheFirstHoldersHostAndPid) {
  TempDir dir("lock");
  const std::string run_dir = (dir.path() / "run").string();  // created by the lock
  auto first = std::make_unique<RunDirLock>(run_dir);
  EXPECT_EQ(first->path(), run_dir + "/.lock");
  EXPECT_TRUE(first->stale_holder().empty());
  try {
    RunDirLock second(run_dir);
    ADD_FAILURE() << "a second lock on " << run_dir << " was granted";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& part :
         std::vector<std::string>{"run.dir " + run_dir, "is in use", "host " + hostname(),
                                  "pid " + std::to_string(::getpid()), run_dir + "/.lock"}) {
      EXPECT_NE(what.find(part), std::string::npos) << what << "\n  lacks: " << part;
    }
  }
  first.reset();  // released: the next run takes it, and finds no stale holder
  RunDirLock again(run_dir);
  EXPECT_TRUE(again.stale_holder().empty());
}

// A holder killed while holding the lock: the kernel drops the flock, the next run takes it and
// reports what the dead holder wrote.
TEST(RunDirLock, LockOfAKilledHolderIsTakenOverAndReported) {
  TempDir dir("lock");
  const std::string run_dir = dir.str();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RunDirLock held(run_dir);
    char c = 1;
    if (::write(ready[1], &c, 1) != 1) ::_exit(3);
    ::pause();  // killed below, without releasing
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  EXPECT_THROW(RunDirLock busy(run_dir), Error);  // held by the child
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ::close(ready[0]);
  ::close(ready[1]);
  RunDirLock taken(run_dir);
  EXPECT_NE(taken.stale_holder().find("pid " + std::to_string(child)), std::string::npos)
      << taken.stale_holder();
}

}  // namespace
}  // namespace condensa::trainer
