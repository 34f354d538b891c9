// `condensa plan CONFIG.yaml`: parameter counts and FLOPs from the config alone (nothing is
// allocated), and the capacity plan of trainer/plan/ (memory, communication, time, cost) for a
// world size and a hardware profile, so a 2,048-GPU layout can be checked on a laptop.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/args.h"
#include "common/error.h"
#include "model/accounting.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/world.h"
#include "trainer/config/config.h"
#include "trainer/plan/plan.h"

namespace condensa::trainer {
namespace {

const char* kPlanHelp =
    R"(usage: condensa plan CONFIG.yaml [--set key=value ...] [--world N] [--json]
                    [--hardware h800|h100|h200|cpu|FILE.yaml] [--schedule 1f1b|interleaved|dualpipe]
                    [--virtual-stages V] [--compare [--pp LIST] [--ep LIST]] [--measure-ranks N]
                    [--expert-load RUN_DIR | --load-imbalance X]

Prints total and activated parameters computed from the config (without allocating), model
FLOPs per token, and for a world of N ranks (default: pipeline_parallel x expert_parallel) on
the given hardware (default h800): memory per rank against the device's memory, communication
bytes per step, time per step, tokens/s per rank, MFU and GPU-hours per trillion tokens.

  --hardware cpu     measures this machine (matmuls at the model's shapes, an elementwise
                     kernel, the all-to-all): run it under `mpirun -np N` with the planned
                     ranks, or give --measure-ranks N for the ranks that will share the cores
  --schedule         pipeline schedule (default parallel.pipeline_schedule); dualpipe
                     overlaps the all-to-all
  --expert-load      prices uneven routing from a run's logged tokens per expert
                     (RUN_DIR/metrics.jsonl): the busiest expert-parallel rank computes and
                     receives more rows while the others wait (default: uniform routing)
  --load-imbalance   the same as one number: busiest rank's expert rows over the mean (>= 1)
  --compare          a table of layouts (--pp and --ep: comma-separated values; default the
                     config's value, half and double) sorted by cost, non-fitting ones marked
The model, its assumptions and sources: docs/plan.md. Counting rules: docs/model.md.
)";

std::string human(double n) {
  char buf[32];
  if (n >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  } else if (n >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", n);
  }
  return buf;
}

constexpr double kGiB = 1024.0 * 1024 * 1024;

std::vector<int64_t> parse_list(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  std::string bad;
  bool ok = parse_int_list(s, &out, &bad);
  for (int64_t v : out) ok = ok && v > 0;
  CONDENSA_CHECK(ok, ConfigError, flag, ": expected comma-separated positive integers, got '", s,
                 "'");
  return out;
}

std::vector<int64_t> around(int64_t v) {
  std::vector<int64_t> out;
  if (v > 1) out.push_back(v / 2);
  out.push_back(v);
  out.push_back(v * 2);
  return out;
}

void print_hardware(const plan::HardwareProfile& h) {
  std::printf(
      "hardware %s: %.4g TFLOP/s peak, matmuls %.0f%%, attention core %.0f%%, %.1f GiB "
      "(%.0f%% usable), memory-bound %.4g GB/s, intra-node %.4g GB/s, inter-node %.4g "
      "GB/s, %ld ranks per node\n",
      h.name.c_str(), h.peak_flops / 1e12, 100 * h.gemm_efficiency, 100 * h.attention_efficiency,
      h.memory_bytes / kGiB, 100 * h.usable_memory, h.memory_bandwidth / 1e9,
      h.intra_node_bandwidth / 1e9, h.inter_node_bandwidth / 1e9,
      static_cast<long>(h.ranks_per_node));
  for (const auto& n : h.notes) std::printf("  - %s\n", n.c_str());
}

void print_plan(const Config& cfg, const plan::Plan& p, const plan::HardwareProfile& h) {
  const auto& mem = p.memory;
  std::printf("memory per rank (stage %ld, the largest): %.2f GiB\n", static_cast<long>(mem.stage),
              mem.total() / kGiB);
  if (p.stage_memory.size() > 1) {
    std::printf("  per stage (GiB):");
    for (size_t s = 0; s < p.stage_memory.size(); ++s)
      std::printf(" %zu: %.2f%s", s, p.stage_memory[s] / kGiB,
                  s + 1 < p.stage_memory.size() ? "," : "\n");
    std::printf(
        "pipeline bubble: %.4f of compute (%s, %ld micro-batches; t_b = 2 t_f, no "
        "communication)\n",
        p.bubble_fraction, plan::schedule_name(p.schedule), static_cast<long>(p.micro_batches));
  }
  std::printf(
      "  bf16 weights %.2f, fp32 master %.2f, fp32 grads %.2f, AdamW state %.2f (ZeRO-%ld)\n",
      mem.weights / kGiB, mem.master / kGiB, mem.grads / kGiB, mem.optimizer / kGiB,
      static_cast<long>(cfg.parallel.zero_stage));
  std::printf("  activations %.2f = %.2f micro-batches in flight (%s) x %.3f GiB (recompute %s)\n",
              mem.activations / kGiB, mem.in_flight, plan::schedule_name(p.schedule),
              mem.activations / std::max(mem.in_flight, 1.0) / kGiB, cfg.model.recompute.c_str());
  std::printf("  verdict: %s (%.2f GiB of %.2f GiB usable)\n", p.fits ? "fits" : "DOES NOT FIT",
              mem.total() / kGiB, h.usable_memory * h.memory_bytes / kGiB);
  const auto& c = p.comm;
  std::printf(
      "communication per rank per step: all-to-all %.3f GB intra-node + %.3f GB "
      "inter-node (one MoE layer, one micro-batch, fwd + bwd: %.2f + %.2f MB), data "
      "parallel %.3f GB, pipeline %.3f GB\n",
      c.a2a_intra / 1e9, c.a2a_inter / 1e9, c.a2a_per_layer_intra / 1e6,
      c.a2a_per_layer_inter / 1e6, c.dp / 1e9, c.pipeline / 1e9);
  const auto& t = p.time;
  std::printf(
      "time per step: %.2f ms per micro-batch (forward %.2f + backward %.2f compute, "
      "uneven routing %.2f, all-to-all %.2f, pipeline %.2f ms; %s) x %ld micro-batches + "
      "bubble %.3f s + data parallel %.3f s + optimizer %.3f s = %.3f s\n",
      1e3 * t.micro_batch, 1e3 * t.forward, 1e3 * t.backward, 1e3 * t.imbalance, 1e3 * t.a2a,
      1e3 * t.pipeline_p2p,
      p.schedule == plan::Schedule::kDualPipe && p.ep > 1 ? "overlapped" : "serial",
      static_cast<long>(p.micro_batches), t.bubble, t.dp_comm, t.optimizer, t.step);
  std::printf(
      "throughput: %.1f tokens/s per rank, MFU %.1f%%, %.0f GPU-hours per trillion "
      "tokens\n",
      p.tokens_per_s_per_rank, 100 * p.mfu, p.gpu_hours_per_trillion);
  std::printf("assumptions:\n");
  for (const auto& a : p.assumptions) std::printf("  - %s\n", a.c_str());
}

void print_comparison(const plan::LayoutComparison& cmp, int64_t world) {
  std::printf("layouts for world %ld, sorted by cost (fitting first):\n", static_cast<long>(world));
  std::printf("%5s %5s %5s %12s %10s %7s %14s %s\n", "pp", "dp", "ep", "memory GiB", "tok/s/rank",
              "MFU", "GPU-h per 1T", "fits");
  for (const auto& p : cmp.plans) {
    std::printf("%5ld %5ld %5ld %12.2f %10.1f %6.1f%% %14.0f %s\n", static_cast<long>(p.pp),
                static_cast<long>(p.dp), static_cast<long>(p.ep), p.memory.total() / kGiB,
                p.tokens_per_s_per_rank, 100 * p.mfu, p.gpu_hours_per_trillion,
                p.fits ? "yes" : "NO (does not fit)");
  }
  for (const auto& s : cmp.skipped) std::printf("  skipped %s\n", s.c_str());
}

}  // namespace

int plan_command(const Args& args) {
  auto a = parse_args(args,
                      {"--world", "--hardware", "--schedule", "--virtual-stages", "--pp", "--ep",
                       "--measure-ranks", "--expert-load", "--load-imbalance"},
                      {"--json", "--compare"}, {"--set"});
  if (a.help) return std::fputs(kPlanHelp, stdout), 0;
  CONDENSA_CHECK(a.positional.size() == 1, ConfigError,
                 "expected exactly one CONFIG.yaml (see condensa plan --help)");
  Config cfg = load_config(a.positional[0], a.flags["--set"]);
  const auto& m = cfg.model;
  const std::string hw_name = a.get("--hardware", "h800");
  // The cpu profile measures this machine; under mpirun every rank measures together.
  World world_comm;
  const bool cpu = hw_name == "cpu";
  if (cpu) world_comm = make_world(ParallelConfig{});
  const bool printer = !cpu || world_comm.comm().rank() == 0;
  const int64_t default_world = cpu && world_comm.comm().size() > 1
                                    ? world_comm.comm().size()
                                    : cfg.parallel.pipeline_parallel * cfg.parallel.expert_parallel;
  const int64_t world = a.get_int("--world", default_world);
  cfg.validate_for_world(world);
  plan::PlanOptions options;
  // The config's schedule unless the flags say otherwise.
  options.schedule = plan::parse_schedule(a.get("--schedule", cfg.parallel.pipeline_schedule));
  if (cfg.parallel.virtual_stages > 1) options.virtual_stages = cfg.parallel.virtual_stages;
  options.virtual_stages = a.get_int("--virtual-stages", options.virtual_stages);
  CONDENSA_CHECK(!(a.has("--expert-load") && a.has("--load-imbalance")), ConfigError,
                 "give --expert-load or --load-imbalance, not both");
  if (a.has("--load-imbalance")) {
    options.load_imbalance = a.get_double("--load-imbalance", 1);
    CONDENSA_CHECK(options.load_imbalance >= 1, ConfigError,
                   "--load-imbalance: expected the busiest rank's rows over the mean, >= 1, got ",
                   a.get("--load-imbalance"));
  }
  if (a.has("--expert-load")) {
    options.expert_loads = plan::read_expert_loads(a.get("--expert-load"), m.num_routed_experts);
  }
  plan::HardwareProfile hw;
  if (cpu) {
    plan::CpuMeasureOptions mo;
    mo.ranks_per_node =
        a.get_int("--measure-ranks", std::max<int64_t>(world_comm.comm().size(), world));
    hw = plan::measure_cpu_profile(cfg, world_comm.comm(), mo);
  } else if (hw_name.size() > 5 && (hw_name.substr(hw_name.size() - 5) == ".yaml" ||
                                    hw_name.substr(hw_name.size() - 4) == ".yml")) {
    hw = plan::load_profile(hw_name);
  } else {
    hw = plan::builtin_profile(hw_name);
  }
  if (!printer) return 0;
  const auto c = model::count_parameters(m);
  const double flops = model::training_flops_per_token(m, cfg.train.seq_len);
  std::printf("model %s\n", a.positional[0].c_str());
  std::printf("  total parameters      %s (%.0f)\n", human(c.total).c_str(), c.total);
  std::printf("  activated per token   %s (%.0f)\n", human(c.active).c_str(), c.active);
  std::printf("  activated w/o embed   %s\n", human(c.active - c.embedding).c_str());
  std::printf("    embedding %s, lm_head %s, attention %s, dense MLP %s\n",
              human(c.embedding).c_str(), human(c.lm_head).c_str(), human(c.attention).c_str(),
              human(c.dense_mlp).c_str());
  std::printf("    routed experts %s, shared experts %s, routers %s, norms %s\n",
              human(c.routed_experts).c_str(), human(c.shared_experts).c_str(),
              human(c.routers).c_str(), human(c.norms).c_str());
  if (m.mtp_depth > 0) {
    std::printf("  MTP modules (extra)   %s total, %s activated (embedding and head shared)\n",
                human(c.mtp_total).c_str(), human(c.mtp_active).c_str());
  }
  std::printf(
      "training FLOPs/token    %.3e (6 x activated matmul params + causal attention, seq %ld)\n",
      flops, static_cast<long>(cfg.train.seq_len));
  const auto p = plan::make_plan(cfg, world, hw, options);
  std::printf(
      "layout: world %ld = pp %ld x dp %ld, ep %ld, ZeRO-%ld, schedule %s, %ld "
      "micro-batches of %ld x %ld tokens per step\n",
      static_cast<long>(world), static_cast<long>(p.pp), static_cast<long>(p.dp),
      static_cast<long>(p.ep), static_cast<long>(cfg.parallel.zero_stage),
      plan::schedule_name(p.schedule), static_cast<long>(p.micro_batches),
      static_cast<long>(cfg.train.micro_batch_size), static_cast<long>(cfg.train.seq_len));
  print_hardware(hw);
  print_plan(cfg, p, hw);
  if (a.has("--compare")) {
    auto pps =
        a.has("--pp") ? parse_list("--pp", a.get("--pp")) : around(cfg.parallel.pipeline_parallel);
    auto eps =
        a.has("--ep") ? parse_list("--ep", a.get("--ep")) : around(cfg.parallel.expert_parallel);
    print_comparison(plan::compare_layouts(cfg, world, hw, options, pps, eps), world);
  }
  if (a.has("--json")) {
    nlohmann::json j = {{"total", c.total},
                        {"active", c.active},
                        {"embedding", c.embedding},
                        {"mtp_total", c.mtp_total},
                        {"flops_per_token", flops},
                        {"bytes_per_rank", p.memory.total()},
                        {"fits", p.fits},
                        {"step_s", p.time.step},
                        {"load_imbalance", p.load_imbalance},
                        {"tokens_per_s_per_rank", p.tokens_per_s_per_rank},
                        {"mfu", p.mfu},
                        {"gpu_hours_per_trillion", p.gpu_hours_per_trillion},
                        {"hardware",
                         {{"name", hw.name},
                          {"peak_flops", hw.peak_flops},
                          {"gemm_efficiency", hw.gemm_efficiency},
                          {"attention_efficiency", hw.attention_efficiency},
                          {"memory_bandwidth", hw.memory_bandwidth},
                          {"intra_node_bandwidth", hw.intra_node_bandwidth},
                          {"dense_layer_s_per_token", hw.dense_layer_s_per_token},
                          {"moe_layer_s_per_token", hw.moe_layer_s_per_token},
                          {"head_s_per_token", hw.head_s_per_token},
                          {"expert_s_per_row", hw.expert_s_per_row},
                          {"in_model_factor", hw.in_model_factor}}}};
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace condensa::trainer
