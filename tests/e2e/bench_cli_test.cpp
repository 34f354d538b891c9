// `condensa bench train` through the built binary: a timed run of a tiny config that prints a
// parseable result, writes nothing into run.dir, and rejects bad arguments; `--profile` writes a
// Chrome trace with the step's operators. `bench matmul` prints each operand layout's rate and
// the peak MFU divides by.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "tests/support/test_util.h"

using namespace condensa::testing;
namespace fs = std::filesystem;

namespace {
nlohmann::json last_json_line(const std::string& out) {
  std::istringstream in(out);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.rfind("{\"bench\"", 0) == 0) last = line;
  }
  return last.empty() ? nlohmann::json() : nlohmann::json::parse(last);
}
}  // namespace

TEST(BenchCli, TrainPrintsThroughputAndWritesNothing) {
  TempDir dir;
  const auto run_dir = dir.path() / "run";
  auto r = run_condensa("bench train --config " + source_path("configs/tiny.yaml") +
                        " --steps 3 --warmup 1 --set run.dir=" + run_dir.string() +
                        " --set run.threads=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = last_json_line(r.output);
  ASSERT_FALSE(j.is_null()) << r.output;
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0) << r.output;
  EXPECT_GT(j["step_ms"].get<double>(), 0) << r.output;
  // tokens/s and step time describe the same median step.
  EXPECT_NEAR(j["tokens_per_s"].get<double>() * j["step_ms"].get<double>() / 1e3, 4 * 32,
              1e-3 * 128)
      << r.output;
  EXPECT_GT(j["mfu"].get<double>(), 0) << r.output;
  EXPECT_GT(j["flops_per_token"].get<double>(), 0) << r.output;
  EXPECT_EQ(j["dtype"], "fp32");
  EXPECT_FALSE(fs::exists(run_dir)) << "bench train wrote into run.dir";
  EXPECT_NE(r.output.find("3 timed steps after 1 warm-up"), std::string::npos) << r.output;
}

TEST(BenchCli, TrainRejectsBadStepsAndWritesProfile) {
  auto bad =
      run_condensa("bench train --config " + source_path("configs/tiny.yaml") + " --steps 0");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--steps"), std::string::npos) << bad.output;
  auto none = run_condensa("bench train --steps 2");
  EXPECT_EQ(none.exit_code, 2) << none.output;

  TempDir dir;
  const auto trace = dir.path() / "trace.json";
  auto r = run_condensa("bench train --config " + source_path("configs/tiny.yaml") +
                        " --steps 1 --warmup 0 --set run.threads=1 --profile " + trace.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(trace)) << r.output;
  std::ifstream in(trace);
  auto t = nlohmann::json::parse(in);
  bool saw_mm = false, saw_adamw = false;
  std::set<std::string> phases;
  for (const auto& e : t["traceEvents"]) {
    const auto name = e.value("name", std::string());
    saw_mm |= name == "aten::mm";
    saw_adamw |= name == "aten::_fused_adamw_";
    if (name.rfind("condensa::", 0) == 0) phases.insert(name);
  }
  EXPECT_TRUE(saw_mm);
  EXPECT_TRUE(saw_adamw);
  // The trainer's phases are named ranges in the trace.
  EXPECT_EQ(phases, (std::set<std::string>{"condensa::forward_backward", "condensa::micro_batch",
                                           "condensa::gradient_sync", "condensa::step_stats",
                                           "condensa::optimizer"}));
}

// `bench pipeline` under mpirun: every schedule trains, and for each the per-rank pass and wait
// times and the measured idle / compute are printed beside the theoretical bubble.
TEST(BenchCli, PipelinePrintsIdleTimePerStageForEachSchedule) {
  TempDir dir;
  auto r =
      run_command(std::string("mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 "
                              "-np 2 ") +
                  CONDENSA_BINARY + " bench pipeline --config " + source_path("configs/tiny.yaml") +
                  " --steps 2 --warmup 1 --set parallel.pipeline_parallel=2"
                  " --set model.num_layers=4 --set train.global_batch_size=8"
                  " --set run.threads=1 --set run.dir=" +
                  (dir.path() / "run").string() + " 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream in(r.output);
  std::string line;
  std::map<std::string, nlohmann::json> by_schedule;
  while (std::getline(in, line)) {
    if (line.rfind("{\"bench\": \"pipeline\"", 0) == 0) {
      auto j = nlohmann::json::parse(line);
      by_schedule[j["schedule"]] = j;
    }
  }
  for (const char* s : {"1f1b", "interleaved", "dualpipe"}) {
    ASSERT_TRUE(by_schedule.count(s)) << s << " missing:\n" << r.output;
    const auto& j = by_schedule[s];
    EXPECT_GT(j["step_ms"].get<double>(), 0) << r.output;
    EXPECT_GE(j["idle_over_compute"].get<double>(), 0) << r.output;
  }
  // p = 2, m = 4: (p - 1) / m, (p - 1) / (2 m), and 0 for dualpipe on 2 ranks.
  EXPECT_NEAR(by_schedule["1f1b"]["theoretical_bubble"].get<double>(), 0.25, 1e-4);
  EXPECT_NEAR(by_schedule["interleaved"]["theoretical_bubble"].get<double>(), 0.125, 1e-4);
  EXPECT_NEAR(by_schedule["dualpipe"]["theoretical_bubble"].get<double>(), 0.0, 1e-4);
  EXPECT_NE(r.output.find("rank 1: passes"), std::string::npos) << r.output;
}

// `bench moe` under mpirun with expert parallel 2: one row per phase of the MoE layer (route,
// the all-to-all dispatch, the experts, the combine), each timed, their shares adding to 100%.
TEST(BenchCli, MoePrintsEachPhaseOfTheLayerOnTwoRanks) {
  const std::string mpirun =
      "mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -np 2 ";
  const std::string cmd = mpirun + CONDENSA_BINARY + " bench moe --config " +
                          source_path("configs/quickstart.yaml") +
                          " --set parallel.expert_parallel=2 --set run.threads=1";
  auto r = run_command(cmd + " --iters 3 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("8 experts top-2, ep 2 (mpi)"), std::string::npos) << r.output;
  std::istringstream in(r.output);
  std::string line;
  std::set<std::string> phases;
  double shares = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string phase;
    double ms = 0, share = 0;
    if (!(fields >> phase >> ms >> share)) continue;
    phases.insert(phase);
    EXPECT_GT(ms, 0) << line;
    shares += share;
  }
  EXPECT_EQ(phases, (std::set<std::string>{"route", "dispatch", "experts", "combine"})) << r.output;
  EXPECT_NEAR(shares, 100.0, 0.5) << r.output;
  auto bad = run_command(cmd + " --iters 0 2>&1");
  EXPECT_NE(bad.exit_code, 0) << bad.output;
  EXPECT_NE(bad.output.find("bench moe: --iters must be > 0, got 0"), std::string::npos)
      << bad.output;
}

TEST(BenchCli, MatmulPrintsEachLayoutAndThePeakIsTheFastest) {
  auto r = run_condensa("bench matmul --dtype fp32 --sizes 64,96 --seconds 0.06 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream in(r.output);
  std::string line;
  int rows = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    long n = 0;
    std::string dtype;
    double nn = 0, nt = 0, tn = 0, peak = 0;
    if (!(fields >> n >> dtype >> nn >> nt >> tn >> peak)) continue;
    ++rows;
    EXPECT_EQ(dtype, "fp32") << line;
    EXPECT_GT(std::min({nn, nt, tn}), 0) << line;
    EXPECT_DOUBLE_EQ(peak, std::max({nn, nt, tn})) << line;
  }
  EXPECT_EQ(rows, 2) << r.output;
#if defined(__x86_64__)
  EXPECT_NE(r.output.find("one core's instruction peak: fp32 FMA ("), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("model.cpu_bf16_products auto: "), std::string::npos) << r.output;
#endif
  auto bad = run_condensa("bench matmul --dtype fp16");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--dtype"), std::string::npos) << bad.output;
}
