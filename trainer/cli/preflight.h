// Checks `condensa train` runs before it builds anything: that the model and batch fit this
// machine's memory (trainer/config/memory.h), that every rank was launched with the same
// config, and that the run directory can hold checkpoints. Each failure is a ConfigError naming
// the keys, so a doomed run stops in its first second instead of at its first save.
#pragma once

#include "parallel/communicator.h"
#include "trainer/config/config.h"

namespace condensa::trainer {

// Refuses a config whose memory estimate for this world exceeds this machine's memory (the
// ranks of this node counted from the launcher's environment).
void check_memory(const Config& config, int64_t world_size);
// Refuses ranks whose resolved configs differ, naming the first differing keys and the ranks
// (every rank throws the same error). Collective over `world`.
void check_same_config_on_every_rank(parallel::Communicator& world, const Config& config);
// Creates run.dir/checkpoints and proves it writable; refuses a run.dir or checkpoints/ that is
// not a directory or cannot be written.
void check_run_dir_writable(const Config& config);
// Refuses a checkpoint.resume path (not auto or none) that is not a directory.
void check_resume_path(const Config& config);

}  // namespace condensa::trainer
