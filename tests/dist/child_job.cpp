#include "tests/dist/child_job.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"

extern char** environ;

namespace condensa::testing {

namespace {

bool is_launcher_variable(const std::string& kv) {
  if (kv.rfind("OMPI_ALLOW_RUN_AS_ROOT", 0) == 0) return false;
  for (const char* prefix : {"OMPI_", "PMIX_", "OPAL_", "ORTE_", "PRTE_", "HYDRA_", "PMI_"}) {
    if (kv.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

}  // namespace

bool exited_cleanly(const ChildResult& result) {
  return WIFEXITED(result.status) && WEXITSTATUS(result.status) == 0;
}

ChildResult run_child_job(const std::vector<std::string>& extra_env,
                          const std::vector<std::string>& args,
                          double kill_after_s) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string log =
      (std::filesystem::temp_directory_path() / str("condensa_child_", getpid(), ".log")).string();
  std::vector<std::string> argv_s = {"mpirun", "--allow-run-as-root", "--oversubscribe",
                                     "--mca",  "mpi_yield_when_idle", "1",
                                     "-x",     "OMP_NUM_THREADS=1"};
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    if (!is_launcher_variable(*e)) env_s.push_back(*e);
  }
  for (const std::string& kv : extra_env) {
    env_s.push_back(kv);
    argv_s.push_back("-x");
    argv_s.push_back(kv.substr(0, kv.find('=')));
  }
  argv_s.insert(argv_s.end(), {"-np", "2", self});
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);  // own process group, so it can be killed as a whole

  ChildResult result;
  const auto start = std::chrono::steady_clock::now();
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "mpirun", &files, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw Error(str("posix_spawnp(mpirun) failed: ", std::strerror(rc)));

  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  while (waitpid(pid, &result.status, WNOHANG) != pid) {
    if (elapsed() > kill_after_s && !result.killed_by_test) {
      result.killed_by_test = true;
      kill(-pid, SIGTERM);
      std::this_thread::sleep_for(std::chrono::seconds(3));
      kill(-pid, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  result.elapsed_s = elapsed();
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  result.output = text.str();
  std::filesystem::remove(log);
  return result;
}

}  // namespace condensa::testing
