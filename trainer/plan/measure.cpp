// The `cpu` hardware profile, measured: matmuls at the model's own shapes (forward, input- and
// weight-gradient products of every projection, timed like `condensa bench matmul`), the
// unfused attention's batched matmuls, an elementwise kernel at the activation size, and the
// all-to-all at the size of one MoE dispatch (like `condensa bench alltoall`).
#include "trainer/plan/measure.h"

#include <sys/sysinfo.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "common/error.h"
#include "common/matmul_peak.h"
#include "model/accounting.h"
#include "model/autocast.h"
#include "model/cpu_fused.h"
#include "model/init.h"
#include "model/moe/dispatcher.h"
#include "model/moe/experts.h"
#include "model/transformer.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"
#include "trainer/config/schema.h"
#include "trainer/plan/hardware.h"

namespace condensa::trainer::plan {

namespace {

using Clock = std::chrono::steady_clock;

// Seconds per call of fn, timed for about `seconds` after one warm-up call.
template <class Fn>
double time_per_call(Fn&& fn, double seconds) {
  fn();
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double elapsed = 0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < seconds);
  return elapsed / static_cast<double>(calls);
}

// Median of five timings of fn by time_per_call: one unit's timing is steadier than one window.
template <class Fn>
double median_time_per_call(Fn&& fn, double seconds) {
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(time_per_call(fn, seconds / 5));
  std::sort(t.begin(), t.end());
  return t[2];
}

// Seconds of the three products of a [rows, in] x [in, out] projection in training: forward,
// input gradient ([rows, out] x [out, in]) and weight gradient ([in, rows] x [rows, out]).
double projection_seconds(
    int64_t rows, int64_t in, int64_t out, torch::ScalarType dtype, double s) {
  auto x = torch::randn({rows, in}).to(dtype), w = torch::randn({in, out}).to(dtype);
  auto g = torch::randn({rows, out}).to(dtype);
  auto wt = w.t().contiguous(), xt = x.t().contiguous();
  return time_per_call([&] { return torch::matmul(x, w); }, s) +
         time_per_call([&] { return torch::matmul(g, wt); }, s) +
         time_per_call([&] { return torch::matmul(xt, g); }, s);
}

}  // namespace

model::Block timed_block(const model::ModelConfig& m,
                         int64_t layer,
                         const model::DispatcherFactory& dispatcher,
                         uint64_t seed) {
  model::Block block(m, layer, dispatcher);
  model::init_unit_parameters(*block, m.init_std, seed);
  return block;
}

model::GroupedExperts timed_experts(const model::ModelConfig& m, int64_t local, uint64_t seed) {
  model::GroupedExperts experts(local, 0, m.hidden_size, m.moe_intermediate_size);
  model::init_unit_parameters(*experts, m.init_std, seed);
  return experts;
}

double collective_seconds_per_call(parallel::Communicator& comm,
                                   const std::function<void()>& fn,
                                   double seconds) {
  fn();
  auto t0 = Clock::now();
  fn();
  const double once = std::chrono::duration<double>(Clock::now() - t0).count();
  auto calls_t =
      torch::tensor({std::clamp(seconds / std::max(once, 1e-9), 1.0, 1e5)}, torch::kFloat64);
  comm.all_reduce(calls_t, parallel::ReduceOp::kMax);
  const auto calls = static_cast<int64_t>(std::ceil(calls_t.item<double>()));
  comm.barrier();
  t0 = Clock::now();
  for (int64_t i = 0; i < calls; ++i) fn();
  return std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(calls);
}

HardwareProfile measure_cpu_profile(const Config& config,
                                    parallel::Communicator& comm,
                                    const CpuMeasureOptions& options) {
  torch::NoGradGuard no_grad;
  const auto& m = config.model;
  // The dtype the products run in: bf16, or fp32 where bf16 products are widened (cpu_fused.h).
  const bool bf16 = config.train.dtype == "bf16" &&
                    !model::cpu_bf16_products_widened(
                        model::parse_cpu_bf16_products(config.model.cpu_bf16_products));
  const auto dtype = bf16 ? torch::kBFloat16 : torch::kFloat32;
  const double secs = options.seconds_per_shape;
  const int64_t ranks = std::max<int64_t>(1, options.ranks_per_node);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(std::max<int64_t>(1, cores / ranks)));
  torch::manual_seed(7 + comm.rank());

  HardwareProfile h;
  h.name = "cpu";
  h.fused_attention = true;  // model.attention_impl sdpa; explicit sets it false below
  h.ranks_per_node = std::max<int64_t>(ranks, comm.size());
  // NOTE: every rank measures each kernel at the same time (a barrier before each), so the
  // rates include the sharing of cores, caches and memory bandwidth a training step sees.
  // The same peak the trainer's MFU divides by: a 512 x 512 matmul in the compute dtype.
  comm.barrier();
  h.peak_flops = measure_matmul_flops(dtype, 512, std::max(0.2, 4 * secs));

  // Matmul rate at the model's shapes for one micro-batch, FLOP-weighted by how often each
  // product occurs in the model: attention projections per layer, the dense MLPs, the experts
  // (each rank runs num_routed_experts / ep experts of ep x tokens x top_k / num_routed_experts
  // rows) and the LM head.
  const int64_t T = config.train.micro_batch_size * config.train.seq_len;
  const int64_t D = m.hidden_size, H = m.num_heads, I = m.moe_intermediate_size;
  const int64_t ep = config.parallel.expert_parallel, E = m.num_routed_experts;
  const int64_t blocks = m.num_layers + m.mtp_depth;
  int64_t moe_blocks = 0;
  for (int64_t l = 0; l < blocks; ++l) moe_blocks += m.is_moe_layer(l) ? 1 : 0;
  struct Product {
    int64_t rows, in, out;
    double count;  // per rank per micro-batch
  };
  std::vector<Product> products = {
      {T, D, m.kv_lora_rank + m.qk_rope_head_dim, double(blocks)},
      {T, m.kv_lora_rank, H * (m.qk_nope_head_dim + m.v_head_dim), double(blocks)},
      {T, H * m.v_head_dim, D, double(blocks)},
      {T, D, m.vocab_size, double(1 + m.mtp_depth)},
      {T, D, 2 * m.intermediate_size, double(blocks - moe_blocks)},
      {T, m.intermediate_size, D, double(blocks - moe_blocks)},
      {T, D, 2 * I, double(moe_blocks * m.num_shared_experts)},
      {T, I, D, double(moe_blocks * m.num_shared_experts)}};
  if (m.q_lora_rank > 0) {
    products.push_back({T, D, m.q_lora_rank, double(blocks)});
    products.push_back({T, m.q_lora_rank, H * m.qk_head_dim(), double(blocks)});
  } else {
    products.push_back({T, D, H * m.qk_head_dim(), double(blocks)});
  }
  const int64_t expert_rows = std::max<int64_t>(1, ep * T * m.top_k / E);
  products.push_back({expert_rows, D, 2 * I, double(moe_blocks * E / ep)});
  products.push_back({expert_rows, I, D, double(moe_blocks * E / ep)});
  double flops = 0, seconds = 0;
  for (const auto& p : products) {
    if (p.count == 0) continue;
    comm.barrier();
    flops += p.count * 6.0 * p.rows * p.in * p.out;
    seconds += p.count * projection_seconds(p.rows, p.in, p.out, dtype, secs);
  }
  // NOTE: not clamped: the model's shapes may run faster than the 512 x 512 reference.
  h.gemm_efficiency = flops / seconds / h.peak_flops;

  // Attention core, as the model runs it. sdpa: the fused kernel (causal; v padded to the qk
  // head dim on CPU, as model/layers.cpp does), forward and backward timed together against
  // the 3 x causal forward FLOPs the model counts. explicit: the batched score and value
  // products over the full S x S, credited with the causal half; the softmax and masking
  // passes are memory-bound traffic in the plan (fused_attention = false).
  {
    const int64_t B = config.train.micro_batch_size, S = config.train.seq_len;
    const int64_t qk = m.qk_head_dim(), dv = m.v_head_dim;
    const double causal_flops = 2.0 * B * H * S * S * (qk + dv) / 2;
    comm.barrier();
    if (m.attention_impl == "sdpa") {
      torch::AutoGradMode grad(true);
      auto q = torch::randn({B, H, S, qk}).to(dtype).requires_grad_();
      auto k = torch::randn({B, H, S, qk}).to(dtype).requires_grad_();
      auto v = torch::randn({B, H, S, std::max(qk, dv)}).to(dtype).requires_grad_();
      auto g = torch::randn({B, H, S, std::max(qk, dv)}).to(dtype);
      const double t = time_per_call(
          [&] {
            auto out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
            out.backward(g);
          },
          2 * secs);
      h.attention_efficiency = 3 * causal_flops / t / h.peak_flops;
    } else {
      h.fused_attention = false;
      auto q = torch::randn({B * H, S, qk}).to(dtype), k = torch::randn({B * H, qk, S}).to(dtype);
      auto p = torch::randn({B * H, S, S}).to(dtype), v = torch::randn({B * H, S, dv}).to(dtype);
      const double t = time_per_call([&] { return torch::bmm(q, k); }, secs) +
                       time_per_call([&] { return torch::bmm(p, v); }, secs);
      h.attention_efficiency = causal_flops / t / h.peak_flops;
    }
  }

  // Whole units at the micro-batch shape, forward + backward: a dense and a MoE decoder block
  // and the LM head with its loss. They carry what rates alone miss on a CPU: matmuls as a
  // backward pass runs them, the attention kernel, and the many small operators in between
  // (each with its dispatch cost). The MoE block holds every expert with a local dispatcher:
  // a uniform ep-way dispatch gives each rank the same T x top_k expert rows.
  // NOTE: only where a block fits easily: a DeepSeek-V3 MoE block holds 11.3B parameters, which
  // this machine cannot allocate to time; such models are planned from the rates alone (noted).
  const auto counts = model::count_parameters(m);
  const double moe_layers = std::max<int64_t>(1, m.num_layers - m.num_dense_layers);
  const double block_params = counts.attention / m.num_layers +
                              (counts.routed_experts + counts.shared_experts) / moe_layers +
                              counts.dense_mlp / std::max<int64_t>(1, m.num_dense_layers);
  const double unit_bytes = 12.0 * std::max(block_params, counts.lm_head) +
                            16.0 * T * std::max<int64_t>(m.vocab_size, 16 * D);
  struct sysinfo mem_info {};
  sysinfo(&mem_info);
  const double rank_memory = static_cast<double>(mem_info.totalram) * mem_info.mem_unit / ranks;
  if (unit_bytes > rank_memory / 8) {
    h.notes.push_back(str("decoder blocks not timed whole (about ", std::llround(unit_bytes / 1e9),
                          " GB each, more than 1/8 of this rank's memory): layers are timed "
                          "from the rates above"));
  } else {
    torch::AutoGradMode grad(true);
    model::AutocastState ac = model::AutocastState::current();
    if (dtype == torch::kBFloat16) ac.cpu_enabled = true, ac.cpu_dtype = at::kBFloat16;
    model::AutocastScope autocast(ac);
    const int64_t B = config.train.micro_batch_size, S = config.train.seq_len;
    const auto rope = model::make_rope_tables(m);
    model::DispatcherFactory local = [E = m.num_routed_experts](int64_t) {
      return std::make_shared<model::LocalDispatcher>(E);
    };
    // When these ranks are the planned expert-parallel group, the MoE block runs the trainer's
    // all-to-all dispatcher over them: the count exchange, the permutations and the waits at
    // each all-to-all are then in its time (every rank times the same number of calls).
    const bool ep_here = ep > 1 && comm.size() == ep;
    model::DispatcherFactory all_to_all = [&comm, E = m.num_routed_experts](int64_t) {
      return std::make_shared<parallel::AllToAllDispatcher>(comm, E);
    };
    // Seconds per call of fn: the median of five windows, every rank calling it the same number
    // of times when it runs collectives.
    auto timed = [&](const std::function<void()>& fn, bool collective) {
      if (!collective) return median_time_per_call(fn, 30 * secs);
      std::vector<double> t;
      for (int i = 0; i < 5; ++i) t.push_back(collective_seconds_per_call(comm, fn, 6 * secs));
      std::sort(t.begin(), t.end());
      return t[2];
    };
    auto block_s = [&](int64_t layer, bool collective) {
      // The same weights on every rank, as a run starts with.
      auto block = timed_block(m, layer, collective ? all_to_all : local, 1234 + layer);
      auto x = torch::randn({B, S, D}).requires_grad_();
      auto g = torch::randn({B, S, D});
      auto fb = [&] {
        torch::Tensor aux;
        auto y = block->forward(x, rope, nullptr, 0, &aux);
        y.backward(g);
      };
      comm.barrier();
      return timed(fb, collective);
    };
    if (m.num_dense_layers > 0) h.dense_layer_s_per_token = block_s(0, false) / T;
    if (m.num_layers > m.num_dense_layers) {
      h.moe_layer_s_per_token = block_s(m.num_dense_layers, ep_here) / T;
    }
    // This rank's experts alone over its mean rows (T x top_k, spread evenly): the work that
    // grows on the busiest rank when the routing is uneven.
    if (m.num_layers > m.num_dense_layers) {
      const int64_t local = std::max<int64_t>(1, E / ep), rows = T * m.top_k;
      auto experts = timed_experts(m, local, 4321);
      std::vector<int64_t> per_expert(local, rows / local);
      per_expert.back() += rows - rows / local * local;
      auto xe = torch::randn({rows, D}).requires_grad_();
      auto ge = torch::randn({rows, D});
      comm.barrier();
      h.expert_s_per_row =
          median_time_per_call([&] { experts->forward(xe, per_expert).backward(ge); }, 10 * secs) /
          static_cast<double>(rows);
    }
    torch::nn::Linear head(torch::nn::LinearOptions(D, m.vocab_size).bias(false));
    auto x = torch::randn({T, D}).requires_grad_();
    auto target = torch::randint(m.vocab_size, {T});
    comm.barrier();
    h.head_s_per_token = median_time_per_call(
                             [&] {
                               auto logits = head->forward(x).to(torch::kFloat32);
                               torch::nll_loss(torch::log_softmax(logits, -1), target).backward();
                             },
                             10 * secs) /
                         T;
    // The whole model once, as a training micro-batch runs it (forward with the MTP modules,
    // the losses, backward with the expert weight gradients in place): its units run slower
    // inside it than alone, and the embedding, the losses and the autograd engine between
    // blocks add to them. The plan scales the units' times by the ratio.
    const double whole_bytes =
        12.0 * counts.total + (blocks + 1) * 16.0 * T * std::max<int64_t>(m.vocab_size, 16 * D);
    if (whole_bytes > rank_memory / 4) {
      h.notes.push_back(str("the whole model not timed (about ", std::llround(whole_bytes / 1e9),
                            " GB, more than 1/4 of this rank's memory): units at their times "
                            "alone"));
    } else {
      model::Transformer whole(m, ep_here ? all_to_all : local);
      model::init_parameters(*whole, 1234);
      auto tokens = torch::randint(m.vocab_size, {B, S + 1});
      auto inputs = tokens.narrow(1, 0, S);
      model::ForwardOptions fo;
      fo.with_mtp = m.mtp_depth > 0;
      auto fb = [&] {
        auto out = whole->forward(inputs, fo);
        const double mtp_scale = m.mtp_loss_weight / std::max<int64_t>(1, m.mtp_depth);
        auto [ce, mtp] = model::head_losses(out, tokens, mtp_scale);
        model::WeightGradsInPlaceScope in_place;
        (ce + mtp + out.aux_loss).backward();
      };
      comm.barrier();
      const double whole_s = timed(fb, ep_here);
      double units = h.head_s_per_token;
      for (int64_t l = 0; l < blocks; ++l) {
        units += m.is_moe_layer(l) ? h.moe_layer_s_per_token : h.dense_layer_s_per_token;
        if (l >= m.num_layers) units += h.head_s_per_token;  // an MTP module's head
      }
      h.in_model_factor = whole_s / T / units;
    }
    h.notes.push_back(str(
        "decoder blocks and the LM head timed whole (forward + backward) at the "
        "micro-batch shape",
        ep_here ? str(", the MoE block with the all-to-all dispatcher over ", comm.size(), " ranks")
                : std::string(),
        "; the rates above time the rest",
        h.in_model_factor > 0 ? str("; inside the whole model (timed once) they took ",
                                    std::lround(100 * h.in_model_factor), "% of their time alone")
                              : std::string()));
  }

  // Memory-bound kernels: an elementwise add at the size of one activation tensor, as the
  // trainer's ops run it (allocation and dispatch included).
  {
    auto x = torch::randn({T, D}).to(dtype), y = torch::randn({T, D}).to(dtype);
    comm.barrier();
    const double t = time_per_call([&] { return x + y; }, secs);
    h.memory_bandwidth = 3.0 * x.numel() * x.element_size() / t;
  }

  // All-to-all at the size of one MoE dispatch of this rank (tokens x top_k rows of D).
  const int64_t n = comm.size();
  if (n > 1) {
    const int64_t rows = std::max<int64_t>(n, T * m.top_k) / n;
    auto in = torch::randn({rows * n, D}).to(dtype);
    auto out = torch::empty_like(in);
    std::vector<int64_t> counts(n, rows);
    comm.barrier();
    double t = collective_seconds_per_call(
        comm, [&] { comm.all_to_all(in, counts, out, counts); }, 4 * secs);
    auto slowest = torch::tensor({t}, torch::kFloat64);
    comm.all_reduce(slowest, parallel::ReduceOp::kMax);
    t = slowest.item<double>();
    // Bytes to other ranks per second (nccl-tests' busbw).
    h.intra_node_bandwidth = in.numel() * in.element_size() * (n - 1.0) / n / t;
    h.notes.push_back(
        str("all-to-all measured over ", n, " ranks at ", rows * n * D, " elements per rank"));
  } else {
    // One process: a copy into and out of the shared-memory transport (two passes of a copy).
    auto big = torch::randn({1 << 22}).to(dtype);
    auto dst = torch::empty_like(big);
    const double t = time_per_call([&] { dst.copy_(big); }, secs);
    h.intra_node_bandwidth = big.numel() * big.element_size() / t / 2;
    h.notes.push_back(
        "all-to-all estimated as half the copy bandwidth (one process; run "
        "`plan` under mpirun with the planned ranks to measure it)");
  }
  h.inter_node_bandwidth = h.intra_node_bandwidth;
  struct sysinfo info {};
  sysinfo(&info);
  h.memory_bytes = static_cast<double>(info.totalram) * info.mem_unit / ranks;
  h.notes.push_back(str("measured on this machine: ", at::get_num_threads(), " threads per rank, ",
                        ranks, " ranks per node, ", config.train.dtype));
  return h;
}

}  // namespace condensa::trainer::plan
