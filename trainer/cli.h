// Small command-line helpers shared by the subcommands: flag parsing and the MPI world.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "trainer/config.h"

namespace condensa::trainer {

// Parsed `--flag value` / `--flag=value` / positional arguments. Throws ConfigError for a
// flag not in `known` (naming it) or a value-taking flag without a value.
struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;  // "--set" -> {"a.b=c", ...}
  bool help = false;
  bool has(const std::string& f) const { return flags.count(f) > 0; }
  std::string get(const std::string& f, const std::string& fallback = "") const;
  double get_double(const std::string& f, double fallback) const;
  int64_t get_int(const std::string& f, int64_t fallback) const;
};
ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::vector<std::string>& value_flags,
                      const std::vector<std::string>& bool_flags = {});

// MPI (initialised once per process) and the world communicator for the config's backend.
struct World {
  std::unique_ptr<parallel::MpiRuntime> runtime;
  std::unique_ptr<parallel::MpiCommunicator> mpi;
  std::unique_ptr<parallel::Communicator> nccl;  // when parallel.backend resolves to nccl
  parallel::Communicator& comm() {
    return nccl ? *nccl : static_cast<parallel::Communicator&>(*mpi);
  }
};
World make_world(const ParallelConfig& parallel);

}  // namespace condensa::trainer
