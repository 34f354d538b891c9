#include "model/autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace condensa::model {

#if TORCH_VERSION_MAJOR >= 2
AutocastState AutocastState::current() {
  AutocastState s;
  s.cpu_enabled = at::autocast::is_autocast_enabled(at::kCPU);
  s.cuda_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
  s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
  s.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  return s;
}

void AutocastState::apply() const {
  at::autocast::set_autocast_enabled(at::kCPU, cpu_enabled);
  at::autocast::set_autocast_enabled(at::kCUDA, cuda_enabled);
  at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
  at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
}
#else
AutocastState AutocastState::current() {
  AutocastState s;
  s.cpu_enabled = at::autocast::is_cpu_enabled();
  s.cuda_enabled = at::autocast::is_enabled();
  s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
  s.cuda_dtype = at::autocast::get_autocast_gpu_dtype();
  return s;
}

void AutocastState::apply() const {
  at::autocast::set_cpu_enabled(cpu_enabled);
  at::autocast::set_enabled(cuda_enabled);
  at::autocast::set_autocast_cpu_dtype(cpu_dtype);
  at::autocast::set_autocast_gpu_dtype(cuda_dtype);
}
#endif

AutocastScope::~AutocastScope() {
  saved_.apply();
  if (!saved_.any_enabled()) at::autocast::clear_cache();
}

AutocastState autocast_for(const std::string& dtype, torch::Device device) {
  auto s = AutocastState::current();
  if (dtype == "bf16") {
    if (device.is_cuda()) {
      s.cuda_enabled = true;
      s.cuda_dtype = at::kBFloat16;
    } else {
      s.cpu_enabled = true;
      s.cpu_dtype = at::kBFloat16;
    }
  }
  return s;
}

}  // namespace condensa::model
