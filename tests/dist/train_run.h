// Helpers of the multi-rank training tests (trainer_dist_test, pipeline_dist_test): a run
// directory every rank agrees on, `condensa train configs/tiny.yaml` in-process on a subset of
// ranks, and the per-step values of metrics.jsonl.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace condensa::testing {

// A temporary directory named by rank 0 (the same path on every rank). Collective.
std::string shared_tmp(const std::string& prefix, const std::string& tag);

// A fixture with one run directory per test (shared_tmp, named by the test), which every rank
// sees and rank 0 removes after the test.
class SharedRunDirTest : public ::testing::Test {
 protected:
  explicit SharedRunDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override;
  void TearDown() override;
  std::string dir(const std::string& name) const { return root_ + "/" + name; }
  std::string root_;

 private:
  std::string prefix_;
};

// Step -> metrics.jsonl's `key` ("loss", "grad_norm", "aux_loss", "val_loss") in `dir`.
using Curve = std::map<int64_t, double>;
Curve read_curve(const std::string& dir, const std::string& key = "loss");

// The first n ranks of the world as a communicator (nullptr on the others). Collective.
std::unique_ptr<parallel::Communicator> first_ranks(int n);

// Trains configs/tiny.yaml with `overrides` on the ranks of `comm` (others pass nullptr), then
// a barrier over the world.
void train_tiny(parallel::Communicator* comm, const std::vector<std::string>& overrides);

// `train(dir, overrides)` runs `layout` to the end in root/straight, then in root/resumed
// stopped after step 9 and resumed: the two loss curves of `steps` steps must be bitwise equal.
using TrainFn = std::function<void(const std::string& dir, const std::vector<std::string>&)>;
void expect_resume_is_bitwise(const TrainFn& train,
                              const std::string& root,
                              const std::vector<std::string>& layout,
                              int64_t steps);

}  // namespace condensa::testing
