// The Optimizer on one rank (a ReplicaCommunicator of size 1): AdamW over several steps against
// a scalar reference (weight decay on 2-D parameters, none on 1-D), gradient clipping, the
// extra norm sum of expert groups, and the export / import of its state.
#include "trainer/optim/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "common/error.h"
#include "tests/support/replica_communicator.h"
#include "trainer/optim/lr_schedule.h"

using namespace condensa;
using namespace condensa::trainer;
using condensa::testing::ReplicaCommunicator;

namespace {

OptimConfig test_config() {
  OptimConfig o;
  o.lr = 1e-2;
  o.min_lr = 1e-3;
  o.warmup_steps = 2;
  o.beta1 = 0.85;
  o.beta2 = 0.9;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  return o;
}

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Scalar AdamW of one parameter in double.
struct ScalarParam {
  std::vector<double> p, m, v;
  bool decay;
  void step(const std::vector<double>& g, double lr, int t, const OptimConfig& o) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] *= 1 - lr * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(o.beta1, t));
      const double v_hat = v[i] / (1 - std::pow(o.beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + o.eps);
    }
  }
};

torch::Tensor new_param(torch::IntArrayRef shape) {
  return torch::randn(shape).set_requires_grad(true);
}

ParamGroupSpec group(parallel::Communicator& comm, std::vector<NamedParam> params) {
  return ParamGroupSpec{"dense", std::move(params), &comm, nullptr, 1.0};
}

std::map<std::string, torch::Tensor> state_by_key(const Optimizer& opt) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& s : opt.owned_state())
    out[s.param + "." + s.kind + "@" + std::to_string(s.start)] = s.data.clone();
  return out;
}

}  // namespace

TEST(Optimizer, SeveralStepsMatchScalarReferenceWithDecayOnlyOn2D) {
  torch::manual_seed(21);
  const auto cfg = test_config();
  ReplicaCommunicator comm(1, 0);
  auto w = new_param({3, 4}), b = new_param({5});
  std::vector<ScalarParam> ref = {
      {to_vector(w), std::vector<double>(12), std::vector<double>(12), true},
      {to_vector(b), std::vector<double>(5), std::vector<double>(5), false}};
  Optimizer opt({group(comm, {{"w", w}, {"b", b}})}, cfg, 0);
  for (int t = 1; t <= 5; ++t) {
    w.mutable_grad() = torch::randn({3, 4});
    b.mutable_grad() = torch::randn({5});
    ref[0].step(to_vector(w.grad()), lr_at(cfg, 5, t), t, cfg);
    ref[1].step(to_vector(b.grad()), lr_at(cfg, 5, t), t, cfg);
    opt.reduce_gradients();
    opt.clip_grad_norm(0.0);
    opt.step(lr_at(cfg, 5, t));
  }
  EXPECT_EQ(opt.step_count(), 5);
  const auto got_w = to_vector(w), got_b = to_vector(b);
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(got_w[i], ref[0].p[i], 1e-5) << "w " << i;
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(got_b[i], ref[1].p[i], 1e-5) << "b " << i;
}

TEST(Optimizer, ClipReturnsNormBeforeClippingAndScalesGradients) {
  torch::manual_seed(22);
  ReplicaCommunicator comm(1, 0);
  auto w = new_param({4, 3}), b = new_param({6});
  auto gw = torch::randn({4, 3}), gb = torch::randn({6});
  double sq = 0;
  for (double x : to_vector(gw)) sq += x * x;
  for (double x : to_vector(gb)) sq += x * x;
  const double norm = std::sqrt(sq);
  const auto cfg = test_config();

  // max_norm: below the norm (clips), above it (no-op) and 0 (off).
  for (double max_norm : {0.25 * norm, 2.0 * norm, 0.0}) {
    SCOPED_TRACE(max_norm);
    Optimizer opt({group(comm, {{"w", w}, {"b", b}})}, cfg, 0);
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    opt.reduce_gradients();
    EXPECT_NEAR(opt.clip_grad_norm(max_norm), norm, 1e-5 * norm);
    opt.step(1e-3);
    // After one step exp_avg = (1 - beta1) * (the gradient the update saw).
    const double scale = max_norm > 0 && max_norm < norm ? max_norm / (norm + 1e-6) : 1.0;
    auto state = state_by_key(opt);
    auto expect_avg = [&](const std::string& key, const torch::Tensor& g) {
      auto want = to_vector(g * (1 - cfg.beta1) * scale), got = to_vector(state.at(key));
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << key << i;
    };
    expect_avg("w.exp_avg@0", gw);
    expect_avg("b.exp_avg@0", gb);
  }
}

TEST(Optimizer, NormOfExpertGroupSumsOverItsNormCommunicator) {
  torch::manual_seed(23);
  ReplicaCommunicator dp(1, 0), ep(3, 0);  // 3 ep ranks with identical expert gradients
  auto d = new_param({5}), e = new_param({2, 4});
  d.mutable_grad() = torch::randn({5});
  e.mutable_grad() = torch::randn({2, 4});
  const double d_sq = d.grad().pow(2).sum().item<double>(),
               e_sq = e.grad().pow(2).sum().item<double>();
  ParamGroupSpec dense{"dense", {{"d", d}}, &dp, nullptr, 0.5};
  ParamGroupSpec expert{"expert", {{"e", e}}, &dp, &ep, 0.5};
  Optimizer opt({dense, expert}, test_config(), 1);
  opt.reduce_gradients();
  EXPECT_NEAR(opt.clip_grad_norm(0.0), 0.5 * std::sqrt(d_sq + 3 * e_sq), 1e-5);
}

TEST(Optimizer, StateExportImportRoundTrips) {
  torch::manual_seed(24);
  ReplicaCommunicator comm(1, 0);
  auto w = new_param({3, 5}), b = new_param({4});
  const auto cfg = test_config();
  Optimizer a({group(comm, {{"w", w}, {"b", b}})}, cfg, 0);
  for (int t = 1; t <= 3; ++t) {
    w.mutable_grad() = torch::randn({3, 5});
    b.mutable_grad() = torch::randn({4});
    a.reduce_gradients();
    a.step(1e-2);
  }
  auto saved = state_by_key(a);
  ASSERT_EQ(saved.size(), 4u);  // two parameters, whole, two kinds each
  auto w2 = w.detach().clone().set_requires_grad(true),
       b2 = b.detach().clone().set_requires_grad(true);
  Optimizer c({group(comm, {{"w", w2}, {"b", b2}})}, cfg, 0);
  c.load_state([&](const std::string& param, const std::string& kind) {
    return saved.at(param + "." + kind + "@0");
  });
  c.set_step_count(a.step_count());
  auto loaded = state_by_key(c);
  for (auto& [key, t] : saved) EXPECT_TRUE(torch::equal(loaded.at(key), t)) << key;
  // The next step is bitwise the same.
  auto gw = torch::randn({3, 5}), gb = torch::randn({4});
  w.mutable_grad() = gw.clone();
  b.mutable_grad() = gb.clone();
  w2.mutable_grad() = gw.clone();
  b2.mutable_grad() = gb.clone();
  a.reduce_gradients();
  c.reduce_gradients();
  a.step(1e-2);
  c.step(1e-2);
  EXPECT_TRUE(torch::equal(w, w2));
  EXPECT_TRUE(torch::equal(b, b2));

  Optimizer wrong({group(comm, {{"w", w2}})}, cfg, 0);
  EXPECT_THROW(
      wrong.load_state([](const std::string&, const std::string&) { return torch::zeros({7}); }),
      CheckpointError);
}

TEST(Optimizer, FusedAndReferenceUpdatesAgreeOverSteps) {
  // optim.fused (at::_fused_adamw_) against the element-wise reference, both paths against the
  // scalar reference above (SeveralStepsMatchScalarReference runs the default, fused).
  ReplicaCommunicator comm(1, 0);
  auto cfg = test_config();
  std::vector<std::vector<double>> finals;
  for (bool fused : {false, true}) {
    cfg.fused = fused;
    torch::manual_seed(31);
    auto w = new_param({6, 5}), b = new_param({7});
    Optimizer opt({group(comm, {{"w", w}, {"b", b}})}, cfg, 0);
    for (int t = 1; t <= 6; ++t) {
      w.mutable_grad() = torch::randn({6, 5});
      b.mutable_grad() = torch::randn({7});
      opt.reduce_gradients();
      opt.clip_grad_norm(1.0);
      opt.step(lr_at(cfg, 6, t));
    }
    auto v = to_vector(w), vb = to_vector(b);
    v.insert(v.end(), vb.begin(), vb.end());
    finals.push_back(v);
  }
  ASSERT_EQ(finals[0].size(), finals[1].size());
  for (size_t i = 0; i < finals[0].size(); ++i) EXPECT_NEAR(finals[1][i], finals[0][i], 1e-6) << i;
}

TEST(Optimizer, ParametersAndGradientsAreViewsOfOneBufferAndBackwardAccumulates) {
  // The step neither copies parameters in or out nor flattens gradients: backward accumulates
  // into the optimizer's buffer (two micro-batches here) and the update lands in the modules'
  // own tensors.
  ReplicaCommunicator comm(1, 0);
  torch::manual_seed(32);
  auto w = new_param({4, 3}), b = new_param({3});
  const auto w0 = w.detach().clone(), b0 = b.detach().clone();
  Optimizer opt({group(comm, {{"w", w}, {"b", b}})}, test_config(), 0);
  EXPECT_TRUE(torch::equal(w, w0));  // binding keeps the values
  EXPECT_TRUE(torch::equal(b, b0));
  EXPECT_EQ(static_cast<float*>(b.data_ptr()), static_cast<float*>(w.data_ptr()) + 12);
  opt.zero_grad();
  const auto* grad_ptr = w.grad().data_ptr();
  auto x1 = torch::randn({2, 4}), x2 = torch::randn({5, 4});
  (torch::matmul(x1, w) + b).sum().backward();
  (torch::matmul(x2, w) + b).pow(2).sum().backward();
  EXPECT_EQ(w.grad().data_ptr(), grad_ptr);  // accumulated in place
  // Reference gradient of the two micro-batches, computed on copies.
  auto wr = w0.clone().requires_grad_(), br = b0.clone().requires_grad_();
  ((torch::matmul(x1, wr) + br).sum() + (torch::matmul(x2, wr) + br).pow(2).sum()).backward();
  EXPECT_TRUE(torch::allclose(w.grad(), wr.grad(), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(b.grad(), br.grad(), 1e-6, 1e-6));
  opt.reduce_gradients();
  opt.clip_grad_norm(0.0);
  opt.step(1e-2);
  EXPECT_FALSE(torch::equal(w, w0));  // updated in place, through the views
  EXPECT_EQ(static_cast<float*>(b.data_ptr()), static_cast<float*>(w.data_ptr()) + 12);
  opt.zero_grad();
  EXPECT_EQ(w.grad().abs().sum().item<double>(), 0.0);
  EXPECT_EQ(w.grad().data_ptr(), grad_ptr);
}
