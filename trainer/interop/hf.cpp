#include "trainer/interop/hf.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/durable_file.h"
#include "common/error.h"
#include "data/tokenizer.h"
#include "model/param_names.h"
#include "trainer/checkpoint/directory.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/checkpoint/state.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

namespace {
// Our model keys with their visit() names, for the exact round trip block.
struct JsonWriter {
  nlohmann::json& j;
  template <class T>
  void operator()(const char* k, T& v, const char*) {
    j[k] = v;
  }
};
struct JsonReader {
  const nlohmann::json& j;
  const std::string& file;
  template <class T>
  void operator()(const char* k, T& v, const char*) {
    if (!j.contains(k)) return;
    try {
      v = j.at(k).get<T>();
    } catch (const std::exception&) {
      throw CheckpointError(
          str(file, ": condensa_model.", k, " has the wrong type: ", j.at(k).dump()));
    }
  }
};
}  // namespace

std::vector<std::string> transformers_routing_differences(const model::ModelConfig& m) {
  std::vector<std::string> out;
  if (m.scoring != "sigmoid") {
    out.push_back(str("model.scoring is ", m.scoring,
                      ": transformers' DeepseekV3 always scores experts with a sigmoid"));
  }
  if (!m.router_bias && m.num_groups > 1) {
    out.push_back(str("model.router_bias is false with model.num_groups ", m.num_groups,
                      ": condensa scores a group by its highest expert score, transformers' "
                      "DeepseekV3 by the sum of its two highest"));
  }
  if (m.capacity_factor > 0) {
    out.push_back(str("model.capacity_factor is ", m.capacity_factor,
                      ": condensa drops tokens beyond an expert's capacity, transformers' "
                      "DeepseekV3 never does"));
  }
  return out;
}

nlohmann::json hf_config_json(const model::ModelConfig& m, const std::string& tokenizer) {
  const auto tok = data::make_tokenizer(tokenizer);
  const auto differences = transformers_routing_differences(m);
  nlohmann::json j = {
      {"architectures", {"DeepseekV3ForCausalLM"}},
      {"model_type", "deepseek_v3"},
      {"vocab_size", m.vocab_size},
      {"hidden_size", m.hidden_size},
      {"intermediate_size", m.intermediate_size},
      {"moe_intermediate_size", m.moe_intermediate_size},
      {"num_hidden_layers", m.num_layers},
      {"num_nextn_predict_layers", m.mtp_depth},
      {"num_attention_heads", m.num_heads},
      {"num_key_value_heads", m.num_heads},
      {"n_shared_experts", m.num_shared_experts},
      {"n_routed_experts", m.num_routed_experts},
      {"routed_scaling_factor", m.route_scale},
      {"kv_lora_rank", m.kv_lora_rank},
      {"q_lora_rank", m.q_lora_rank == 0 ? nlohmann::json(nullptr) : nlohmann::json(m.q_lora_rank)},
      {"qk_rope_head_dim", m.qk_rope_head_dim},
      {"qk_nope_head_dim", m.qk_nope_head_dim},
      {"v_head_dim", m.v_head_dim},
      {"topk_method",
       m.router_bias ? "noaux_tc" : (m.num_groups > 1 ? "group_limited_greedy" : "greedy")},
      {"n_group", m.num_groups},
      {"topk_group", m.topk_groups},
      {"num_experts_per_tok", m.top_k},
      {"moe_layer_freq", 1},
      {"first_k_dense_replace", m.num_dense_layers},
      {"norm_topk_prob", m.norm_topk_prob},
      {"scoring_func", m.scoring},
      {"hidden_act", "silu"},
      {"max_position_embeddings", m.max_seq_len},
      {"initializer_range", m.init_std},
      {"rms_norm_eps", m.norm_eps},
      {"rope_theta", m.rope_theta},
      // Our rotary pairs are adjacent dims (2i, 2i+1), as in DeepSeek's reference code.
      {"rope_interleave", true},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"tie_word_embeddings", false},
      {"use_cache", true},
      {"bos_token_id", tok->bos_id()},
      {"eos_token_id", tok->eos_id()},
      {"pad_token_id", tok->pad_id()},
      {"torch_dtype", "float32"},
      {"condensa_tokenizer", tok->name()},
      {"condensa_routing",
       {{"scoring_func", m.scoring},
        {"selection_bias", m.router_bias},
        {"group_score", m.num_groups == 1 ? "none (one group)"
                                          : (m.router_bias ? "sum of the two highest biased scores"
                                                           : "highest score")},
        {"capacity_factor", m.capacity_factor},
        {"transformers_deepseek_v3_computes_this_model", differences.empty()},
        {"differences", differences}}},
  };
  if (m.rope_factor > 1.0) {
    j["rope_scaling"] = {{"type", "yarn"},
                         {"factor", m.rope_factor},
                         {"original_max_position_embeddings", m.rope_original_max_seq_len},
                         {"beta_fast", m.rope_beta_fast},
                         {"beta_slow", m.rope_beta_slow},
                         {"mscale", m.rope_mscale},
                         {"mscale_all_dim", m.rope_mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  nlohmann::json ours;
  JsonWriter w{ours};
  auto copy = m;
  copy.visit(w);
  j["condensa_model"] = ours;
  return j;
}

model::ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& file) {
  model::ModelConfig m;
  if (j.contains("condensa_model")) {
    JsonReader r{j["condensa_model"], file};
    m.visit(r);
    return m;
  }
  auto need = [&](const char* k) -> const nlohmann::json& {
    CONDENSA_CHECK(j.contains(k), CheckpointError, file, ": missing key '", k, "'");
    return j.at(k);
  };
  m.vocab_size = need("vocab_size");
  m.hidden_size = need("hidden_size");
  m.intermediate_size = need("intermediate_size");
  m.moe_intermediate_size = need("moe_intermediate_size");
  m.num_layers = need("num_hidden_layers");
  m.mtp_depth = j.value("num_nextn_predict_layers", 0);
  m.num_heads = need("num_attention_heads");
  m.num_shared_experts = need("n_shared_experts");
  m.num_routed_experts = need("n_routed_experts");
  m.route_scale = j.value("routed_scaling_factor", 1.0);
  m.kv_lora_rank = need("kv_lora_rank");
  m.q_lora_rank = j.value("q_lora_rank", nlohmann::json(nullptr)).is_null()
                      ? 0
                      : j["q_lora_rank"].get<int64_t>();
  m.qk_rope_head_dim = need("qk_rope_head_dim");
  m.qk_nope_head_dim = need("qk_nope_head_dim");
  m.v_head_dim = need("v_head_dim");
  m.num_groups = j.value("n_group", 1);
  m.topk_groups = j.value("topk_group", 1);
  m.top_k = need("num_experts_per_tok");
  m.num_dense_layers = j.value("first_k_dense_replace", 0);
  // DeepseekV3 defaults to sigmoid + noaux_tc with normalised gates, DeepseekV2 to softmax +
  // greedy without.
  const bool v3 = j.value("model_type", std::string("deepseek_v3")) == "deepseek_v3";
  m.norm_topk_prob = j.value("norm_topk_prob", v3);
  m.scoring = j.value("scoring_func", std::string(v3 ? "sigmoid" : "softmax"));
  CONDENSA_CHECK(m.scoring == "sigmoid" || m.scoring == "softmax", CheckpointError, file,
                 ": scoring_func '", m.scoring, "' is not one of sigmoid | softmax");
  const auto method = j.value("topk_method", std::string(v3 ? "noaux_tc" : "greedy"));
  CONDENSA_CHECK(method == "noaux_tc" || method == "greedy" || method == "group_limited_greedy",
                 CheckpointError, file, ": topk_method '", method,
                 "' is not one of noaux_tc | greedy | group_limited_greedy");
  // noaux_tc: selection by score + e_score_correction_bias. greedy ignores the groups.
  m.router_bias = method == "noaux_tc";
  if (method == "greedy") m.num_groups = m.topk_groups = 1;
  m.max_seq_len = j.value("max_position_embeddings", int64_t(4096));
  m.init_std = j.value("initializer_range", 0.006);
  m.norm_eps = j.value("rms_norm_eps", 1e-6);
  m.rope_theta = j.value("rope_theta", 10000.0);
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    const auto& r = j["rope_scaling"];
    m.rope_factor = r.value("factor", 1.0);
    m.rope_original_max_seq_len = r.value("original_max_position_embeddings", int64_t(4096));
    m.rope_beta_fast = r.value("beta_fast", 32.0);
    m.rope_beta_slow = r.value("beta_slow", 1.0);
    m.rope_mscale = r.value("mscale", 1.0);
    m.rope_mscale_all_dim = r.value("mscale_all_dim", 0.0);
  }
  return m;
}

NamedTensorList to_hf_tensors(const model::ModelConfig& m, const NamedTensorList& global) {
  NamedTensorList out;
  torch::Tensor embed, head;
  for (const auto& [name, t] : global) {
    if (name == model::kLmHeadName) head = t;
    if (name == model::kEmbeddingName) embed = t;
    out.emplace_back(model::hf_name(name, m.num_layers), t);
  }
  for (int64_t k = 0; k < m.mtp_depth; ++k) {
    const auto copies = model::hf_mtp_shared_copies(k, m.num_layers);
    out.emplace_back(copies[0], embed);
    out.emplace_back(copies[1], head);
  }
  return out;
}

NamedTensorList from_hf_tensors(const model::ModelConfig& m, const NamedTensorList& hf) {
  NamedTensorList out;
  std::set<std::string> names;
  for (const auto& [name, t] : hf) {
    CONDENSA_CHECK(name == model::kLmHeadName || name.rfind("model.", 0) == 0, CheckpointError,
                   "unexpected tensor name '", name, "'");
    // nullopt: an MTP layer's copy of the shared embedding or head, which we do not store.
    if (auto ours = model::global_name_from_hf(name, m.num_layers)) {
      out.emplace_back(*ours, t);
      names.insert(*ours);
    }
  }
  // Every router ("...mlp.gate.weight") needs its selection bias next to it.
  const std::string router_weight = ".mlp.gate.weight";
  for (const auto& name : std::vector<std::string>(names.begin(), names.end())) {
    if (name.size() < router_weight.size() ||
        name.compare(name.size() - router_weight.size(), router_weight.size(), router_weight) != 0)
      continue;
    const auto bias =
        name.substr(0, name.size() - std::string("weight").size()) + "e_score_correction_bias";
    if (names.count(bias)) continue;
    CONDENSA_CHECK(!m.router_bias, CheckpointError, "tensor '", model::hf_name(bias, m.num_layers),
                   "' is missing: topk_method noaux_tc selects experts with it");
    // Bias-less routing (greedy / group_limited_greedy): a zero bias that is never updated.
    out.emplace_back(bias, torch::zeros({m.num_routed_experts}));
  }
  return out;
}

void write_hf_directory(const std::string& dir,
                        const model::ModelConfig& m,
                        const NamedTensorList& global,
                        const HfExportOptions& opt) {
  const int64_t max_shard_bytes = opt.max_shard_bytes;
  fs::create_directories(dir);
  auto tensors = to_hf_tensors(m, global);
  for (auto& kv : tensors) kv.second = kv.second.to(opt.dtype).contiguous();
  auto cfg = hf_config_json(m, opt.tokenizer);
  cfg["torch_dtype"] = opt.dtype == torch::kBFloat16 ? "bfloat16" : "float32";
  atomic_write_file((fs::path(dir) / "config.json").string(), cfg.dump(2) + "\n");
  std::vector<NamedTensorList> shards(1);
  int64_t size = 0, total = 0;
  for (auto& kv : tensors) {
    const int64_t bytes = kv.second.numel() * kv.second.element_size();
    if (size > 0 && size + bytes > max_shard_bytes) shards.emplace_back(), size = 0;
    shards.back().push_back(kv);
    size += bytes;
    total += bytes;
  }
  if (shards.size() == 1) {
    save_safetensors((fs::path(dir) / "model.safetensors").string(), shards[0], {{"format", "pt"}});
    return;
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}},
                          {"weight_map", nlohmann::json::object()}};
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save_safetensors((fs::path(dir) / name).string(), shards[i], {{"format", "pt"}});
    for (auto& kv : shards[i]) index["weight_map"][kv.first] = name;
  }
  atomic_write_file((fs::path(dir) / "model.safetensors.index.json").string(),
                    index.dump(2) + "\n");
}

HfModel read_hf_directory(const std::string& dir) {
  const auto cfg_path = (fs::path(dir) / "config.json").string();
  CONDENSA_CHECK(fs::exists(cfg_path), CheckpointError, "no config.json in '", dir, "'");
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(str(cfg_path, ": invalid JSON: ", e.what()));
  }
  auto m = model_config_from_hf(cfg, cfg_path);
  m.validate();
  std::vector<std::string> files;
  const auto index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    auto j = nlohmann::json::parse(read_file(index.string()));
    std::set<std::string> unique;
    for (auto& [k, v] : j.at("weight_map").items()) unique.insert(v.get<std::string>());
    for (auto& f : unique) files.push_back((fs::path(dir) / f).string());
  } else {
    files.push_back((fs::path(dir) / "model.safetensors").string());
  }
  NamedTensorList hf;
  for (auto& f : files) {
    auto file = load_safetensors(f);
    for (auto& kv : file.tensors) hf.emplace_back(kv.first, kv.second.to(torch::kFloat32));
  }
  return {m, from_hf_tensors(m, hf), cfg.value("condensa_tokenizer", std::string())};
}

namespace {
// Absolute, normalised, without a trailing separator.
fs::path clean_path(const std::string& p) {
  auto c = fs::weakly_canonical(fs::absolute(p));
  return c.has_filename() ? c : c.parent_path();
}
// `inner` is `outer` or below it.
bool is_within(const fs::path& inner, const fs::path& outer) {
  return std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end()).first == outer.end();
}
}  // namespace

OutputDirectory::OutputDirectory(const std::string& out,
                                 bool force,
                                 const std::string& flag,
                                 const std::vector<std::string>& keep) {
  const auto path = clean_path(out);
  out_ = path.string();
  CONDENSA_CHECK(!fs::exists(path) || fs::is_directory(path), ConfigError, flag, " '", out,
                 "' is a file, not a directory");
  for (const auto& k : keep) {
    CONDENSA_CHECK(!is_within(clean_path(k), path), ConfigError, flag, " '", out, "' contains '", k,
                   "', which replacing it would remove");
  }
  if (fs::is_directory(path) && !fs::is_empty(path)) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    std::string listed;
    for (size_t i = 0; i < names.size() && i < 3; ++i) listed += (i ? ", " : "") + names[i];
    if (names.size() > 3) listed += ", ...";
    CONDENSA_CHECK(force, ConfigError, flag, " '", out, "' is not empty (", listed,
                   "): choose a new directory, or add --force to replace it completely");
  }
  staging_ = (path.parent_path() / ("." + path.filename().string() + ".partial")).string();
  fs::create_directories(path.parent_path());
  fs::remove_all(staging_);  // left by an earlier failed run
  fs::create_directory(staging_);
}

OutputDirectory::~OutputDirectory() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void OutputDirectory::commit() {
  fs::remove_all(out_);
  fs::rename(staging_, out_);
  committed_ = true;
}

}  // namespace condensa::trainer
