// The units the `cpu` hardware profile times whole (measure_cpu_profile, hardware.h), built
// and initialised like a model's: a unit's time depends on its weights' values (denormals,
// NaNs and where the router sends tokens), so it is timed with the weights training starts
// from.
#pragma once

#include <cstdint>

#include "model/moe/dispatcher.h"
#include "model/moe/experts.h"
#include "model/transformer.h"

namespace condensa::trainer::plan {

// Decoder block `layer` of model `m` with its tokens dispatched by `dispatcher`, its weights
// drawn as model::init_unit_parameters draws them (seed `seed`).
model::Block timed_block(const model::ModelConfig& m,
                         int64_t layer,
                         const model::DispatcherFactory& dispatcher,
                         uint64_t seed);

// `local` experts of model `m` (global experts 0 .. local - 1), initialised the same way.
model::GroupedExperts timed_experts(const model::ModelConfig& m, int64_t local, uint64_t seed);

}  // namespace condensa::trainer::plan
