// The sharded optimizer under mpirun: ZeRO-0 and ZeRO-1 over a data-parallel group of every
// world rank reach the parameters of a single-process optimizer fed the summed gradients, and a
// ZeRO-1 shard's exported state reassembles into the single-process state and loads back.
//
// Parameters are identical on every rank; rank r's gradients are seeded by (step, r), so the
// single-process reference on each rank recomputes every rank's gradients and sums them in
// float64. Tolerance: kTol absolute on parameters of size ~1 after kSteps steps with lr 1e-2
// (the ranks sum in float32, in the backend's order; a wrong shard offset moves elements by ~lr).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "tests/dist/dist_env.h"
#include "tests/support/replica_communicator.h"
#include "trainer/optim/optimizer.h"

namespace condensa::testing {
namespace {

using trainer::NamedParam;
using trainer::OptimConfig;
using trainer::Optimizer;
using trainer::ParamGroupSpec;

constexpr double kTol = 1e-5;
constexpr int kSteps = 3;
constexpr double kLr = 1e-2;
constexpr double kMaxNorm = 1.0;  // below the gradient norm (~4): clipping is on

// Shapes whose flat buffer (74 elements) is padded on 4 ranks and whose tensors straddle shard
// edges on 2 and 4 ranks; 1-D tensors (no weight decay) among them.
const std::vector<std::vector<int64_t>> kShapes = {{7, 5}, {9}, {3, 4, 2}, {6}};

OptimConfig config() {
  OptimConfig o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  return o;
}

std::vector<NamedParam> initial_params() {
  std::vector<NamedParam> out;
  for (size_t i = 0; i < kShapes.size(); ++i) {
    out.push_back(
        {"p" + std::to_string(i),
         seeded_normal(100 + i, 0, kShapes[i]).to(torch::kFloat32).set_requires_grad(true)});
  }
  return out;
}

torch::Tensor rank_grad(int step, size_t param, int rank) {
  return seeded_normal(1000 * step + param, rank, kShapes[param]).to(torch::kFloat32);
}

void set_grads(std::vector<NamedParam>& params, int step, int rank, int world) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (rank >= 0) {
      params[i].param.mutable_grad() = rank_grad(step, i, rank);
    } else {  // the reference: the sum over every rank, in float64
      auto sum = torch::zeros(kShapes[i], torch::kFloat64);
      for (int r = 0; r < world; ++r) sum += rank_grad(step, i, r).to(torch::kFloat64);
      params[i].param.mutable_grad() = sum.to(torch::kFloat32);
    }
  }
}

// Runs `steps` steps from `from_step` + 1; returns the gradient norms.
std::vector<double> train(Optimizer& opt,
                          std::vector<NamedParam>& params,
                          int from_step,
                          int steps,
                          int rank,
                          int world) {
  std::vector<double> norms;
  for (int t = from_step + 1; t <= from_step + steps; ++t) {
    set_grads(params, t, rank, world);
    opt.reduce_gradients();
    norms.push_back(opt.clip_grad_norm(kMaxNorm));
    opt.step(kLr);
  }
  return norms;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.detach().to(torch::kFloat64) - b.detach().to(torch::kFloat64))
      .abs()
      .max()
      .item<double>();
}

// The whole flattened state of every parameter, assembled from every rank's owned pieces.
std::map<std::string, torch::Tensor> assemble_state(const Optimizer& opt,
                                                    const std::vector<NamedParam>& params,
                                                    parallel::Communicator& comm) {
  std::map<std::string, torch::Tensor> full;
  std::map<std::string, torch::Tensor> coverage;
  for (const auto& p : params) {
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      full[p.name + "." + kind] = torch::zeros({p.param.numel()});
      coverage[p.name + "." + kind] = torch::zeros({p.param.numel()});
    }
  }
  for (const auto& piece : opt.owned_state()) {
    const auto key = piece.param + "." + piece.kind;
    full.at(key).narrow(0, piece.start, piece.end - piece.start).copy_(piece.data);
    coverage.at(key).narrow(0, piece.start, piece.end - piece.start).add_(1);
  }
  for (auto& [key, t] : full) {
    comm.all_reduce(t);  // pieces are disjoint: x + 0 is exact
    comm.all_reduce(coverage.at(key));
    EXPECT_TRUE(torch::equal(coverage.at(key), torch::ones_like(t))) << key << " not covered once";
  }
  return full;
}

TEST(OptimDist, ZeroStagesMatchSingleProcessOnSummedGradients) {
  auto& world = mpi_world();
  const int rank = world.rank(), n = world.size();
  ReplicaCommunicator solo(1, 0);
  auto ref_params = initial_params();
  Optimizer ref({ParamGroupSpec{"dense", ref_params, &solo, nullptr, 1.0 / n}}, config(), 0);
  const auto ref_norms = train(ref, ref_params, 0, kSteps, -1, n);
  EXPECT_GT(ref_norms[0], 2 * kMaxNorm);

  for (int zero : {0, 1}) {
    SCOPED_TRACE(str("zero stage ", zero, ", world ", n));
    auto params = initial_params();
    Optimizer opt({ParamGroupSpec{"dense", params, &world, nullptr, 1.0 / n}}, config(), zero);
    const auto norms = train(opt, params, 0, kSteps, rank, n);
    for (int t = 0; t < kSteps; ++t) EXPECT_NEAR(norms[t], ref_norms[t], 1e-5 * ref_norms[t]);
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_LT(max_abs_diff(params[i].param, ref_params[i].param), kTol) << params[i].name;
      // Identical on every rank, bitwise.
      auto all = torch::empty({n * params[i].param.numel()});
      auto mine = params[i].param.detach().reshape({-1}).contiguous();
      world.all_gather(mine, all);
      for (int r = 0; r < n; ++r)
        EXPECT_TRUE(torch::equal(all.narrow(0, r * mine.numel(), mine.numel()), mine))
            << params[i].name << " differs on rank " << r;
    }
  }
}

TEST(OptimDist, Zero1StateExportsAndLoadsBack) {
  auto& world = mpi_world();
  const int rank = world.rank(), n = world.size();
  ReplicaCommunicator solo(1, 0);
  auto ref_params = initial_params();
  Optimizer ref({ParamGroupSpec{"dense", ref_params, &solo, nullptr, 1.0 / n}}, config(), 0);
  train(ref, ref_params, 0, kSteps, -1, n);

  auto params = initial_params();
  Optimizer a({ParamGroupSpec{"dense", params, &world, nullptr, 1.0 / n}}, config(), 1);
  train(a, params, 0, kSteps, rank, n);

  // The pieces of all ranks tile every parameter's state, which is the single-process state.
  auto full = assemble_state(a, params, world);
  auto ref_full = assemble_state(ref, ref_params, solo);
  for (auto& [key, t] : full) {
    const double scale = ref_full.at(key).abs().max().item<double>();
    EXPECT_LT(max_abs_diff(t, ref_full.at(key)), 1e-5 * scale) << key;
  }

  // A fresh ZeRO-1 optimizer loads it: the same owned state, then bitwise the same next step.
  std::vector<NamedParam> params_b;
  for (auto& p : params)
    params_b.push_back({p.name, p.param.detach().clone().set_requires_grad(true)});
  Optimizer b({ParamGroupSpec{"dense", params_b, &world, nullptr, 1.0 / n}}, config(), 1);
  b.load_state([&](const std::string& param, const std::string& kind) {
    return full.at(param + "." + kind);
  });
  b.set_step_count(a.step_count());
  const auto sa = a.owned_state(), sb = b.owned_state();
  EXPECT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < std::min(sa.size(), sb.size()); ++i) {
    EXPECT_EQ(sa[i].param + sa[i].kind, sb[i].param + sb[i].kind);
    EXPECT_EQ(sa[i].start, sb[i].start);
    EXPECT_TRUE(torch::equal(sa[i].data, sb[i].data)) << sa[i].param << "." << sa[i].kind;
  }
  train(a, params, kSteps, 1, rank, n);
  train(b, params_b, kSteps, 1, rank, n);
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(torch::equal(params[i].param, params_b[i].param)) << params[i].name;
}

}  // namespace
}  // namespace condensa::testing
