#include "trainer/cli/preflight.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "common/error.h"
#include "trainer/config/memory.h"

namespace condensa::trainer {

namespace fs = std::filesystem;

namespace {

// Ranks on this node as the launcher tells them (Open MPI, MPICH/Hydra, Slurm); 1 otherwise.
int64_t ranks_on_this_node() {
  for (const char* name :
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    const char* v = std::getenv(name);
    if (v && std::atoll(v) > 0) return std::atoll(v);
  }
  return 1;
}

// "section.key: value" for every key of a resolved config (config_to_yaml prints sections at
// column 0 and their keys indented below).
std::vector<std::string> flat_keys(const std::string& yaml) {
  std::vector<std::string> out;
  std::istringstream in(yaml);
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] != ' ') {
      section = line.substr(0, line.find(':'));
    } else {
      out.push_back(section + "." + line.substr(line.find_first_not_of(' ')));
    }
  }
  return out;
}

}  // namespace

void check_memory(const Config& config, int64_t world_size) {
  check_memory_fits(estimate_memory(config, world_size), ranks_on_this_node(),
                    machine_memory_bytes());
}

void check_same_config_on_every_rank(parallel::Communicator& world, const Config& config) {
  const std::vector<std::string> texts = world.all_gather_string(config_to_yaml(config));
  const std::vector<std::string> base = flat_keys(texts[0]);
  std::string differences;
  int count = 0;
  for (size_t r = 1; r < texts.size() && count < 4; ++r) {
    if (texts[r] == texts[0]) continue;
    const std::vector<std::string> other = flat_keys(texts[r]);
    for (size_t i = 0; i < std::max(base.size(), other.size()) && count < 4; ++i) {
      const std::string a = i < base.size() ? base[i] : "(none)";
      const std::string b = i < other.size() ? other[i] : "(none)";
      if (a == b) continue;
      differences += str(count ? "; " : "", "rank 0 has ", a, " but rank ", r, " has ", b);
      ++count;
    }
  }
  if (count == 0) return;
  throw ConfigError(str("config differs between ranks: ", differences,
                        "; launch every rank with the same config file and --set overrides"));
}

void check_run_dir_writable(const Config& config) {
  const fs::path dir = config.run.dir, checkpoints = dir / "checkpoints";
  std::error_code ec;
  CONDENSA_CHECK(!fs::exists(dir, ec) || fs::is_directory(dir, ec), ConfigError, "run.dir = '",
                 dir.string(), "': exists and is not a directory");
  CONDENSA_CHECK(!fs::exists(checkpoints, ec) || fs::is_directory(checkpoints, ec), ConfigError,
                 "run.dir = '", dir.string(), "': ", checkpoints.string(),
                 " exists and is not a directory, so no checkpoint could be saved");
  fs::create_directories(checkpoints, ec);
  CONDENSA_CHECK(!ec, ConfigError, "run.dir = '", dir.string(), "': cannot create ",
                 checkpoints.string(), ": ", ec.message());
  // Permissions alone do not tell (root ignores them, read-only mounts do not): write a file.
  const fs::path probe = checkpoints / str(".write_test.", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  CONDENSA_CHECK(fd >= 0, ConfigError, "run.dir = '", dir.string(), "': ", checkpoints.string(),
                 " is not writable (", std::strerror(errno), "), so no checkpoint could be saved");
  ::close(fd);
  fs::remove(probe, ec);
}

void check_resume_path(const Config& config) {
  const std::string& resume = config.checkpoint.resume;
  if (resume == "auto" || resume == "none") return;
  std::error_code ec;
  CONDENSA_CHECK(fs::is_directory(resume, ec), ConfigError, "checkpoint.resume = '", resume,
                 "': not auto, none or an existing checkpoint directory");
}

}  // namespace condensa::trainer
