// Watchdog in one process, with the abort replaced by a callback that records the message.
//
// Timing: a check that the watchdog fires waits for the event with a deadline (kFireDeadline)
// that only a broken watchdog reaches; a check that it stays quiet waits a fixed time, which a
// loaded machine can only make easier to pass, never fail.
#include "parallel/watchdog.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "common/error.h"

namespace condensa::parallel {
namespace {

constexpr auto kFireDeadline = std::chrono::seconds(60);

struct Recorder {
  std::promise<std::string> fired;
  WatchdogOptions options(double timeout_s) {
    WatchdogOptions o;
    o.timeout_s = timeout_s;
    o.rank = 5;
    o.host = "node-a";
    o.on_timeout = [this](const std::string& message) { fired.set_value(message); };
    return o;
  }
};

TEST(Watchdog, FiresOnceForAnOperationPastTheTimeout) {
  Recorder rec;
  Watchdog dog(rec.options(0.2));
  auto fired = rec.fired.get_future();
  Watchdog::Guard guard = dog.watch("all_to_all", "ep");
  ASSERT_EQ(fired.wait_for(kFireDeadline), std::future_status::ready);
  EXPECT_EQ(fired.get(),
            "condensa: rank 5 (host node-a): collective all_to_all on ep did not complete within "
            "0.2 s; aborting the job");
  EXPECT_TRUE(dog.fired());
}

TEST(Watchdog, ComputingWithoutInFlightOperationsNeverFires) {
  Recorder rec;
  Watchdog dog(rec.options(0.1));
  auto fired = rec.fired.get_future();
  {
    Watchdog::Guard quick = dog.watch("all_reduce", "dp");  // completes in time
    EXPECT_EQ(dog.num_in_flight(), 1);
  }
  EXPECT_EQ(dog.num_in_flight(), 0);
  // "Computing" for 5x the timeout: nothing is in flight.
  EXPECT_EQ(fired.wait_for(std::chrono::milliseconds(500)), std::future_status::timeout);
  EXPECT_FALSE(dog.fired());
}

TEST(Watchdog, ZeroTimeoutDisablesAndSetTimeoutReenables) {
  Recorder rec;
  Watchdog dog(rec.options(0));
  auto fired = rec.fired.get_future();
  Watchdog::Guard guard = dog.watch("barrier", "world");
  EXPECT_EQ(fired.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  dog.set_timeout_s(0.1);  // applies to the operation already in flight
  ASSERT_EQ(fired.wait_for(kFireDeadline), std::future_status::ready);
  EXPECT_NE(fired.get().find("collective barrier on world did not complete within 0.1 s"),
            std::string::npos);
}

TEST(Watchdog, NegativeTimeoutIsAConfigError) {
  WatchdogOptions o;
  o.timeout_s = -1;
  try {
    Watchdog dog(o);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "parallel.timeout_s (-1) must be >= 0 (0 disables the watchdog)");
  }
}

TEST(Watchdog, MovedGuardUnregistersOnce) {
  Recorder rec;
  Watchdog dog(rec.options(0));
  Watchdog::Guard a = dog.watch("send", "pp");
  Watchdog::Guard b = std::move(a);
  EXPECT_EQ(dog.num_in_flight(), 1);
  b = Watchdog::Guard();
  EXPECT_EQ(dog.num_in_flight(), 0);
}

}  // namespace
}  // namespace condensa::parallel
