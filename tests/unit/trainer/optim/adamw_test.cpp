// The element-wise AdamW update against hand formulas and a scalar reference loop over steps.
#include "trainer/optim/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

using namespace condensa::trainer;

namespace {

// Independent reference: one scalar at a time, with bias correction, decoupled weight decay.
struct ScalarAdamW {
  std::vector<double> p, m, v;
  void step(const std::vector<double>& g, double lr, int t, const AdamWHyper& h) {
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] -= lr * h.weight_decay * p[i];
      m[i] = h.beta1 * m[i] + (1 - h.beta1) * g[i];
      v[i] = h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(h.beta1, t));
      const double v_hat = v[i] / (1 - std::pow(h.beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + h.eps);
    }
  }
};

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

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

TEST(AdamW, SeveralStepsMatchScalarReference) {
  torch::manual_seed(11);
  for (double wd : {0.0, 0.1}) {
    SCOPED_TRACE(wd);
    AdamWHyper h{0.8, 0.9, 1e-8, wd};
    auto p = torch::randn({7}, torch::kFloat64);
    auto m = torch::zeros({7}, torch::kFloat64), v = torch::zeros({7}, torch::kFloat64);
    ScalarAdamW ref{to_vector(p), std::vector<double>(7, 0.0), std::vector<double>(7, 0.0)};
    for (int t = 1; t <= 6; ++t) {
      auto g = torch::randn({7}, torch::kFloat64) * (t % 2 == 0 ? 0.1 : 3.0);
      const double lr = 0.05 / t;
      adamw_update(p, g, m, v, lr, t, h);
      ref.step(to_vector(g), lr, t, h);
    }
    auto got_p = to_vector(p), got_m = to_vector(m), got_v = to_vector(v);
    for (int i = 0; i < 7; ++i) {
      EXPECT_NEAR(got_p[i], ref.p[i], 1e-12) << i;
      EXPECT_NEAR(got_m[i], ref.m[i], 1e-13) << i;
      EXPECT_NEAR(got_v[i], ref.v[i], 1e-13) << i;
    }
  }
}

TEST(AdamW, UpdatesOnlyTheGivenSlice) {
  torch::manual_seed(12);
  auto p = torch::randn({10}), g = torch::randn({10});
  auto m = torch::zeros({10}), v = torch::zeros({10});
  auto before = p.clone();
  adamw_update(p.narrow(0, 3, 4), g.narrow(0, 3, 4), m.narrow(0, 3, 4), v.narrow(0, 3, 4), 0.1, 1,
               AdamWHyper{0.9, 0.95, 1e-8, 0.1});
  EXPECT_TRUE(torch::equal(p.narrow(0, 0, 3), before.narrow(0, 0, 3)));
  EXPECT_TRUE(torch::equal(p.narrow(0, 7, 3), before.narrow(0, 7, 3)));
  EXPECT_FALSE(torch::equal(p.narrow(0, 3, 4), before.narrow(0, 3, 4)));
  EXPECT_TRUE(torch::equal(m.narrow(0, 0, 3), torch::zeros({3})));
}

TEST(AdamW, WeightDecayOnlyForTensorsOfTwoOrMoreDims) {
  EXPECT_TRUE(uses_weight_decay(torch::zeros({3, 4})));
  EXPECT_TRUE(uses_weight_decay(torch::zeros({2, 3, 4})));
  EXPECT_FALSE(uses_weight_decay(torch::zeros({5})));
  EXPECT_FALSE(uses_weight_decay(torch::zeros({})));
}
