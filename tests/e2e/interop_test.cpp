// Interop edges: export/import output directories, Hugging Face models without the selection
// bias, what an export claims about its routing, generate's raw output and padded vocabularies,
// and eval's per-token losses.
//
// Key design choice: foreign checkpoints are made the way another tool would make them: a
// condensa export is rewritten by the `safetensors` Python package (the venv launch/setup.sh
// creates), dropping tensors and config keys, and what condensa reads back is compared with the
// model it came from (same eval loss), not with itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "tests/support/test_util.h"
#include "trainer/checkpoint/state.h"
#include "trainer/inference.h"
#include "trainer/interop/hf.h"

namespace fs = std::filesystem;
using namespace condensa::testing;

namespace {

constexpr int64_t kBos = 256, kEos = 257;

void train(const fs::path& run_dir, const std::string& extra) {
  auto r = run_condensa(tiny_train_args(run_dir, "--set train.steps=2 " + extra));
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

// A 2-step run in run_dir exported to hf.
void train_and_export(const fs::path& run_dir, const fs::path& hf) {
  ASSERT_NO_FATAL_FAILURE(train(run_dir, ""));
  auto r = run_condensa("export --checkpoint " + run_dir.string() + " --out " + hf.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(std::ifstream(p)); }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double eval_loss(const fs::path& checkpoint, const fs::path& text) {
  auto e = run_condensa("eval --checkpoint " + checkpoint.string() + " --data " + text.string() +
                        " --json --seq-len 16");
  EXPECT_EQ(e.exit_code, 0) << e.output;
  if (e.exit_code != 0) return NAN;
  return nlohmann::json::parse(e.output.substr(e.output.find('{')))["loss"].get<double>();
}

const char* kText = "12+30=42\nsort 3 1 2 > 1 2 3\ncopy abc > abc\n37-5=32\nreverse xy > yx\n";

// argv: HF_DIR JSON_EDITS. Rewrites HF_DIR as another exporter would have written it: drops
// the condensa blocks and every e_score_correction_bias tensor, then applies the edits to
// config.json (null deletes a key).
const char* kMakeForeign = R"(import json, os, sys
from safetensors.numpy import load_file, save_file
d, edits = sys.argv[1], json.loads(sys.argv[2])
cfg_path = os.path.join(d, "config.json")
cfg = json.load(open(cfg_path))
for k in ("condensa_model", "condensa_routing", "condensa_tokenizer"):
    cfg.pop(k, None)
for k, v in edits.items():
    if v is None:
        cfg.pop(k, None)
    else:
        cfg[k] = v
json.dump(cfg, open(cfg_path, "w"))
path = os.path.join(d, "model.safetensors")
tensors = {k: v for k, v in load_file(path).items() if "e_score_correction_bias" not in k}
save_file(tensors, path, metadata={"format": "pt"})
)";

void make_foreign(const fs::path& hf, const nlohmann::json& edits) {
  const std::string python = source_path(".deps/pyenv/bin/python");
  ASSERT_TRUE(fs::exists(python)) << python << " is missing: run launch/setup.sh";
  std::ofstream(hf.parent_path() / "foreign.py") << kMakeForeign;
  auto r = run_command(python + " " + (hf.parent_path() / "foreign.py").string() + " " +
                       hf.string() + " '" + edits.dump() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

}  // namespace

TEST(Interop, ExportRefusesANonEmptyDirectoryAndForceReplacesIt) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train(dir.path(), ""));
  const auto hf = dir.path() / "hf";
  const std::string base = "export --checkpoint " + dir.str() + " --out " + hf.string();
  auto sharded = run_condensa(base + " --max-shard-size 20000");
  ASSERT_EQ(sharded.exit_code, 0) << sharded.output;
  ASSERT_TRUE(fs::exists(hf / "model.safetensors.index.json"));

  // A second export into it would leave the old shards and index next to the new file.
  auto again = run_condensa(base);
  EXPECT_EQ(again.exit_code, 2) << again.output;
  EXPECT_NE(again.output.find("--out '" + hf.string() + "' is not empty"), std::string::npos)
      << again.output;
  EXPECT_NE(again.output.find("--force"), std::string::npos) << again.output;
  EXPECT_TRUE(fs::exists(hf / "model.safetensors.index.json")) << "refused, yet changed";

  auto forced = run_condensa(base + " --force");
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(hf)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "model.safetensors"}));

  // --force never removes what it reads from.
  auto into_run =
      run_condensa("export --checkpoint " + dir.str() + " --out " + dir.str() + " --force");
  EXPECT_EQ(into_run.exit_code, 2) << into_run.output;
  EXPECT_NE(into_run.output.find("which replacing it would remove"), std::string::npos)
      << into_run.output;
  EXPECT_TRUE(fs::exists(dir.path() / "checkpoints" / "step_00000002" / "meta.json"));
}

TEST(Interop, ImportRefusesAnExistingRunAndForceReplacesIt) {
  TempDir dir;
  const auto run = dir.path() / "run";
  const auto hf = dir.path() / "hf";
  ASSERT_NO_FATAL_FAILURE(train_and_export(run, hf));

  auto into_run = run_condensa("import --hf " + hf.string() + " --out " + run.string());
  EXPECT_EQ(into_run.exit_code, 2) << into_run.output;
  EXPECT_NE(into_run.output.find("--out '" + run.string() + "' is not empty ("), std::string::npos)
      << into_run.output;
  EXPECT_NE(into_run.output.find("checkpoints"), std::string::npos) << into_run.output;
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step_00000000"));

  auto forced = run_condensa("import --hf " + hf.string() + " --out " + run.string() + " --force");
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step_00000002"));
  auto found = condensa::trainer::resolve_checkpoint_dir(run.string());
  EXPECT_EQ(fs::path(found).filename(), "step_00000000");
}

// A bias-less router (DeepseekV2, or V3 with greedy / group_limited_greedy) written without
// e_score_correction_bias imports as router_bias: false with a zero bias, computes what the
// original computed, and training from it leaves the bias at zero.
struct BiasLessCase {
  const char* name;
  const char* train_sets;
  nlohmann::json edits;
};

class ImportBiasLess : public ::testing::TestWithParam<BiasLessCase> {};

TEST_P(ImportBiasLess, MatchesTheOriginalModel) {
  const auto& c = GetParam();
  TempDir dir;
  const auto run = dir.path() / "run";
  ASSERT_NO_FATAL_FAILURE(train(run, c.train_sets));
  const auto hf = dir.path() / "hf";
  ASSERT_EQ(run_condensa("export --checkpoint " + run.string() + " --out " + hf.string()).exit_code,
            0);
  ASSERT_NO_FATAL_FAILURE(make_foreign(hf, c.edits));

  const auto imported = dir.path() / "imported";
  auto i = run_condensa("import --hf " + hf.string() + " --out " + imported.string());
  ASSERT_EQ(i.exit_code, 0) << i.output;
  auto loaded = condensa::trainer::load_model_for_inference(imported.string());
  EXPECT_FALSE(loaded.config.model.router_bias);
  for (auto& [name, t] : condensa::trainer::load_global_model_tensors(
           (imported / "checkpoints" / "step_00000000").string())) {
    if (name.find("e_score_correction_bias") != std::string::npos) {
      EXPECT_TRUE(torch::equal(t, torch::zeros({4}))) << name;
    }
  }
  std::ofstream(dir.path() / "text.txt") << kText;
  const double want = eval_loss(run, dir.path() / "text.txt");
  EXPECT_NEAR(eval_loss(imported, dir.path() / "text.txt"), want, 1e-6 * want);

  auto t = run_condensa("train " + source_path("configs/tiny.yaml") + " " + c.train_sets +
                        " --set run.dir=" + imported.string() + " --set train.steps=2");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  for (auto& [name, tensor] : condensa::trainer::load_global_model_tensors(
           (imported / "checkpoints" / "step_00000002").string())) {
    if (name.find("e_score_correction_bias") != std::string::npos) {
      EXPECT_TRUE(torch::equal(tensor, torch::zeros({4}))) << name << " was trained";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Interop,
    ImportBiasLess,
    ::testing::Values(
        // DeepseekV2-Lite style: softmax, greedy; greedy ignores n_group.
        BiasLessCase{"V2Greedy",
                     "--set model.scoring=softmax --set model.router_bias=false",
                     {{"model_type", "deepseek_v2"},
                      {"architectures", {"DeepseekV2ForCausalLM"}},
                      {"scoring_func", nullptr},
                      {"topk_method", "greedy"},
                      {"n_group", 2},
                      {"topk_group", 1}}},
        // DeepseekV3 layout with softmax and group-limited routing.
        BiasLessCase{"V3GroupLimitedGreedy",
                     "--set model.scoring=softmax --set model.router_bias=false "
                     "--set model.num_groups=2 --set model.topk_groups=1",
                     {{"topk_method", "group_limited_greedy"}}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Interop, ImportRefusesNoauxTcWithoutItsBias) {
  TempDir dir;
  const auto run = dir.path() / "run";
  const auto hf = dir.path() / "hf";
  ASSERT_NO_FATAL_FAILURE(train_and_export(run, hf));
  ASSERT_NO_FATAL_FAILURE(make_foreign(hf, {{"topk_method", "noaux_tc"}}));
  auto i = run_condensa("import --hf " + hf.string() + " --out " + (dir.path() / "x").string());
  EXPECT_EQ(i.exit_code, 1) << i.output;
  EXPECT_NE(i.output.find("tensor 'model.layers.1.mlp.gate.e_score_correction_bias' is missing: "
                          "topk_method noaux_tc"),
            std::string::npos)
      << i.output;
}

TEST(Interop, ExportStatesWhatTransformersWouldCompute) {
  TempDir dir;
  const auto sigmoid = dir.path() / "sigmoid", softmax = dir.path() / "softmax";
  ASSERT_NO_FATAL_FAILURE(train(sigmoid, ""));
  ASSERT_NO_FATAL_FAILURE(train(softmax, "--set model.scoring=softmax"));

  auto ok = run_condensa("export --target transformers --checkpoint " + sigmoid.string() +
                         " --out " + (dir.path() / "hf1").string());
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(ok.output.find("warning"), std::string::npos) << ok.output;
  auto cfg = read_json(dir.path() / "hf1" / "config.json");
  EXPECT_EQ(cfg["rope_interleave"], true);
  EXPECT_EQ(cfg["bos_token_id"], kBos);
  EXPECT_EQ(cfg["eos_token_id"], kEos);
  EXPECT_EQ(cfg["pad_token_id"], 258);
  EXPECT_EQ(cfg["condensa_routing"]["transformers_deepseek_v3_computes_this_model"], true);

  auto refused = run_condensa("export --target transformers --checkpoint " + softmax.string() +
                              " --out " + (dir.path() / "hf2").string());
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("model.scoring is softmax"), std::string::npos) << refused.output;
  EXPECT_FALSE(fs::exists(dir.path() / "hf2" / "config.json"));

  auto warned = run_condensa("export --checkpoint " + softmax.string() + " --out " +
                             (dir.path() / "hf2").string());
  ASSERT_EQ(warned.exit_code, 0) << warned.output;
  EXPECT_NE(warned.output.find("warning: HF transformers' DeepseekV3 would compute a different "
                               "model from this export (model.scoring is softmax"),
            std::string::npos)
      << warned.output;
  cfg = read_json(dir.path() / "hf2" / "config.json");
  EXPECT_EQ(cfg["scoring_func"], "softmax");
  EXPECT_EQ(cfg["condensa_routing"]["scoring_func"], "softmax");
  EXPECT_EQ(cfg["condensa_routing"]["transformers_deepseek_v3_computes_this_model"], false);
  EXPECT_EQ(cfg["condensa_routing"]["differences"].size(), 1u);
}

TEST(Interop, TransformersRoutingDifferences) {
  condensa::model::ModelConfig m;  // sigmoid, router_bias, one group
  EXPECT_TRUE(condensa::trainer::transformers_routing_differences(m).empty());
  m.router_bias = false;  // a zero bias selects the same experts
  EXPECT_TRUE(condensa::trainer::transformers_routing_differences(m).empty());
  m.num_groups = 2;  // but groups are scored by their max, not their top-2 sum
  ASSERT_EQ(condensa::trainer::transformers_routing_differences(m).size(), 1u);
  EXPECT_NE(condensa::trainer::transformers_routing_differences(m)[0].find("model.router_bias"),
            std::string::npos);
  m.router_bias = true;
  m.capacity_factor = 1.5;
  ASSERT_EQ(condensa::trainer::transformers_routing_differences(m).size(), 1u);
  EXPECT_NE(condensa::trainer::transformers_routing_differences(m)[0].find("model.capacity_factor"),
            std::string::npos);
}

namespace {

// A vocab-300 model (the byte tokenizer has 259 ids) whose head makes `lm_head_rows` the
// only non-zero logit rows, written as a condensa export and imported into `out`.
void import_with_head(const TempDir& dir,
                      const fs::path& out,
                      const std::map<int64_t, float>& lm_head_rows) {
  const auto run = dir.path() / "run";
  if (!fs::exists(run)) {
    ASSERT_NO_FATAL_FAILURE(train(run, "--set model.vocab_size=300"));
  }
  auto loaded = condensa::trainer::load_model_for_inference(run.string());
  auto tensors = condensa::trainer::load_global_model_tensors(loaded.dir);
  for (auto& [name, t] : tensors) {
    if (name != "lm_head.weight") continue;
    ASSERT_EQ(t.size(0), 300);
    auto u = torch::randn({t.size(1)});
    t.zero_();
    for (auto [row, scale] : lm_head_rows) t[row].copy_(u * scale);
  }
  const auto hf = out.string() + "-hf";
  condensa::trainer::write_hf_directory(hf, loaded.config.model, tensors, {});
  auto i = run_condensa("import --hf " + hf + " --out " + out.string());
  ASSERT_EQ(i.exit_code, 0) << i.output;
}

}  // namespace

TEST(Interop, GenerateWritesRawBytes) {
  TempDir dir;
  const auto run = dir.path() / "nul";
  // A zero head: every logit is 0, so greedy decoding picks id 0, the NUL byte, every time.
  ASSERT_NO_FATAL_FAILURE(import_with_head(dir, run, {}));
  const std::string args =
      "generate --checkpoint " + run.string() + " --prompt ab --max-new-tokens 6 --temperature 0";
  auto text = run_condensa(args);
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_EQ(text.output, std::string("ab") + std::string(6, '\0') + "\n");
  auto ids = run_condensa(args + " --ids");
  ASSERT_EQ(ids.exit_code, 0) << ids.output;
  EXPECT_EQ(ids.output, "256 97 98 0 0 0 0 0 0\n");
}

TEST(Interop, GenerateNeverSamplesIdsBeyondTheTokenizer) {
  TempDir dir;
  const auto run = dir.path() / "padded";
  // Rows 288 and 289 are +u and -u: one of them beats every id the tokenizer has, always.
  ASSERT_NO_FATAL_FAILURE(import_with_head(dir, run, {{288, 100.0f}, {289, -100.0f}}));
  for (const char* sampling : {"--temperature 0", "--temperature 1 --seed 3"}) {
    auto g = run_condensa("generate --checkpoint " + run.string() +
                          " --prompt ab --max-new-tokens 8 --ids " + sampling);
    ASSERT_EQ(g.exit_code, 0) << g.output;
    std::istringstream in(g.output);
    int64_t id, count = 0;
    while (in >> id) {
      EXPECT_LT(id, 259) << g.output;
      ++count;
    }
    // Greedy picks id 0 (all allowed logits are 0) every time; sampling may stop at EOS.
    if (std::string(sampling) == "--temperature 0") {
      EXPECT_EQ(count, 3 + 8) << g.output;
    }
    EXPECT_GE(count, 3 + 1) << g.output;
  }
}

TEST(Interop, ImportRefusesAForeignVocabularyLargerThanTheTokenizer) {
  TempDir dir;
  const auto out = dir.path() / "foreign";
  ASSERT_NO_FATAL_FAILURE(train(dir.path() / "run", "--set model.vocab_size=300"));
  const auto hf = dir.path() / "hf";
  ASSERT_EQ(
      run_condensa("export --checkpoint " + (dir.path() / "run").string() + " --out " + hf.string())
          .exit_code,
      0);
  ASSERT_NO_FATAL_FAILURE(make_foreign(hf, {{"topk_method", "greedy"}}));
  auto i = run_condensa("import --hf " + hf.string() + " --out " + out.string());
  EXPECT_EQ(i.exit_code, 1) << i.output;
  EXPECT_NE(i.output.find("config.json: vocab_size 300 is larger than the vocabulary of "
                          "data.tokenizer 'byte' (259): ids 259..299 would have no text"),
            std::string::npos)
      << i.output;
  EXPECT_FALSE(fs::exists(out));
}

TEST(Interop, EvalPerTokenMatchesAnIndependentLoop) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train(dir.path(), ""));
  std::ofstream(dir.path() / "text.txt") << kText;
  const auto file = dir.path() / "nll.tsv";
  constexpr int64_t kSeqLen = 16;
  auto e = run_condensa("eval --checkpoint " + dir.str() + " --data " +
                        (dir.path() / "text.txt").string() + " --json --seq-len " +
                        std::to_string(kSeqLen) + " --per-token " + file.string());
  ASSERT_EQ(e.exit_code, 0) << e.output;
  const auto j = nlohmann::json::parse(e.output.substr(e.output.find('{')));

  // Reference: BOS text EOS; token i (i >= 1) is predicted by the window starting at
  // kSeqLen * floor((i - 1) / kSeqLen), from the inputs before it.
  std::vector<int64_t> ids{kBos};
  for (unsigned char c : std::string(kText)) ids.push_back(c);
  ids.push_back(kEos);
  auto loaded = condensa::trainer::load_model_for_inference(dir.str());
  torch::NoGradGuard no_grad;
  std::istringstream in(read_text(file));
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header, "position\ttoken\tnll");
  double sum = 0;
  size_t rows = 0;
  for (size_t i = 1; i < ids.size(); ++i) {
    int64_t position, token;
    double nll;
    ASSERT_TRUE(in >> position >> token >> nll) << "row " << i;
    EXPECT_EQ(position, static_cast<int64_t>(i));
    EXPECT_EQ(token, ids[i]);
    const size_t start = (i - 1) / kSeqLen * kSeqLen;
    auto inputs = torch::tensor(std::vector<int64_t>(ids.begin() + start, ids.begin() + i));
    auto row_V = loaded.model->forward(inputs.unsqueeze(0)).logits_BSV[0][-1].to(torch::kFloat64);
    const double want = (torch::logsumexp(row_V, 0) - row_V[ids[i]]).item<double>();
    EXPECT_NEAR(nll, want, 1e-5 * std::max(1.0, want)) << "position " << i;
    sum += nll;
    ++rows;
  }
  int64_t extra;
  EXPECT_FALSE(in >> extra) << "more rows than targets";
  EXPECT_EQ(static_cast<int64_t>(rows), j["tokens"].get<int64_t>());
  EXPECT_NEAR(sum / rows, j["loss"].get<double>(), 1e-6 * j["loss"].get<double>());
}

TEST(Interop, HelpSaysHowTextIsWrapped) {
  auto e = run_condensa("eval --help");
  EXPECT_NE(e.output.find("wrapped in BOS ... EOS"), std::string::npos) << e.output;
  auto g = run_condensa("generate --help");
  EXPECT_NE(g.output.find("BOS followed by TEXT's tokens"), std::string::npos) << g.output;
}

// In-process checks of the config keys and tensor lists (trainer/interop/hf.h) against
// hand-written DeepseekV2/V3 config.json fragments.
using condensa::CheckpointError;
using namespace condensa::trainer;

namespace {

// The keys model_config_from_hf needs, as a DeepseekV3 config.json without routing keys.
nlohmann::json base_config() {
  return {{"vocab_size", 259},           {"hidden_size", 32},         {"intermediate_size", 64},
          {"moe_intermediate_size", 16}, {"num_hidden_layers", 2},    {"num_attention_heads", 2},
          {"n_shared_experts", 1},       {"n_routed_experts", 4},     {"kv_lora_rank", 16},
          {"qk_rope_head_dim", 8},       {"qk_nope_head_dim", 8},     {"v_head_dim", 8},
          {"num_experts_per_tok", 2},    {"first_k_dense_replace", 1}};
}

std::string message_of(const nlohmann::json& j) {
  try {
    model_config_from_hf(j, "hf/config.json");
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(HfConfig, RoutingDefaultsFollowTheModelType) {
  auto v3 = model_config_from_hf(base_config(), "c");
  EXPECT_EQ(v3.scoring, "sigmoid");
  EXPECT_TRUE(v3.router_bias);
  auto j = base_config();
  j["model_type"] = "deepseek_v2";
  auto v2 = model_config_from_hf(j, "c");
  EXPECT_EQ(v2.scoring, "softmax");
  EXPECT_FALSE(v2.router_bias);
}

TEST(HfConfig, GreedyIgnoresGroupsAndGroupLimitedKeepsThem) {
  auto j = base_config();
  j["topk_method"] = "greedy";
  j["n_group"] = 2;
  j["topk_group"] = 1;
  auto greedy = model_config_from_hf(j, "c");
  EXPECT_FALSE(greedy.router_bias);
  EXPECT_EQ(greedy.num_groups, 1);
  EXPECT_EQ(greedy.topk_groups, 1);
  j["topk_method"] = "group_limited_greedy";
  auto limited = model_config_from_hf(j, "c");
  EXPECT_FALSE(limited.router_bias);
  EXPECT_EQ(limited.num_groups, 2);
  EXPECT_EQ(limited.topk_groups, 1);
}

TEST(HfConfig, UnknownRoutingValuesNameTheKey) {
  auto j = base_config();
  j["topk_method"] = "gready";
  EXPECT_EQ(message_of(j),
            "hf/config.json: topk_method 'gready' is not one of noaux_tc | greedy | "
            "group_limited_greedy");
  j = base_config();
  j["scoring_func"] = "relu";
  EXPECT_EQ(message_of(j), "hf/config.json: scoring_func 'relu' is not one of sigmoid | softmax");
}

TEST(HfConfig, ExportStatesRopeLayoutAndSpecialTokens) {
  condensa::model::ModelConfig m;
  auto j = hf_config_json(m, "byte");
  EXPECT_EQ(j["rope_interleave"], true);
  EXPECT_EQ(j["pad_token_id"], 258);
  EXPECT_EQ(j["condensa_tokenizer"], "byte");
}

TEST(HfTensors, BiasLessRoutersGetAZeroBias) {
  condensa::model::ModelConfig m;
  m.num_layers = 2;
  m.num_dense_layers = 1;
  m.num_routed_experts = 4;
  m.router_bias = false;
  const auto gate = torch::randn({4, 8});
  NamedTensorList hf = {{"model.layers.1.mlp.gate.weight", gate},
                        {"model.embed_tokens.weight", torch::randn({3, 8})}};
  auto ours = from_hf_tensors(m, hf);
  std::map<std::string, torch::Tensor> by_name(ours.begin(), ours.end());
  ASSERT_EQ(by_name.size(), 3u);
  EXPECT_TRUE(torch::equal(by_name.at("layers.1.mlp.gate.weight"), gate));
  EXPECT_TRUE(
      torch::equal(by_name.at("layers.1.mlp.gate.e_score_correction_bias"), torch::zeros({4})));

  // A bias in the file is kept, not replaced.
  const auto bias = torch::randn({4});
  hf.emplace_back("model.layers.1.mlp.gate.e_score_correction_bias", bias);
  ours = from_hf_tensors(m, hf);
  by_name = std::map<std::string, torch::Tensor>(ours.begin(), ours.end());
  EXPECT_EQ(by_name.size(), 3u);
  EXPECT_TRUE(torch::equal(by_name.at("layers.1.mlp.gate.e_score_correction_bias"), bias));
}

TEST(HfTensors, NoauxTcNeedsItsBias) {
  condensa::model::ModelConfig m;
  m.num_layers = 2;
  m.router_bias = true;
  NamedTensorList hf = {{"model.layers.1.mlp.gate.weight", torch::randn({8, 8})}};
  try {
    from_hf_tensors(m, hf);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(),
                 "tensor 'model.layers.1.mlp.gate.e_score_correction_bias' is missing: "
                 "topk_method noaux_tc selects experts with it");
  }
}
