// The memory a training run needs, estimated from the config alone before anything is
// allocated, so that a shape that cannot fit is refused with the keys and the bytes instead of
// dying in the allocator (or swapping for an hour).
//
// Key design choice: the estimate is a lower bound built from the same parameter accounting as
// `condensa plan` (model/accounting.h): fp32 weights and gradients, AdamW's two fp32 moments
// (sharded over data parallel by ZeRO-1), the largest activations of one micro-batch (logits,
// attention scores, hidden states) and the RoPE tables. Every term carries the keys that size
// it, so the refusal names what to change. A run refused here could never have trained; a run
// that passes may still run out of memory on what the bound leaves out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/schema.h"

namespace condensa::trainer {

struct MemoryTerm {
  std::string what;  // "embedding + LM head"
  std::string keys;  // "model.vocab_size (259) x model.hidden_size (64)"
  double bytes = 0;
};

struct MemoryEstimate {
  std::vector<MemoryTerm> terms;
  double total_bytes() const;
};

// Per-rank estimate for a config that passed Config::validate() and validate_for_world(world).
MemoryEstimate estimate_memory(const Config& config, int64_t world_size);

// Throws ConfigError when `ranks_on_node` ranks of `estimate` exceed `machine_bytes`, naming the
// largest terms with their keys and bytes.
void check_memory_fits(const MemoryEstimate& estimate, int64_t ranks_on_node, double machine_bytes);

// This machine's memory in bytes: physical memory, capped by the cgroup limit when one is set.
double machine_memory_bytes();

// "1.5 GiB", "3.2 TiB".
std::string format_bytes(double bytes);

}  // namespace condensa::trainer
