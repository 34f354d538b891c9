// The trainer as a user runs it: `condensa train` on configs/tiny.yaml, then resume, signals,
// corrupt checkpoints, eval, generate, export and import.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/support/test_util.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/checkpoint/state.h"

namespace fs = std::filesystem;
using condensa::testing::run_condensa;
using condensa::testing::source_path;
using condensa::testing::TempDir;

namespace {

std::string tiny_cmd(const TempDir& dir, const std::string& extra) {
  return "train " + source_path("configs/tiny.yaml") + " --set run.dir=" + dir.str() +
         " --set log.every=1 " + extra;
}

// step -> loss (the training records only) from metrics.jsonl.
std::map<int64_t, double> losses(const TempDir& dir) {
  std::map<int64_t, double> out;
  std::ifstream in(dir.path() / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j["step"]] = j["loss"];
  }
  return out;
}

}  // namespace

TEST(TrainEndToEnd, LossFallsOnTheSyntheticMixture) {
  TempDir dir;
  auto r = run_condensa(
      tiny_cmd(dir, "--set train.steps=150 --set checkpoint.every=0 --set log.every=10"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto l = losses(dir);
  ASSERT_TRUE(l.count(10) && l.count(150)) << r.output;
  // Uniform over 259 tokens is ln 259 = 5.56; the tiny model must get well below 3.5.
  EXPECT_LT(l[150], 3.5) << r.output;
  EXPECT_LT(l[150], l[10] - 1.0);
  // The metrics record carries the MoE statistics.
  std::ifstream in(dir.path() / "metrics.jsonl");
  std::string first;
  std::getline(in, first);
  auto j = nlohmann::json::parse(first);
  for (const char* k :
       {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "max_mean_load", "moe"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j["moe"][0]["tokens_per_expert"].size(), 4u);
  EXPECT_TRUE(j["moe"][0].contains("tokens_per_expert_by_language"));
  EXPECT_TRUE(fs::exists(dir.path() / "config.yaml"));
  EXPECT_NE(r.output.find("validation loss"), std::string::npos);
}

TEST(TrainEndToEnd, TrainsOnPreparedTokenShards) {
  TempDir dir;
  // A small corpus: the repository's docs, tokenised by `condensa data prepare`.
  auto shards = dir.path() / "shards";
  auto p =
      run_condensa("data prepare --input " + source_path("docs") + " --out " + shards.string());
  ASSERT_EQ(p.exit_code, 0) << p.output;
  auto r = run_condensa(tiny_cmd(
      dir, "--set train.steps=4 --set data.source=tokens --set data.path=" + shards.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto l = losses(dir);
  ASSERT_EQ(l.size(), 4u);
  EXPECT_LT(l[1], 6.0);
  // A missing shard directory is a clear error naming the path.
  auto bad =
      run_condensa(tiny_cmd(dir, "--set data.source=tokens --set data.path=/nonexistent/shards"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("/nonexistent/shards"), std::string::npos) << bad.output;
}

TEST(TrainEndToEnd, Bf16ComputeTracksFp32) {
  TempDir a, b;
  auto ra = run_condensa(tiny_cmd(a, "--set train.steps=3 --set checkpoint.every=0"));
  auto rb = run_condensa(
      tiny_cmd(b, "--set train.steps=3 --set checkpoint.every=0 --set train.dtype=bf16"));
  ASSERT_EQ(ra.exit_code, 0) << ra.output;
  ASSERT_EQ(rb.exit_code, 0) << rb.output;
  auto la = losses(a), lb = losses(b);
  for (int64_t s = 1; s <= 3; ++s) {
    EXPECT_NE(la[s], lb[s]) << "bf16 must actually change the arithmetic, step " << s;
    EXPECT_NEAR(la[s], lb[s], 0.05) << "step " << s;
  }
}

TEST(TrainEndToEnd, ResumeIsBitwiseExact) {
  TempDir straight, resumed;
  auto a = run_condensa(tiny_cmd(straight, "--set train.steps=16 --set checkpoint.every=0"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto b1 = run_condensa(tiny_cmd(resumed, "--set train.steps=16 --set train.stop_at_step=7"));
  ASSERT_EQ(b1.exit_code, 0) << b1.output;
  ASSERT_NE(b1.output.find("stopped at train.stop_at_step after step 7"), std::string::npos)
      << b1.output;
  auto b2 = run_condensa(tiny_cmd(resumed, "--set train.steps=16"));
  ASSERT_EQ(b2.exit_code, 0) << b2.output;
  EXPECT_NE(b2.output.find("resumed from"), std::string::npos) << b2.output;
  auto la = losses(straight), lb = losses(resumed);
  ASSERT_EQ(la.size(), 16u);
  ASSERT_EQ(lb.size(), 16u);
  for (int64_t s = 1; s <= 16; ++s) EXPECT_EQ(la[s], lb[s]) << "step " << s;  // bitwise
}

TEST(TrainEndToEnd, SigtermFinishesTheStepSavesAndExitsZero) {
  TempDir dir;
  const std::string cmd = std::string(CONDENSA_BINARY) + " " +
                          tiny_cmd(dir, "--set train.steps=100000 --set checkpoint.every=0");
  const std::string script = "(" + cmd + " > " + dir.str() + "/out.txt 2>&1 & pid=$!; " +
                             "for i in $(seq 600); do grep -q '\"step\":3' " + dir.str() +
                             "/metrics.jsonl 2>/dev/null && break; sleep 0.1; done; kill -TERM "
                             "$pid; wait $pid; echo EXIT=$?)";
  FILE* p = popen(script.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256];
  std::string out;
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  std::ifstream log(dir.path() / "out.txt");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(out.find("EXIT=0"), std::string::npos) << out << text;
  EXPECT_NE(text.find("stopped by signal"), std::string::npos) << text;
  EXPECT_TRUE(fs::exists(dir.path() / "checkpoints" / "latest")) << text;
}

TEST(TrainEndToEnd, CorruptNewestCheckpointFallsBackWithWarning) {
  TempDir dir;
  auto r = run_condensa(
      tiny_cmd(dir, "--set train.steps=20 --set checkpoint.every=10 --set checkpoint.keep=0"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto bad = dir.path() / "checkpoints" / "step_00000020" / "model-rank00000.safetensors";
  ASSERT_TRUE(fs::exists(bad));
  fs::resize_file(bad, fs::file_size(bad) / 2);
  // Resuming explicitly from the corrupt one is an error naming the file.
  auto r3 = run_condensa(tiny_cmd(
      dir, "--set checkpoint.resume=" + (dir.path() / "checkpoints" / "step_00000020").string()));
  EXPECT_EQ(r3.exit_code, 1) << r3.output;
  EXPECT_NE(r3.output.find("model-rank00000.safetensors"), std::string::npos) << r3.output;
  auto r2 = run_condensa(tiny_cmd(dir, "--set train.steps=22"));
  EXPECT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_NE(r2.output.find("model-rank00000.safetensors"), std::string::npos) << r2.output;
  EXPECT_NE(r2.output.find("step 10"), std::string::npos) << r2.output;
}

TEST(Ecosystem, EvalGenerateExportImportRoundTrip) {
  TempDir dir;
  auto r = run_condensa(tiny_cmd(dir, "--set train.steps=10 --set model.mtp_depth=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // eval on raw text, as JSON.
  std::ofstream(dir.path() / "text.txt") << "12+30=42\nsort 3 1 2 > 1 2 3\n";
  auto e = run_condensa("eval --checkpoint " + dir.str() + " --data " +
                        (dir.path() / "text.txt").string() + " --json");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  auto j = nlohmann::json::parse(e.output.substr(e.output.find('{')));
  EXPECT_GT(j["perplexity"].get<double>(), 1.0);
  EXPECT_NEAR(std::exp(j["loss"].get<double>()), j["perplexity"].get<double>(), 1e-6);
  // greedy generation is deterministic.
  auto g1 = run_condensa("generate --checkpoint " + dir.str() +
                         " --prompt '12+' --max-new-tokens 8 --temperature 0");
  auto g2 = run_condensa("generate --checkpoint " + dir.str() +
                         " --prompt '12+' --max-new-tokens 8 --temperature 0");
  ASSERT_EQ(g1.exit_code, 0) << g1.output;
  EXPECT_EQ(g1.output, g2.output);
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

TEST(Plan, ReportsPublishedCounts) {
  auto r = run_condensa("plan " + source_path("configs/deepseek-v3-671b.yaml") + " --world 2048");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("total parameters      671."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("activated per token   37."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pp 16 x dp 128, ep 64, ZeRO-1"), std::string::npos) << r.output;
}
