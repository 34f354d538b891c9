// A trained checkpoint as the ecosystem uses it: `condensa eval`, `generate`, `export`, `import`,
// a standard safetensors reader, and `plan`.
//
// Key design choice: the CLI's numbers are checked against an independent computation in the
// test: the checkpoint is loaded in-process and the loss is summed token by token with plain
// torch ops, greedy decoding is a loop over the full prefix (no KV cache), and the safetensors
// files are read by the `safetensors` Python package (the venv launch/setup.sh creates).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "tests/support/test_util.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/checkpoint/state.h"
#include "trainer/inference.h"

namespace fs = std::filesystem;
using namespace condensa::testing;

namespace {

constexpr int64_t kBos = 256, kEos = 257;  // byte tokenizer: ids 0-255 are the bytes

// A 10-step tiny run with one MTP module, checkpointed at step 10.
void train_tiny(const TempDir& dir) {
  auto r =
      run_condensa(tiny_train_args(dir.path(), "--set train.steps=10 --set model.mtp_depth=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

nlohmann::json parse_json_line(const std::string& output) {
  return nlohmann::json::parse(output.substr(output.find('{')));
}

}  // namespace

TEST(Ecosystem, EvalMatchesAnIndependentCrossEntropy) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_tiny(dir));
  const std::string text =
      "12+30=42\nsort 3 1 2 > 1 2 3\ncopy abc > abc\n37-5=32\nreverse xy > yx\n";
  std::ofstream(dir.path() / "text.txt") << text;
  constexpr int64_t kSeqLen = 16;
  auto e = run_condensa("eval --checkpoint " + dir.str() + " --data " +
                        (dir.path() / "text.txt").string() + " --json --seq-len " +
                        std::to_string(kSeqLen));
  ASSERT_EQ(e.exit_code, 0) << e.output;
  const auto j = parse_json_line(e.output);

  // Reference: BOS text EOS, windows of kSeqLen inputs starting every kSeqLen tokens, the loss
  // of each target summed one by one in double precision.
  std::vector<int64_t> ids{kBos};
  for (unsigned char c : text) ids.push_back(c);
  ids.push_back(kEos);
  auto loaded = condensa::trainer::load_model_for_inference(dir.str());
  torch::NoGradGuard no_grad;
  double sum = 0;
  int64_t targets = 0, windows = 0;
  for (size_t start = 0; start + 1 < ids.size(); start += kSeqLen) {
    const size_t end = std::min(ids.size(), start + kSeqLen + 1);
    std::vector<int64_t> window(ids.begin() + start, ids.begin() + end);
    auto inputs = torch::tensor(std::vector<int64_t>(window.begin(), window.end() - 1));
    auto logits_SV = loaded.model->forward(inputs.unsqueeze(0)).logits_BSV[0].to(torch::kFloat64);
    for (size_t i = 0; i + 1 < window.size(); ++i) {
      auto row_V = logits_SV[static_cast<int64_t>(i)];
      sum += (torch::logsumexp(row_V, 0) - row_V[window[i + 1]]).item<double>();
      ++targets;
    }
    ++windows;
  }
  EXPECT_EQ(j["tokens"].get<int64_t>(), targets);
  EXPECT_EQ(j["windows"].get<int64_t>(), windows);
  EXPECT_EQ(j["step"].get<int64_t>(), 10);
  const double want = sum / static_cast<double>(targets);
  EXPECT_NEAR(j["loss"].get<double>(), want, 1e-5 * want);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(want), 1e-5 * std::exp(want));
}

TEST(Ecosystem, GreedyGenerationMatchesAFullPrefixLoop) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_tiny(dir));
  const std::string prompt = "12+";
  constexpr int64_t kNewTokens = 12;
  // Reference: recompute the whole prefix for every token and take the argmax.
  auto loaded = condensa::trainer::load_model_for_inference(dir.str());
  torch::NoGradGuard no_grad;
  std::vector<int64_t> ids{kBos};
  for (unsigned char c : prompt) ids.push_back(c);
  std::string want = prompt;
  for (int64_t i = 0; i < kNewTokens; ++i) {
    auto logits_V = loaded.model->forward(torch::tensor(ids).unsqueeze(0)).logits_BSV[0][-1];
    const int64_t next = logits_V.argmax().item<int64_t>();
    if (next == kEos) break;
    ids.push_back(next);
    if (next < 256) want.push_back(static_cast<char>(next));
  }
  want += "\n";
  const std::string args = "generate --checkpoint " + dir.str() + " --prompt '" + prompt +
                           "' --max-new-tokens " + std::to_string(kNewTokens) + " --temperature 0";
  auto cached = run_condensa(args);
  auto uncached = run_condensa(args + " --no-cache");
  ASSERT_EQ(cached.exit_code, 0) << cached.output;
  ASSERT_EQ(uncached.exit_code, 0) << uncached.output;
  EXPECT_EQ(cached.output, want);
  EXPECT_EQ(uncached.output, want);
}

TEST(Ecosystem, ExportImportRoundTrip) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_tiny(dir));
  // export (sharded), then import: bitwise equal tensors.
  auto hf = dir.path() / "hf";
  auto x = run_condensa("export --checkpoint " + dir.str() + " --out " + hf.string() +
                        " --max-shard-size 200000");
  ASSERT_EQ(x.exit_code, 0) << x.output;
  EXPECT_TRUE(fs::exists(hf / "model.safetensors.index.json"));
  auto cfg = nlohmann::json::parse(std::ifstream(hf / "config.json"));
  EXPECT_EQ(cfg["architectures"][0], "DeepseekV3ForCausalLM");
  EXPECT_EQ(cfg["n_routed_experts"], 4);
  EXPECT_EQ(cfg["num_nextn_predict_layers"], 1);
  auto index = nlohmann::json::parse(std::ifstream(hf / "model.safetensors.index.json"));
  for (const char* k : {"model.layers.1.mlp.experts.3.gate_proj.weight",
                        "model.layers.1.mlp.gate.e_score_correction_bias",
                        "model.layers.2.eh_proj.weight", "model.layers.2.shared_head.head.weight",
                        "lm_head.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                        "model.layers.1.mlp.shared_experts.down_proj.weight"}) {
    EXPECT_TRUE(index["weight_map"].contains(k)) << k;
  }
  auto imported = dir.path() / "imported";
  auto i = run_condensa("import --hf " + hf.string() + " --out " + imported.string());
  ASSERT_EQ(i.exit_code, 0) << i.output;
  auto orig = condensa::trainer::load_global_model_tensors(
      (dir.path() / "checkpoints" / "step_00000010").string());
  auto back = condensa::trainer::load_global_model_tensors(
      (imported / "checkpoints" / "step_00000000").string());
  std::map<std::string, torch::Tensor> bm(back.begin(), back.end());
  ASSERT_EQ(orig.size(), back.size());
  for (auto& [name, t] : orig) {
    ASSERT_TRUE(bm.count(name)) << name;
    EXPECT_TRUE(torch::equal(t, bm[name])) << name;
  }
  // The imported checkpoint continues training.
  auto t = run_condensa("train " + source_path("configs/tiny.yaml") +
                        " --set model.mtp_depth=1 --set run.dir=" + imported.string() +
                        " --set train.steps=2");
  EXPECT_EQ(t.exit_code, 0) << t.output;
  EXPECT_NE(t.output.find("resumed from"), std::string::npos) << t.output;
}

namespace {

// Reads each file with safetensors.numpy and writes {path: {metadata, tensors: {name: {dtype,
// shape, hex}}}} as JSON to argv[1].
const char* kReadWithSafetensors = R"(import json, sys
from safetensors import safe_open
from safetensors.numpy import load_file
out = {}
for path in sys.argv[2:]:
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    tensors = {name: {"dtype": str(a.dtype), "shape": list(a.shape), "hex": a.tobytes().hex()}
               for name, a in load_file(path).items()}
    out[path] = {"metadata": metadata, "tensors": tensors}
json.dump(out, open(sys.argv[1], "w"))
)";

std::string hex_of(const torch::Tensor& t) {
  static const char* digits = "0123456789abcdef";
  const auto c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  std::string out;
  for (size_t i = 0; i < c.nbytes(); ++i) out += {digits[p[i] >> 4], digits[p[i] & 15]};
  return out;
}

const std::map<std::string, std::string> kNumpyDtype = {
    {"F32", "float32"}, {"F64", "float64"}, {"F16", "float16"}, {"I64", "int64"},
    {"I32", "int32"},   {"I16", "int16"},   {"I8", "int8"},     {"U8", "uint8"}};

}  // namespace

TEST(Ecosystem, StandardSafetensorsReaderAgrees) {
  const std::string python = source_path(".deps/pyenv/bin/python");
  ASSERT_TRUE(fs::exists(python)) << python
                                  << " is missing: run launch/setup.sh to create the Python venv "
                                     "with the safetensors package";
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_tiny(dir));
  auto hf = dir.path() / "hf";
  auto x = run_condensa("export --checkpoint " + dir.str() + " --out " + hf.string() +
                        " --max-shard-size 200000");
  ASSERT_EQ(x.exit_code, 0) << x.output;
  const auto step = dir.path() / "checkpoints" / "step_00000010";
  std::vector<std::string> files = {(step / "model-rank00000.safetensors").string(),
                                    (step / "optim-rank00000.safetensors").string()};
  auto index = nlohmann::json::parse(std::ifstream(hf / "model.safetensors.index.json"));
  std::set<std::string> shards;
  for (auto& [name, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
  ASSERT_GE(shards.size(), 2u);
  for (const auto& s : shards) files.push_back((hf / s).string());

  std::ofstream(dir.path() / "read.py") << kReadWithSafetensors;
  std::string cmd =
      python + " " + (dir.path() / "read.py").string() + " " + (dir.path() / "read.json").string();
  for (const auto& f : files) cmd += " " + f;
  auto r = run_command(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto seen = nlohmann::json::parse(std::ifstream(dir.path() / "read.json"));

  for (const auto& path : files) {
    SCOPED_TRACE(path);
    const auto mine = condensa::trainer::load_safetensors(path);
    const auto& theirs = seen.at(path);
    ASSERT_EQ(theirs["tensors"].size(), mine.tensors.size());
    using StringMap = std::map<std::string, std::string>;
    EXPECT_EQ(theirs["metadata"].get<StringMap>(), mine.metadata);
    for (const auto& [name, t] : mine.tensors) {
      ASSERT_TRUE(theirs["tensors"].contains(name)) << name;
      const auto& e = theirs["tensors"][name];
      EXPECT_EQ(e["dtype"],
                kNumpyDtype.at(condensa::trainer::safetensors_dtype_name(t.scalar_type())))
          << name;
      EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), t.sizes().vec()) << name;
      EXPECT_TRUE(e["hex"].get<std::string>() == hex_of(t)) << name << ": bytes differ";
    }
  }
  // The index maps each exported tensor to the shard that holds it.
  for (auto& [name, shard] : index["weight_map"].items()) {
    EXPECT_TRUE(seen.at((hf / shard.get<std::string>()).string())["tensors"].contains(name))
        << name;
  }
}

TEST(Plan, ReportsPublishedCounts) {
  auto r = run_condensa("plan " + source_path("configs/deepseek-v3-671b.yaml") + " --world 2048");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("total parameters      671."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("activated per token   37."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pp 16 x dp 128, ep 64, ZeRO-1"), std::string::npos) << r.output;
}
