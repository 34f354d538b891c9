#include "trainer/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace condensa::trainer {

double lr_at(const OptimConfig& o, int64_t total_steps, int64_t step) {
  if (o.warmup_steps > 0 && step <= o.warmup_steps) {
    return o.lr * static_cast<double>(step) / static_cast<double>(o.warmup_steps);
  }
  if (o.schedule == "constant") return o.lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - o.warmup_steps);
  const double t =
      std::min(1.0, static_cast<double>(step - o.warmup_steps) / static_cast<double>(decay_steps));
  if (o.schedule == "linear") return o.lr + (o.min_lr - o.lr) * t;
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * t));
}

}  // namespace condensa::trainer
