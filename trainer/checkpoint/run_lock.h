// An exclusive lock on a run directory, so that two `condensa train` runs never interleave
// their checkpoints and metrics in one run.dir.
//
// Key design choice: flock(2) on <run.dir>/.lock, which the kernel releases when the holding
// process ends, however it ends: a lock left behind by a killed run is never in force, so no
// timeout or liveness guess is needed. The holder writes "host pid start-time" into the file and
// empties it on a clean release; a non-empty file found by the next holder is reported as the
// stale lock of a run that did not exit cleanly.
#pragma once

#include <string>

namespace condensa::trainer {

class RunDirLock {
 public:
  // Creates `run_dir` if needed and takes the lock without waiting. Throws Error naming the
  // holder's host and pid when another process holds it.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();  // releases the lock (empties the file, closes it)
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

  const std::string& path() const { return path_; }
  // What the previous holder wrote when it ended without releasing ("" after a clean release).
  const std::string& stale_holder() const { return stale_holder_; }

 private:
  int fd_ = -1;
  std::string path_;
  std::string stale_holder_;
};

}  // namespace condensa::trainer
