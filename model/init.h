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

// Initialises a unit built outside a Transformer (a decoder block or the experts, as the
// planner builds them to time them) by the same rules: N(0, init_std) for weights, 1 for norm
// weights, 0 for router biases; one stream from `seed`, not layout-independent. Modules leave
// their weights uninitialised (torch::empty) for init_parameters, and garbage weights time
// wrongly: denormals and NaNs run slow paths, and a garbage router sends every token anywhere.
void init_unit_parameters(torch::nn::Module& unit, double init_std, uint64_t seed);

}  // namespace condensa::model
