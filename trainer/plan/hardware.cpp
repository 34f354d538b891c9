// Built-in hardware profiles and profile files. Every number is explained, with its source,
// in docs/plan.md ("Hardware profiles"); the notes printed by `plan` repeat the short form.
#include "trainer/plan/hardware.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <map>

#include "common/error.h"

namespace condensa::trainer::plan {

namespace {

constexpr double kGiB = 1024.0 * 1024 * 1024;

// Hopper SXM compute (H100, H800 and H200 share the chip and its clocks).
HardwareProfile hopper(const std::string& name) {
  HardwareProfile h;
  h.name = name;
  h.peak_flops = 989.5e12;  // dense bf16, NVIDIA H100 SXM datasheet
  // 0.80 (square bf16 matmul) x 0.89 (DeepSeek-V3's matmul shapes against the best shape in
  // DeepGEMM's published H800 table, FLOP-weighted): docs/plan.md.
  h.gemm_efficiency = 0.71;
  // FlashAttention-3 (H100, bf16, causal, head dim 128): ~62% forward, ~50% backward kernel
  // rate, 2.5 backward FLOPs per forward FLOP against 2 counted by the model: 0.45 overall.
  h.attention_efficiency = 0.45;
  h.fused_attention = true;
  h.ranks_per_node = 8;
  // DeepSeek-V3 reserves 20 of the 132 SMs for communication while overlapping it.
  h.comm_compute_share = 20.0 / 132.0;
  h.inter_node_bandwidth = 50e9;  // 400 Gb/s InfiniBand per GPU; DeepEP internode: 50-51 GB/s
  h.notes = {"peak: 989.5 TFLOP/s dense bf16 (NVIDIA H100/H800 SXM datasheet)",
             "matmuls 71% of peak: 0.80 square-matmul rate x 0.89 V3-shape factor (DeepGEMM)",
             "attention core 45% of peak (FlashAttention-3 forward/backward rates)",
             "inter-node 50 GB/s per GPU (DeepEP internode EP64 on H800: 50-51 GB/s)",
             "20 of 132 SMs reserved for communication while overlapping (DeepSeek-V3)",
             "memory-bound kernels at 80% of HBM bandwidth (assumption)"};
  return h;
}

}  // namespace

HardwareProfile builtin_profile(const std::string& name) {
  HardwareProfile h = hopper(name);
  if (name == "h800") {
    h.memory_bytes = 79.6 * kGiB;  // 80 GB HBM3 (81,559 MiB as the driver reports it)
    h.memory_bandwidth = 0.8 * 3.35e12;
    h.intra_node_bandwidth = 155e9;  // DeepEP intranode EP8 on H800: 153-158 GB/s
    h.notes.push_back("NVLink 155 GB/s per GPU (DeepEP intranode EP8 on H800: 153-158 GB/s)");
  } else if (name == "h100" || name == "h200") {
    h.memory_bytes = (name == "h100" ? 79.6 : 139.8) * kGiB;
    h.memory_bandwidth = 0.8 * (name == "h100" ? 3.35e12 : 4.8e12);
    // NVLink 4: 450 GB/s per direction, at the 78% DeepEP reaches of the H800's 200 GB/s.
    h.intra_node_bandwidth = 350e9;
    h.notes.push_back("NVLink 350 GB/s per GPU (78% of 450 GB/s, as DeepEP reaches on H800)");
  } else {
    throw ConfigError(str("--hardware: unknown profile '", name,
                          "' (expected h800, h100, h200, cpu or a .yaml file)"));
  }
  return h;
}

HardwareProfile load_profile(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const std::exception& e) {
    throw ConfigError(str(path, ": cannot read hardware profile: ", e.what()));
  }
  CONDENSA_CHECK(root.IsMap(), ConfigError, path, ": a hardware profile is a YAML mapping");
  HardwareProfile h;
  h.name = std::filesystem::path(path).stem().string();
  h.notes.push_back(str("profile file ", path));
  struct Key {
    double* value;
    bool required;
    double scale, min, max;
  };
  double fused = 1, ranks = 0;
  std::map<std::string, Key> keys = {
      {"peak_tflops", {&h.peak_flops, true, 1e12, 1e-6, 1e6}},
      {"gemm_efficiency", {&h.gemm_efficiency, true, 1, 1e-4, 1}},
      {"attention_efficiency", {&h.attention_efficiency, true, 1, 1e-4, 1}},
      {"memory_gib", {&h.memory_bytes, true, kGiB, 1e-3, 1e6}},
      {"usable_memory", {&h.usable_memory, false, 1, 1e-3, 1}},
      {"memory_bandwidth_gbps", {&h.memory_bandwidth, true, 1e9, 1e-3, 1e6}},
      {"intra_node_gbps", {&h.intra_node_bandwidth, true, 1e9, 1e-6, 1e6}},
      {"inter_node_gbps", {&h.inter_node_bandwidth, true, 1e9, 1e-6, 1e6}},
      {"ranks_per_node", {&ranks, true, 1, 1, 1e6}},
      {"comm_compute_share", {&h.comm_compute_share, false, 1, 0, 0.99}},
      {"fused_attention", {&fused, false, 1, 0, 1}},
  };
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (key == "name") {
      h.name = kv.second.as<std::string>();
      continue;
    }
    auto it = keys.find(key);
    CONDENSA_CHECK(it != keys.end(), ConfigError, path, ": unknown key '", key, "'");
    double v = 0;
    try {
      v = key == "fused_attention" ? (kv.second.as<bool>() ? 1.0 : 0.0) : kv.second.as<double>();
    } catch (const std::exception&) {
      throw ConfigError(str(path, ": ", key, " = '", kv.second.as<std::string>(), "': expected ",
                            key == "fused_attention" ? "true or false" : "a number"));
    }
    const Key& k = it->second;
    CONDENSA_CHECK(v >= k.min && v <= k.max, ConfigError, path, ": ", key, " = ", v,
                   ": must be in [", k.min, ", ", k.max, "]");
    *k.value = v * k.scale;
    it->second.required = false;  // seen
  }
  for (const auto& [key, k] : keys) {
    CONDENSA_CHECK(!k.required, ConfigError, path, ": missing key '", key, "'");
  }
  h.fused_attention = fused != 0;
  h.ranks_per_node = static_cast<int64_t>(ranks);
  return h;
}

}  // namespace condensa::trainer::plan
