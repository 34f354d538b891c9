// AdamW update and learning-rate schedule against hand formulas.
#include "trainer/optim/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace condensa::trainer;

TEST(AdamW, OneStepMatchesFormula) {
  auto p = torch::tensor({1.0, -2.0}, torch::kFloat64);
  auto g = torch::tensor({0.5, 0.25}, torch::kFloat64);
  auto m = torch::zeros(2, torch::kFloat64), v = torch::zeros(2, torch::kFloat64);
  AdamWHyper h{0.9, 0.95, 1e-8, 0.1};
  const double lr = 0.01;
  adamw_update(p, g, m, v, lr, 1, h);
  for (int i = 0; i < 2; ++i) {
    double p0 = i == 0 ? 1.0 : -2.0, g0 = i == 0 ? 0.5 : 0.25;
    double mm = 0.1 * g0, vv = 0.05 * g0 * g0;
    double mhat = mm / (1 - 0.9), vhat = vv / (1 - 0.95);
    double expected = p0 * (1 - lr * 0.1) - lr * mhat / (std::sqrt(vhat) + 1e-8);
    EXPECT_NEAR(p[i].item<double>(), expected, 1e-12);
    EXPECT_NEAR(m[i].item<double>(), mm, 1e-15);
    EXPECT_NEAR(v[i].item<double>(), vv, 1e-15);
  }
}

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
