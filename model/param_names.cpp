// The name rules of model/param_names.h. String tests and regular expressions over names
// appear here and nowhere else.
#include "model/param_names.h"

#include <regex>

#include "common/error.h"

namespace condensa::model {
namespace {

const char kExpertMarker[] = ".mlp.experts.";
const char kRouterBias[] = ".mlp.gate.e_score_correction_bias";

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Global per-expert names (ours) and their Hugging Face forms.
const std::regex kGlobalExpert(R"(^(layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj)$)");
const std::regex kMtpGlobalExpert(R"(^mlp\.experts\.\d+\.(gate|up|down)_proj$)");
const std::regex kMtp(R"(^mtp\.(\d+)\.(.*)$)");
const std::regex kHfLayer(R"(^model\.layers\.(\d+)\.(.*)$)");
const std::regex kHfExpert(R"(^(.*\.mlp\.experts\.\d+\.(gate|up|down)_proj)\.weight$)");
const std::regex kHfMtpExpert(R"(^mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$)");

const char kHfEmbedCopy[] = "embed_tokens.weight";
const char kHfHeadCopy[] = "shared_head.head.weight";

// Rest of an MTP layer's HF name ("enorm.weight", "self_attn...") -> ours within "mtp.K.".
std::string mtp_rest_from_hf(std::string rest) {
  if (std::regex_match(rest, kHfMtpExpert)) rest = rest.substr(0, rest.size() - 7);
  if (starts_with(rest, "shared_head.norm.")) return "shared_head_norm." + rest.substr(17);
  if (starts_with(rest, "enorm.") || starts_with(rest, "hnorm.") || starts_with(rest, "eh_proj.")) {
    return rest;
  }
  return "block." + rest;
}

}  // namespace

bool is_expert_param(const std::string& name) {
  return name.find(kExpertMarker) != std::string::npos;
}

std::string expert_global_name(const std::string& stacked, int64_t expert) {
  const std::string marker = kExpertMarker;
  const auto pos = stacked.find(marker);
  CONDENSA_CHECK(pos != std::string::npos, Error, "not an expert parameter: ", stacked);
  return stacked.substr(0, pos + marker.size()) + std::to_string(expert) + "." +
         stacked.substr(pos + marker.size());
}

bool is_norm_weight(const std::string& name) { return ends_with(name, "norm.weight"); }

bool is_router_bias(const std::string& name) { return ends_with(name, kRouterBias); }

bool is_mtp_param(const std::string& name) { return starts_with(name, "mtp."); }

std::string mtp_prefix(int64_t k) { return "mtp." + std::to_string(k) + "."; }

std::string hf_name(const std::string& name, int64_t num_layers) {
  if (name == kLmHeadName) return name;
  std::string n = name;
  std::string suffix = std::regex_match(n, kGlobalExpert) ? ".weight" : "";
  std::smatch mt;
  if (std::regex_match(n, mt, kMtp)) {
    const int64_t layer = num_layers + std::stoll(mt[1]);
    std::string rest = mt[2];
    if (starts_with(rest, "block.")) rest = rest.substr(6);
    if (starts_with(rest, "shared_head_norm.")) rest = "shared_head.norm." + rest.substr(17);
    if (std::regex_match(rest, kMtpGlobalExpert)) suffix = ".weight";
    n = "layers." + std::to_string(layer) + "." + rest;
  }
  return "model." + n + suffix;
}

std::optional<std::string> global_name_from_hf(const std::string& name, int64_t num_layers) {
  if (name == kLmHeadName) return name;
  CONDENSA_CHECK(starts_with(name, "model."), Error, "unexpected tensor name '", name, "'");
  std::smatch mt;
  if (std::regex_match(name, mt, kHfLayer)) {
    const int64_t layer = std::stoll(mt[1]);
    if (layer >= num_layers) {
      const std::string rest = mt[2];
      if (rest == kHfEmbedCopy || rest == kHfHeadCopy) return std::nullopt;
      return mtp_prefix(layer - num_layers) + mtp_rest_from_hf(rest);
    }
  }
  if (std::regex_match(name, mt, kHfExpert)) return std::string(mt[1]).substr(6);
  return name.substr(6);
}

std::vector<std::string> hf_mtp_shared_copies(int64_t k, int64_t num_layers) {
  const std::string p = "model.layers." + std::to_string(num_layers + k) + ".";
  return {p + kHfEmbedCopy, p + kHfHeadCopy};
}

}  // namespace condensa::model
