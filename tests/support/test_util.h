// Helpers shared by unit tests: temporary directories and running the condensa binary.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

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

// Absolute path of a file in the source tree, e.g. source_path("configs/tiny.yaml").
std::string source_path(const std::string& rel);

}  // namespace condensa::testing
