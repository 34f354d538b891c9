#include <torch/csrc/autograd/profiler_kineto.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <sstream>

#include "common/args.h"
#include "common/error.h"
#include "common/matmul_peak.h"
#include "model/cpu_fused.h"
#include "model/init.h"
#include "model/moe/layer.h"
#include "parallel/bench_alltoall.h"
#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/world.h"
#include "trainer/parallelize.h"
#include "trainer/trainer.h"

namespace condensa::trainer {

namespace {

const char* kBenchHelp = R"(usage: condensa bench <matmul|alltoall|moe|train|pipeline> [options]

  matmul    [--dtype fp32|bf16|all] [--sizes 256,512,1024,2048] [--seconds S] [--threads N]
            GFLOP/s of square matmuls in the three operand layouts (A*B, A*B^T, A^T*B); the
            fastest is the peak the trainer's MFU is measured against. Then one core's
            vector-instruction peak (fp32 FMA; bf16 dot product where the CPU has AVX512-BF16),
            which no kernel beats, and what model.cpu_bf16_products: auto chooses here.
  alltoall  [--min-bytes B] [--max-bytes B] [--iters N] [--warmup N] [--dtype fp32|bf16]
            nccl-tests style table (run under mpirun; verifies every element it moves).
  train     --config X.yaml [--set k=v ...] [--steps N] [--warmup N] [--profile TRACE.json]
            trains N steps (default 10) after N warm-up steps (default 3) from the initial
            weights, writing nothing: median tokens/s, step time and MFU against the matmul
            peak of the device in train.dtype (run under mpirun for several ranks).
            --profile: then profiles 2 more steps into a Chrome trace.
  pipeline  --config X.yaml [--set k=v ...] [--steps N] [--warmup N]
            [--schedules 1f1b,interleaved,dualpipe]
            bench train for each schedule (interleaved with 2 virtual stages) under mpirun with
            parallel.pipeline_parallel > 1: per stage, the time in passes and the time waiting
            for other stages, and the measured idle / compute beside the schedule's
            theoretical bubble (t_b = 2 t_f, free communication).
  moe       --config X.yaml [--set k=v ...] [--iters N]
            times route, dispatch, experts and combine of one MoE layer separately (run under
            mpirun with parallel.expert_parallel > 1 to measure the all-to-all).
)";

std::vector<int64_t> parse_sizes(const std::string& s) {
  std::vector<int64_t> out;
  std::string bad;
  CONDENSA_CHECK(parse_int_list(s, &out, &bad), ConfigError,
                 "--sizes: expected comma-separated integers, got '", s, "'");
  return out;
}

torch::ScalarType parse_dtype(const std::string& s, const char* flag) {
  if (s == "fp32") return torch::kFloat32;
  if (s == "bf16") return torch::kBFloat16;
  throw ConfigError(str(flag, ": expected fp32 or bf16, got '", s, "'"));
}

int bench_matmul(const ParsedArgs& a) {
  const std::string which = a.get("--dtype", "all");
  std::vector<std::string> dtypes =
      which == "all" ? std::vector<std::string>{"fp32", "bf16"} : std::vector<std::string>{which};
  for (auto& d : dtypes) parse_dtype(d, "--dtype");
  auto sizes = parse_sizes(a.get("--sizes", "256,512,1024,2048"));
  const double seconds = a.get_double("--seconds", 1.0);
  if (a.has("--threads")) at::set_num_threads(static_cast<int>(a.get_int("--threads", 1)));
  std::printf("matmul on %d threads (n x n times n x n, %.1f s each)\n", at::get_num_threads(),
              seconds);
  std::printf("%8s %6s %10s %10s %10s %10s  (GFLOP/s)\n", "n", "dtype", "A*B", "A*B^T", "A^T*B",
              "peak");
  for (auto& d : dtypes) {
    for (auto n : sizes) {
      const MatmulRates r = measure_matmul_layouts(parse_dtype(d, "--dtype"), n, seconds);
      std::printf("%8ld %6s %10.1f %10.1f %10.1f %10.1f\n", static_cast<long>(n), d.c_str(),
                  r.nn / 1e9, r.nt / 1e9, r.tn / 1e9, r.best() / 1e9);
      std::fflush(stdout);
    }
  }
  // What bounds the table: one core's vector-instruction peak (no kernel beats it).
  const InstructionPeak ip = measure_instruction_peak(std::min(seconds, 1.0));
  if (ip.fp32_fma > 0) {
    std::printf("one core's instruction peak: fp32 FMA (%s) %.1f GFLOP/s", ip.fp32_isa,
                ip.fp32_fma / 1e9);
    if (ip.bf16_dot > 0) {
      std::printf(", bf16 dot product (AVX512-BF16) %.1f GFLOP/s = %.2fx fp32", ip.bf16_dot / 1e9,
                  ip.bf16_dot / ip.fp32_fma);
    } else {
      std::printf(", bf16 dot product: no AVX512-BF16 on this CPU");
    }
    // auto widens unless the CPU has AMX-BF16 (model/cpu_fused.h).
    std::printf(
        "; model.cpu_bf16_products auto: %s\n",
        model::cpu_bf16_products_widened(model::CpuBf16Products::kAuto) ? "widened" : "native");
  }
  CONDENSA_CHECK(ip.fp32_exact && ip.bf16_exact, Error,
                 "bench matmul: an instruction-peak loop did not compute its own count (fp32 ",
                 ip.fp32_exact ? "exact" : "wrong", ", bf16 ", ip.bf16_exact ? "exact" : "wrong",
                 "): its rate is not to be trusted");
  return 0;
}

int bench_alltoall(const ParsedArgs& a) {
  ParallelConfig pc;
  World world = make_world(pc);
  parallel::AllToAllBenchOptions o;
  o.min_bytes = a.get_int("--min-bytes", o.min_bytes);
  o.max_bytes = a.get_int("--max-bytes", o.max_bytes);
  o.iters = static_cast<int>(a.get_int("--iters", o.iters));
  o.warmup = static_cast<int>(a.get_int("--warmup", o.warmup));
  o.dtype = parse_dtype(a.get("--dtype", "fp32"), "--dtype");
  return parallel::run_alltoall_bench(world.comm(), o);
}

int bench_moe(const ParsedArgs& a) {
  CONDENSA_CHECK(a.has("--config"), ConfigError, "bench moe needs --config X.yaml");
  Config cfg = load_config(
      a.get("--config"), a.flags.count("--set") ? a.flags.at("--set") : std::vector<std::string>{});
  World world = make_world(cfg.parallel);
  auto& comm = world.comm();
  cfg.validate_for_world(comm.size());
  // The construction steps training uses (trainer/parallelize.h): the same mesh, threads and
  // expert parallelism (all-to-all dispatcher with the expert -> node map).
  auto mesh = build_mesh(cfg, comm);
  set_threads_per_rank(cfg, mesh);
  const auto& m = cfg.model;
  auto make_dispatcher = parallel::apply_expert_parallel(mesh, m.num_routed_experts);
  model::MoELayer layer(m, make_dispatcher(m.num_dense_layers));
  auto& dispatcher = layer->dispatcher;
  model::init_unit_parameters(*layer, m.init_std, static_cast<uint64_t>(cfg.run.seed));
  // Everything lives on the communicator's device (the GPU with nccl).
  const auto device = comm.device();
  layer->to(device);
  const int64_t iters = a.get_int("--iters", 20);
  CONDENSA_CHECK(iters > 0, ConfigError, "bench moe: --iters must be > 0, got ", iters);
  const int64_t T = cfg.train.micro_batch_size * cfg.train.seq_len;
  torch::manual_seed(1000 + comm.rank());
  auto x = torch::randn({T, m.hidden_size}).to(device);
  // Accelerator kernels are asynchronous: a phase ends when its output is computed.
  auto done = [&](const torch::Tensor& t) {
    if (!device.is_cpu() && t.numel() > 0) t.flatten()[0].item<double>();
  };
  double t_route = 0, t_dispatch = 0, t_experts = 0, t_combine = 0;
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a0, auto b0) { return std::chrono::duration<double>(b0 - a0).count(); };
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < iters + 2; ++i) {
    comm.barrier();
    auto t0 = now();
    auto r = layer->gate(x);
    done(r.probs_TK);
    auto t1 = now();
    auto d = dispatcher->dispatch(x, r.topk_idx_TK, r.probs_TK);
    done(d.x_ND);
    auto t2 = now();
    auto y = layer->experts(d.x_ND, d.rows_per_expert);
    done(y);
    auto t3 = now();
    auto out = dispatcher->combine(y, *d.handle);
    done(out);
    auto t4 = now();
    if (i >= 2) {
      t_route += secs(t0, t1), t_dispatch += secs(t1, t2), t_experts += secs(t2, t3),
          t_combine += secs(t3, t4);
    }
  }
  auto times =
      comm.to_device(torch::tensor({t_route, t_dispatch, t_experts, t_combine}, torch::kFloat64) /
                     static_cast<double>(iters));
  comm.all_reduce(times, parallel::ReduceOp::kMax);
  times = comm.to_cpu(times);
  if (comm.rank() == 0) {
    auto v = times.accessor<double, 1>();
    double total = v[0] + v[1] + v[2] + v[3];
    std::printf(
        "MoE layer forward: %ld tokens/rank, d %ld, %ld experts top-%ld, ep %d (%s), max over "
        "ranks\n",
        static_cast<long>(T), static_cast<long>(m.hidden_size),
        static_cast<long>(m.num_routed_experts), static_cast<long>(m.top_k), mesh.ep_size(),
        comm.backend_name().c_str());
    std::printf("%10s %12s %8s\n", "phase", "time (ms)", "share");
    const char* names[] = {"route", "dispatch", "experts", "combine"};
    for (int i = 0; i < 4; ++i)
      std::printf("%10s %12.3f %7.1f%%\n", names[i], v[i] * 1e3, 100 * v[i] / total);
    std::printf(
        "token movement (dispatch + combine; all-to-all when ep > 1): %.1f%% of the layer\n",
        100 * (v[1] + v[3]) / total);
  }
  return 0;
}

int bench_train(const ParsedArgs& a) {
  CONDENSA_CHECK(a.has("--config"), ConfigError, "bench train needs --config X.yaml");
  Config cfg = load_config(
      a.get("--config"), a.flags.count("--set") ? a.flags.at("--set") : std::vector<std::string>{});
  const int64_t steps = a.get_int("--steps", 10), warmup = a.get_int("--warmup", 3);
  CONDENSA_CHECK(steps > 0, ConfigError, "bench train: --steps must be > 0, got ", steps);
  CONDENSA_CHECK(warmup >= 0, ConfigError, "bench train: --warmup must be >= 0, got ", warmup);
  // The learning-rate schedule spans the timed steps (warm-up included), as in a real run.
  cfg.train.steps = warmup + steps;
  World world = make_world(cfg.parallel);
  auto& comm = world.comm();
  cfg.validate_for_world(comm.size());
  Trainer trainer(cfg, comm);
  auto b = trainer.benchmark(warmup, steps);
  if (a.has("--profile")) {
    // Two more steps under LibTorch's profiler (CPU ops; CUDA kernels too on a GPU), saved as
    // a Chrome trace (chrome://tracing, Perfetto); tests/bench/trace_summary.py tabulates it.
    namespace prof = torch::autograd::profiler;
    std::set<torch::profiler::impl::ActivityType> acts = {torch::profiler::impl::ActivityType::CPU};
    if (comm.device().is_cuda()) acts.insert(torch::profiler::impl::ActivityType::CUDA);
    const prof::ProfilerConfig pc(prof::ProfilerState::KINETO, /*report_input_shapes=*/true);
    prof::prepareProfiler(pc, acts);
    prof::enableProfiler(pc, acts);
    trainer.benchmark(0, 2);
    auto result = prof::disableProfiler();
    auto path = a.get("--profile");
    if (comm.size() > 1) path += ".rank" + std::to_string(comm.rank());
    result->save(path);
    if (comm.rank() == 0) std::printf("profile of 2 steps: %s\n", path.c_str());
  }
  if (comm.rank() == 0) {
    const auto& m = cfg.model;
    std::printf(
        "bench train: %s | d%ld, %ld layers, %ld experts top-%ld | batch %ld x %ld | %s | %d "
        "rank(s) x %d thread(s) | device %s\n",
        a.get("--config").c_str(), static_cast<long>(m.hidden_size),
        static_cast<long>(m.num_layers), static_cast<long>(m.num_routed_experts),
        static_cast<long>(m.top_k), static_cast<long>(cfg.train.global_batch_size),
        static_cast<long>(cfg.train.seq_len), cfg.train.dtype.c_str(), comm.size(),
        at::get_num_threads(), comm.device().str().c_str());
    std::printf("%ld timed steps after %ld warm-up: step %.1f ms median (min %.1f, max %.1f)\n",
                static_cast<long>(b.steps), static_cast<long>(warmup), b.median_step_s * 1e3,
                b.min_step_s * 1e3, b.max_step_s * 1e3);
    std::printf(
        "tokens/s %.0f | MFU %.1f%% (%.3g FLOP/token, peak %.1f GFLOP/s per rank) | loss "
        "%.4f\n",
        b.tokens_per_s, 100 * b.mfu, b.flops_per_token, b.peak_flops_per_rank / 1e9, b.final_loss);
    std::printf(
        "{\"bench\": \"train\", \"tokens_per_s\": %.1f, \"step_ms\": %.3f, \"mfu\": %.5f, "
        "\"flops_per_token\": %.6g, \"peak_flops_per_rank\": %.6g, \"ranks\": %d, "
        "\"threads\": %d, \"dtype\": \"%s\"}\n",
        b.tokens_per_s, b.median_step_s * 1e3, b.mfu, b.flops_per_token, b.peak_flops_per_rank,
        comm.size(), at::get_num_threads(), cfg.train.dtype.c_str());
  }
  return 0;
}

int bench_pipeline(const ParsedArgs& a) {
  CONDENSA_CHECK(a.has("--config"), ConfigError, "bench pipeline needs --config X.yaml");
  Config base = load_config(
      a.get("--config"), a.flags.count("--set") ? a.flags.at("--set") : std::vector<std::string>{});
  const int64_t steps = a.get_int("--steps", 5), warmup = a.get_int("--warmup", 2);
  CONDENSA_CHECK(steps > 0 && warmup >= 0, ConfigError, "bench pipeline: --steps (", steps,
                 ") must be > 0 and --warmup (", warmup, ") >= 0");
  World world = make_world(base.parallel);
  auto& comm = world.comm();
  CONDENSA_CHECK(base.parallel.pipeline_parallel > 1, ConfigError,
                 "bench pipeline: parallel.pipeline_parallel is ", base.parallel.pipeline_parallel,
                 "; set it > 1 and run under mpirun");
  const auto names = a.get("--schedules", "1f1b,interleaved,dualpipe");
  std::stringstream list(names);
  std::string name;
  if (comm.rank() == 0) {
    std::printf("bench pipeline: %s | pp %ld | %d rank(s) | %ld timed steps after %ld warm-up\n",
                a.get("--config").c_str(), static_cast<long>(base.parallel.pipeline_parallel),
                comm.size(), static_cast<long>(steps), static_cast<long>(warmup));
  }
  while (std::getline(list, name, ',')) {
    Config cfg = base;
    cfg.parallel.pipeline_schedule = name;
    cfg.parallel.virtual_stages = name == "interleaved" ? 2 : 1;
    cfg.train.steps = warmup + steps;
    cfg.validate();
    cfg.validate_for_world(comm.size());
    const auto o = pipeline_schedule_options(cfg, comm.size());
    Trainer trainer(cfg, comm);
    const auto b = trainer.benchmark(warmup, steps);
    if (comm.rank() != 0) continue;
    double busy = 0, idle = 0;
    std::printf("%-12s step %8.1f ms | tokens/s %8.0f | theoretical bubble %.3f\n", name.c_str(),
                b.median_step_s * 1e3, b.tokens_per_s, pipeline::theoretical_bubble(o));
    for (size_t s = 0; s < b.stage_compute_s.size(); ++s) {
      std::printf("  rank %zu: passes %8.1f ms, waiting %8.1f ms (%.0f%% of its step)\n", s,
                  b.stage_compute_s[s] * 1e3, b.stage_wait_s[s] * 1e3,
                  100 * b.stage_wait_s[s] / (b.stage_compute_s[s] + b.stage_wait_s[s]));
      busy += b.stage_compute_s[s];
      idle += b.stage_wait_s[s];
    }
    std::printf("  measured idle / compute %.3f (theoretical %.3f)\n", idle / busy,
                pipeline::theoretical_bubble(o));
    std::printf(
        "{\"bench\": \"pipeline\", \"schedule\": \"%s\", \"step_ms\": %.3f, "
        "\"idle_over_compute\": %.4f, \"theoretical_bubble\": %.4f}\n",
        name.c_str(), b.median_step_s * 1e3, idle / busy, pipeline::theoretical_bubble(o));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int bench_command(const Args& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kBenchHelp, stdout);
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  auto a = parse_args(rest,
                      {"--dtype", "--sizes", "--seconds", "--threads", "--min-bytes", "--max-bytes",
                       "--iters", "--warmup", "--config", "--steps", "--profile", "--schedules"},
                      {}, {"--set"});
  if (a.help) {
    std::fputs(kBenchHelp, stdout);
    return 0;
  }
  if (args[0] == "matmul") return bench_matmul(a);
  if (args[0] == "alltoall") return bench_alltoall(a);
  if (args[0] == "moe") return bench_moe(a);
  if (args[0] == "train") return bench_train(a);
  if (args[0] == "pipeline") return bench_pipeline(a);
  throw ConfigError(
      str("unknown benchmark '", args[0], "' (matmul, alltoall, moe, train, pipeline)"));
}

}  // namespace condensa::trainer
