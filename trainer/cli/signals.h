// SIGINT/SIGTERM for `condensa train`. During the steps the first signal asks the trainer to
// finish the current step, save a checkpoint and exit 0; everywhere else a signal, and during
// the steps a second one, exits at once (exit code 128 + signal), so that a run stuck before
// its first step, or in the final validation after the last checkpoint, stops when asked.
//
// Key design choice: the handlers are installed first thing, before the config is read, so
// that no early signal gets the default action; the phase is one process-wide atomic that the
// trainer's phase listener moves, and the handler only does async-signal-safe work (an atomic
// exchange, write(2), _exit(2)).
#pragma once

#include <atomic>

namespace condensa::trainer {

enum class StopPhase {
  kSetup,            // before the first step: exit at once
  kSteps,            // first signal: finish the step, save, exit 0; second: exit at once
  kFinalValidation,  // the last checkpoint is saved: exit at once
};

// Installs the SIGINT and SIGTERM handlers in phase kSetup. Idempotent.
void install_stop_handlers();
void set_stop_phase(StopPhase phase);
// Set by the first signal of phase kSteps; the trainer reads it once per step.
const std::atomic<bool>* stop_flag();

}  // namespace condensa::trainer
