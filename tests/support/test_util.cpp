#include "tests/support/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>

namespace condensa::testing {

TempDir::TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("condensa-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++) +
           "-" + std::to_string(rd() % 100000));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CommandResult run_condensa(const std::string& args) {
  return run_command(std::string(CONDENSA_BINARY) + " " + args);
}

CommandResult run_command(const std::string& command_line) {
  CommandResult r;
  const std::string cmd = command_line + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string source_path(const std::string& rel) {
  return std::string(CONDENSA_SOURCE_DIR) + "/" + rel;
}

std::string tiny_train_args(const std::filesystem::path& run_dir, const std::string& extra) {
  return "train " + source_path("configs/tiny.yaml") + " --set run.dir=" + run_dir.string() +
         " --set log.every=1 " + extra;
}

std::vector<nlohmann::json> read_metrics(const std::filesystem::path& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::map<int64_t, double> read_losses(const std::filesystem::path& run_dir) {
  std::map<int64_t, double> out;
  for (const auto& j : read_metrics(run_dir)) {
    if (j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

}  // namespace condensa::testing
