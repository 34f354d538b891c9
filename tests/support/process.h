// Child processes for end-to-end tests that signal a running job: start a command in its own
// process group with its output in a file, find its children (the ranks under mpirun), signal
// one, and wait with a deadline.
//
// Key design choice: every wait is event-based with a generous deadline (the deadline only
// bounds a broken run; a healthy one returns as soon as the event happens), so the tests do not
// flake on a loaded machine.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace condensa::testing {

class ChildProcess {
 public:
  // Starts argv[0] (looked up in PATH) with argv, stdin from /dev/null, stdout and stderr to
  // `log_path`, in a new process group. Throws condensa::Error if it cannot be started.
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_path);
  // Kills the whole process group if it is still running.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Waits up to timeout_s for the process to exit; returns its exit code (128 + signal when
  // signalled). On timeout it kills the process group and returns -1.
  int wait(double timeout_s);
  // Everything the process wrote so far.
  std::string output() const;

 private:
  pid_t pid_ = -1;
  bool done_ = false;
  std::string log_path_;
};

// Direct children of `pid`, read from /proc.
std::vector<pid_t> child_pids(pid_t pid);
// The value of environment variable `name` in process `pid` ("" when unset or unreadable).
std::string environment_of(pid_t pid, const std::string& name);
// Polls `done` every 50 ms until it returns true (then true) or timeout_s passes (then false).
bool wait_until(const std::function<bool()>& done, double timeout_s);

}  // namespace condensa::testing
