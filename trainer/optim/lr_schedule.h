// The learning-rate schedule: a pure function of the step, so that a resumed run recomputes it
// rather than saving it.
//
// Linear warm-up from lr / warmup_steps at step 1 to lr at warmup_steps, then cosine or linear
// decay to min_lr at total_steps (clamped after it), or constant lr.
#pragma once

#include <cstdint>

#include "trainer/config/config.h"

namespace condensa::trainer {

// Learning rate at 1-based `step` of a run of `total_steps`.
double lr_at(const OptimConfig& optim, int64_t total_steps, int64_t step);

}  // namespace condensa::trainer
