// What may change between a checkpoint's config and the config that resumes it.
//
// Key design choice: an allow-list. Keys that cannot change what the model learns from a given
// step on (where files go, logging, checkpoint cadence, the parallel layout and micro-batching,
// which change only the floating-point reduction order, and extending train.steps) may change
// and are reported; every other key (model shape, data, seed, optimizer, schedule, batch, dtype,
// and any key added later) changes the trajectory and is refused unless
// checkpoint.allow_config_change is true. Each segment of a run keeps its config as
// <run.dir>/config.step_XXXXXXXX.yaml, so the refused differences are never lost.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/schema.h"

namespace condensa::trainer {

struct ConfigChange {
  std::string key;      // "optim.lr"
  std::string saved;    // value in the checkpoint's config
  std::string resumed;  // value in the config resuming it
  bool trajectory;      // changes what the model learns (refused by default)
};

// Every key whose value differs, in schema order.
std::vector<ConfigChange> config_changes(const Config& saved, const Config& resumed);

// Checks `resumed` against the config stored with the checkpoint `dir` at `step`. Throws
// ConfigError when train.steps is below `step`, or when a trajectory key changed and
// resumed.checkpoint.allow_config_change is false (listing every such change). Returns one line
// per accepted change, for the log. A step-0 checkpoint (condensa import: weights only, nothing
// trained yet) is not compared.
std::vector<std::string> check_resume_config(const Config& saved,
                                             const Config& resumed,
                                             int64_t step,
                                             const std::string& dir);

// "config.step_00000020.yaml": the config of the run segment that starts after `step`.
std::string segment_config_name(int64_t step);

}  // namespace condensa::trainer
