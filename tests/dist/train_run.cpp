#include "tests/dist/train_run.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/dist/dist_env.h"
#include "trainer/config/config.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;

namespace condensa::testing {

std::string shared_tmp(const std::string& prefix, const std::string& tag) {
  auto names = mpi_world().all_gather_string(
      (fs::temp_directory_path() / (prefix + std::to_string(::getpid()) + "-" + tag)).string());
  return names[0];
}

void SharedRunDirTest::SetUp() {
  root_ = shared_tmp(prefix_, ::testing::UnitTest::GetInstance()->current_test_info()->name());
}

void SharedRunDirTest::TearDown() {
  mpi_world().barrier();
  if (mpi_world().rank() == 0) fs::remove_all(root_);
}

Curve read_curve(const std::string& dir, const std::string& key) {
  Curve out;
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains(key)) out[j["step"]] = j[key];
  }
  return out;
}

std::unique_ptr<parallel::Communicator> first_ranks(int n) {
  auto& world = mpi_world();
  return world.split(world.rank() < n ? 0 : -1, world.rank());
}

void train_tiny(parallel::Communicator* comm, const std::vector<std::string>& overrides) {
  if (comm) {
    auto cfg =
        trainer::load_config(std::string(CONDENSA_SOURCE_DIR) + "/configs/tiny.yaml", overrides);
    cfg.validate_for_world(comm->size());
    trainer::Trainer t(cfg, *comm);
    t.run();
  }
  mpi_world().barrier();
}

void expect_resume_is_bitwise(const TrainFn& train,
                              const std::string& root,
                              const std::vector<std::string>& layout,
                              int64_t steps) {
  const std::string straight = root + "/straight", resumed = root + "/resumed";
  train(straight, layout);
  auto stop = layout;
  stop.push_back("train.stop_at_step=9");
  train(resumed, stop);
  train(resumed, layout);
  auto a = read_curve(straight), b = read_curve(resumed);
  ASSERT_EQ(b.size(), static_cast<size_t>(steps));
  for (int64_t s = 1; s <= steps; ++s) EXPECT_EQ(a[s], b[s]) << "step " << s;
}

}  // namespace condensa::testing
