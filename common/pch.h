// Precompiled header: the heavy, stable headers every translation unit uses. condensa needs
// LibTorch 2.11 or newer (CMakeLists.txt picks one LibTorch; this guards its headers too).
#pragma once
#include <torch/torch.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 11)
#error "condensa needs LibTorch >= 2.11: these headers are an older LibTorch"
#endif

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>
