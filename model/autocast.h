// The autocast state of this thread (enabled flag and lower-precision dtype, for CPU and CUDA),
// captured and restored as one value.
//
// Key design choice: code that re-runs a forward later (activation recomputation in backward)
// must run it under the autocast state of the original forward, or the recomputed activations
// have other dtypes than the saved ones. The LibTorch API for this changed between 1.x and 2.x;
// this is the one place that knows both.
#pragma once

#include <c10/core/ScalarType.h>

#include <string>

namespace condensa::model {

struct AutocastState {
  bool cpu_enabled = false, cuda_enabled = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16, cuda_dtype = c10::kHalf;

  static AutocastState current();
  bool any_enabled() const { return cpu_enabled || cuda_enabled; }
  // Makes this the thread's state.
  void apply() const;
};

// RAII: sets `state` for the scope, restores the previous state after (and, when that leaves
// autocast off, frees the cast copies autocast cached for the scope).
class AutocastScope;

// The autocast state of a training compute dtype (train.dtype): bf16 autocast on `device`'s
// kind for "bf16", the current state unchanged for "fp32".
AutocastState autocast_for(const std::string& dtype, torch::Device device);

class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& state) : saved_(AutocastState::current()) {
    state.apply();
  }
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  AutocastState saved_;
};

}  // namespace condensa::model
