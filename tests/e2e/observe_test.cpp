// Watching a run from outside: the TensorBoard event files read by TensorBoard itself, and the
// HTML report rendered by a real browser.
//
// Key design choice: the readers are the real ones, not ours. The event files are read by the
// `tensorboard` package's EventAccumulator (tests/e2e/read_tensorboard.py, the venv of
// launch/setup.sh) and compared with metrics.jsonl value for value; the report is rendered by
// headless Chromium, whose DOM dump and screenshot (pixels counted by Pillow,
// tests/e2e/inspect_png.py) are compared with what the run's metrics imply.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "common/durable_file.h"
#include "tests/support/test_util.h"
#include "trainer/report_svg.h"

namespace fs = std::filesystem;
using namespace condensa::testing;

namespace {

const std::string& venv_python() {
  static const std::string python = source_path(".deps/pyenv/bin/python");
  return python;
}

// TensorBoard's view of `log_dir`: {"scalars": {tag: [[step, value]]}, "histograms": ...}.
nlohmann::json read_tensorboard(const fs::path& log_dir, const fs::path& work) {
  const auto out = work / "tensorboard.json";
  auto r = run_command(venv_python() + " " + source_path("tests/e2e/read_tensorboard.py") + " " +
                       log_dir.string() + " " + out.string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(std::ifstream(out));
}

// TensorBoard stores scalars as float32.
double as_float32(double v) { return static_cast<double>(static_cast<float>(v)); }

using Curve = std::vector<std::pair<int64_t, double>>;

Curve curve_of(const std::vector<nlohmann::json>& records,
               const std::string& key,
               const std::function<double(const nlohmann::json&)>& value = nullptr) {
  Curve c;
  for (const auto& r : records) {
    if (!r.contains(key)) continue;
    c.emplace_back(r["step"].get<int64_t>(), as_float32(value ? value(r) : r[key].get<double>()));
  }
  return c;
}

Curve tensorboard_curve(const nlohmann::json& tb, const std::string& tag) {
  Curve c;
  if (!tb["scalars"].contains(tag)) return c;
  for (const auto& e : tb["scalars"][tag]) c.emplace_back(e[0].get<int64_t>(), e[1].get<double>());
  return c;
}

// Every curve of metrics.jsonl equals TensorBoard's, step for step and value for value.
void expect_tensorboard_matches_metrics(const fs::path& run_dir, const nlohmann::json& tb) {
  const auto records = read_metrics(run_dir);
  const std::vector<std::pair<std::string, std::string>> scalars = {
      {"train/loss", "loss"},
      {"train/mtp_loss", "mtp_loss"},
      {"train/aux_loss", "aux_loss"},
      {"train/lr", "lr"},
      {"train/grad_norm", "grad_norm"},
      {"perf/tokens_per_s", "tokens_per_s"},
      {"perf/mfu", "mfu"},
      {"val/loss", "val_loss"},
      {"moe/max_mean_load", "max_mean_load"}};
  for (const auto& [tag, key] : scalars) {
    SCOPED_TRACE(tag);
    const Curve want = curve_of(records, key);
    ASSERT_FALSE(want.empty()) << key << " missing from metrics.jsonl";
    EXPECT_EQ(tensorboard_curve(tb, tag), want);
  }
  // Per MoE layer: the load imbalance, and the histogram of tokens per expert.
  const size_t layers = records.front()["moe"].size();
  ASSERT_EQ(layers, 2u);  // tiny: block 1 is MoE; MTP module 0 is MoE
  const std::vector<std::string> names = {"layer1", "mtp0"};
  std::set<std::string> want_scalar_tags, want_histogram_tags;
  for (const auto& [tag, key] : scalars) want_scalar_tags.insert(tag);
  for (size_t i = 0; i < layers; ++i) {
    SCOPED_TRACE(names[i]);
    const std::string prefix = "moe/" + names[i] + "/";
    want_scalar_tags.insert(prefix + "max_mean_load");
    want_histogram_tags.insert(prefix + "tokens_per_expert");
    EXPECT_EQ(tensorboard_curve(tb, prefix + "max_mean_load"),
              curve_of(records, "moe", [&](const nlohmann::json& r) {
                return r["moe"][i]["max_mean_load"].get<double>();
              }));
    ASSERT_TRUE(tb["histograms"].contains(prefix + "tokens_per_expert"));
    const auto& hist = tb["histograms"][prefix + "tokens_per_expert"];
    std::vector<int64_t> steps;
    for (const auto& r : records) {
      if (!r.contains("moe")) continue;
      const auto counts = r["moe"][i]["tokens_per_expert"].get<std::vector<int64_t>>();
      const size_t k = steps.size();
      steps.push_back(r["step"].get<int64_t>());
      ASSERT_LT(k, hist.size());
      EXPECT_EQ(hist[k]["step"].get<int64_t>(), steps.back());
      const auto bucket = hist[k]["bucket"].get<std::vector<double>>();
      const auto limit = hist[k]["bucket_limit"].get<std::vector<double>>();
      ASSERT_EQ(bucket.size(), counts.size());
      double total = 0;
      for (size_t e = 0; e < counts.size(); ++e) {
        EXPECT_EQ(bucket[e], static_cast<double>(counts[e])) << "step " << steps.back();
        EXPECT_EQ(limit[e], static_cast<double>(e) + 0.5);
        total += static_cast<double>(counts[e]);
      }
      EXPECT_EQ(hist[k]["num"].get<double>(), total);
    }
    EXPECT_EQ(hist.size(), steps.size());
  }
  std::set<std::string> scalar_tags, histogram_tags;
  for (auto& [tag, v] : tb["scalars"].items()) scalar_tags.insert(tag);
  for (auto& [tag, v] : tb["histograms"].items()) histogram_tags.insert(tag);
  EXPECT_EQ(scalar_tags, want_scalar_tags);
  EXPECT_EQ(histogram_tags, want_histogram_tags);
}

std::string observed_run_args(const TempDir& dir, const std::string& extra) {
  return tiny_train_args(dir.path(),
                         "--set train.steps=6 --set train.eval_every=2 "
                         "--set model.mtp_depth=1 " +
                             extra);
}

void require_venv() {
  ASSERT_TRUE(fs::exists(venv_python()))
      << venv_python()
      << " is missing: run launch/setup.sh (creates the venv with tensorboard and pillow)";
}

}  // namespace

TEST(TensorBoard, EventFilesEqualMetricsJsonl) {
  ASSERT_NO_FATAL_FAILURE(require_venv());
  TempDir dir;
  auto r = run_condensa(observed_run_args(dir, ""));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::is_directory(dir.path() / "tb"));
  const auto tb = read_tensorboard(dir.path() / "tb", dir.path());
  expect_tensorboard_matches_metrics(dir.path(), tb);
}

// A run resumed from an earlier checkpoint retrains steps already in the first event file;
// TensorBoard must drop those (as metrics.jsonl does) and show one curve.
TEST(TensorBoard, ResumeDropsTheRetrainedSteps) {
  ASSERT_NO_FATAL_FAILURE(require_venv());
  TempDir dir;
  auto first =
      run_condensa(observed_run_args(dir, "--set checkpoint.every=2 --set checkpoint.keep=0"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto second =
      run_condensa(observed_run_args(dir,
                                     "--set checkpoint.every=2 --set checkpoint.keep=0 "
                                     "--set checkpoint.resume=" +
                                         (dir.path() / "checkpoints" / "step_00000004").string()));
  ASSERT_EQ(second.exit_code, 0) << second.output;
  size_t event_files = 0;
  for (const auto& e : fs::directory_iterator(dir.path() / "tb")) event_files += 1;
  EXPECT_EQ(event_files, 2u);
  const auto tb = read_tensorboard(dir.path() / "tb", dir.path());
  expect_tensorboard_matches_metrics(dir.path(), tb);
}

TEST(TensorBoard, OffWritesNoEventFiles) {
  TempDir dir;
  auto r = run_condensa(observed_run_args(dir, "--set log.tensorboard=false"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir.path() / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(dir.path() / "tb"));
}

TEST(Report, RendersInHeadlessChromium) {
  ASSERT_NO_FATAL_FAILURE(require_venv());
  auto which = run_command("command -v chromium");
  ASSERT_EQ(which.exit_code, 0) << "chromium is not installed: run launch/setup.sh";
  const std::string chromium = which.output.substr(0, which.output.find('\n'));
  TempDir dir;
  const fs::path run_dir = dir.path() / "observed-run";
  auto r = run_condensa(tiny_train_args(run_dir,
                                        "--set train.steps=12 --set train.eval_every=4 "
                                        "--set model.mtp_depth=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path html = dir.path() / "report.html";
  auto rep = run_condensa("report " + run_dir.string() + " --out " + html.string());
  ASSERT_EQ(rep.exit_code, 0) << rep.output;
  ASSERT_TRUE(fs::exists(html));

  // Self-contained: nothing to fetch (the SVG namespace URI is a name, never loaded).
  const std::string page = condensa::read_file(html.string());
  EXPECT_FALSE(std::regex_search(page, std::regex(R"((src|href)\s*=)"))) << "external reference";
  EXPECT_EQ(page.find("<script"), std::string::npos);

  const std::string flags =
      " --headless --no-sandbox --disable-gpu --hide-scrollbars "
      "--user-data-dir=" +
      (dir.path() / "profile").string();
  auto dom = run_command(chromium + flags + " --dump-dom file://" + html.string() + " 2>/dev/null");
  ASSERT_EQ(dom.exit_code, 0) << dom.output;
  EXPECT_NE(dom.output.find("<title>condensa report: observed-run</title>"), std::string::npos)
      << dom.output.substr(0, 400);
  // 5 charts (loss, lr, grad norm, tokens/s, load) + a heatmap per MoE layer (layer1, mtp0).
  size_t svgs = 0;
  for (size_t at = dom.output.find("<svg"); at != std::string::npos;
       at = dom.output.find("<svg", at + 1))
    ++svgs;
  EXPECT_EQ(svgs, 7u);
  EXPECT_NE(dom.output.find("MoE layer1: tokens per expert"), std::string::npos);
  EXPECT_NE(dom.output.find("MoE mtp0: tokens per expert"), std::string::npos);

  const fs::path png = dir.path() / "report.png";
  auto shot =
      run_command(chromium + flags + " --window-size=1280,2400 --screenshot=" + png.string() +
                  " file://" + html.string());
  ASSERT_EQ(shot.exit_code, 0) << shot.output;
  // Every heatmap cell's color (from the counts in metrics.jsonl) is on the screen; the
  // heatmap cells of this run are large flat rectangles.
  std::set<std::string> colors;
  for (const auto& rec : read_metrics(run_dir)) {
    if (!rec.contains("moe")) continue;
    for (const auto& layer : rec["moe"]) {
      const auto counts = layer["tokens_per_expert"].get<std::vector<int64_t>>();
      double mean = 0;
      for (auto c : counts) mean += static_cast<double>(c) / static_cast<double>(counts.size());
      for (auto c : counts)
        colors.insert(condensa::trainer::load_color(static_cast<double>(c) / mean));
    }
  }
  std::string cmd = venv_python() + " " + source_path("tests/e2e/inspect_png.py") + " " +
                    png.string() + " " + (dir.path() / "png.json").string();
  for (const auto& c : colors) cmd += " '" + c + "'";
  auto inspect = run_command(cmd);
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  const auto stats = nlohmann::json::parse(std::ifstream(dir.path() / "png.json"));
  EXPECT_EQ(stats["width"].get<int>(), 1280);
  EXPECT_EQ(stats["height"].get<int>(), 2400);
  EXPECT_GT(stats["nonwhite_fraction"].get<double>(), 0.05);
  EXPECT_GT(stats["distinct_colors"].get<int>(), 50);
  for (const auto& c : colors) EXPECT_GE(stats["pixels"][c].get<int>(), 20) << "color " << c;
}

TEST(Report, ErrorsNameTheRunDirectory) {
  TempDir dir;
  auto missing = run_condensa("report " + (dir.path() / "nope").string());
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(
      missing.output.find("RUN_DIR " + (dir.path() / "nope").string() + " is not a directory"),
      std::string::npos)
      << missing.output;
  auto empty = run_condensa("report " + dir.str());
  EXPECT_EQ(empty.exit_code, 1) << empty.output;
  EXPECT_NE(empty.output.find("cannot read " + (dir.path() / "metrics.jsonl").string()),
            std::string::npos)
      << empty.output;
  std::ofstream(dir.path() / "metrics.jsonl") << "{\"step\": 2, \"val_loss\": 3.5}\n";
  auto no_train = run_condensa("report " + dir.str());
  EXPECT_EQ(no_train.exit_code, 1) << no_train.output;
  EXPECT_NE(no_train.output.find("holds no training record"), std::string::npos) << no_train.output;
}
