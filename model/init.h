// Layout-independent initialisation: every parameter is drawn from a stream keyed by the run
// seed and its global name (and global expert index), never by rank.
#pragma once

#include <cstdint>
#include <string>

#include "model/transformer.h"

namespace condensa::model {

// Initialises every parameter from `seed` and its global name (and global expert index for
// expert weights): N(0, init_std) for weights, 1 for norm weights, 0 for the router bias.
void init_parameters(TransformerImpl& model, uint64_t seed);

}  // namespace condensa::model
