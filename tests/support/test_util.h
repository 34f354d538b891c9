// Helpers shared by unit and end-to-end tests: temporary directories, running the condensa
// binary (or any shell command), and reading a run's metrics.jsonl.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace condensa::testing {

// A fresh, empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "t");
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `condensa <args>` (the built binary) in a shell; captures output and exit code.
CommandResult run_condensa(const std::string& args);
// Runs a shell command line; captures stdout and stderr together, and the exit code.
CommandResult run_command(const std::string& command_line);

// Absolute path of a file in the source tree, e.g. source_path("configs/tiny.yaml").
std::string source_path(const std::string& rel);

// `train configs/tiny.yaml --set run.dir=DIR --set log.every=1 EXTRA`: arguments of a tiny run
// that logs every step.
std::string tiny_train_args(const std::filesystem::path& run_dir, const std::string& extra);

// Every record of <run_dir>/metrics.jsonl, in file order.
std::vector<nlohmann::json> read_metrics(const std::filesystem::path& run_dir);
// step -> loss of the training records of <run_dir>/metrics.jsonl.
std::map<int64_t, double> read_losses(const std::filesystem::path& run_dir);

}  // namespace condensa::testing
