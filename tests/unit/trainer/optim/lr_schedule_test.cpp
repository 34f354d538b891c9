// Learning-rate schedule against hand-computed values at warm-up, cosine, linear and constant
// points.
#include "trainer/optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace condensa::trainer;

TEST(LrSchedule, WarmupThenCosineToMin) {
  OptimConfig o;
  o.lr = 1.0;
  o.min_lr = 0.1;
  o.warmup_steps = 10;
  o.schedule = "cosine";
  EXPECT_DOUBLE_EQ(lr_at(o, 110, 1), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(o, 110, 5), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(o, 110, 10), 1.0);
  EXPECT_NEAR(lr_at(o, 110, 60), 0.55, 1e-12);  // halfway: (1 + 0.1) / 2
  EXPECT_NEAR(lr_at(o, 110, 110), 0.1, 1e-12);
  EXPECT_NEAR(lr_at(o, 110, 200), 0.1, 1e-12);  // clamped after the end
  o.schedule = "linear";
  EXPECT_NEAR(lr_at(o, 110, 60), 0.55, 1e-12);
  EXPECT_NEAR(lr_at(o, 110, 35), 1.0 - 0.9 * 0.25, 1e-12);
  o.schedule = "constant";
  EXPECT_DOUBLE_EQ(lr_at(o, 110, 100), 1.0);
  o.warmup_steps = 0;
  o.schedule = "cosine";
  EXPECT_NEAR(lr_at(o, 100, 0), 1.0, 1e-12);
}

TEST(LrSchedule, PointsOfEachSchedule) {
  OptimConfig o;
  o.lr = 2e-3;
  o.min_lr = 2e-4;
  o.warmup_steps = 4;
  // Warm-up is linear from lr / 4 for every schedule, also "constant".
  for (const char* s : {"cosine", "linear", "constant"}) {
    o.schedule = s;
    EXPECT_NEAR(lr_at(o, 44, 1), 5e-4, 1e-15) << s;
    EXPECT_NEAR(lr_at(o, 44, 3), 1.5e-3, 1e-15) << s;
    EXPECT_NEAR(lr_at(o, 44, 4), 2e-3, 1e-15) << s;
  }
  // 40 decay steps after warm-up: step 14 is a quarter, 34 three quarters.
  o.schedule = "cosine";
  EXPECT_NEAR(lr_at(o, 44, 14), 2e-4 + 0.9e-3 * (1 + std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(lr_at(o, 44, 34), 2e-4 + 0.9e-3 * (1 - std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(lr_at(o, 44, 44), 2e-4, 1e-15);
  o.schedule = "linear";
  EXPECT_NEAR(lr_at(o, 44, 14), 2e-3 - 1.8e-3 * 0.25, 1e-15);
  EXPECT_NEAR(lr_at(o, 44, 44), 2e-4, 1e-15);
  EXPECT_NEAR(lr_at(o, 44, 50), 2e-4, 1e-15);
  o.schedule = "constant";
  EXPECT_DOUBLE_EQ(lr_at(o, 44, 5), 2e-3);
  EXPECT_DOUBLE_EQ(lr_at(o, 44, 44), 2e-3);
  // A run no longer than its warm-up decays in one step.
  o.schedule = "linear";
  EXPECT_NEAR(lr_at(o, 3, 5), 2e-4, 1e-15);
}
