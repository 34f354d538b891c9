// Launching a separate `mpirun -np 2` job of this test binary, for tests whose subject is a
// whole job (its exit code, its output, how long it took): the watchdog and the harness itself.
#pragma once

#include <string>
#include <vector>

namespace condensa::testing {

struct ChildResult {
  int status = 0;               // waitpid status of mpirun
  double elapsed_s = 0;         // wall time until mpirun exited
  bool killed_by_test = false;  // still running after kill_after_s, so killed
  std::string output;           // stdout and stderr of every rank and of mpirun
};

// Runs `mpirun -np 2 <this binary> <args>` with this process's environment minus the MPI
// launcher's variables (so the child is a job of its own), plus `extra_env` ("NAME=value",
// forwarded to the ranks). Kills the job's process group after kill_after_s.
ChildResult run_child_job(const std::vector<std::string>& extra_env,
                          const std::vector<std::string>& args,
                          double kill_after_s);

// True when the child job exited with status 0.
bool exited_cleanly(const ChildResult& result);

}  // namespace condensa::testing
