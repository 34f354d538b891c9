#include "tests/dist/train_run.h"

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

}  // namespace condensa::testing
