#include "trainer/trainer.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "common/matmul_peak.h"
#include "model/init.h"
#include "model/moe/balance.h"
#include "parallel/expert_parallel.h"
#include "trainer/checkpoint/directory.h"
#include "trainer/checkpoint/state.h"
#include "trainer/metrics.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

double training_flops_per_token(const model::ModelConfig& m, int64_t seq_len) {
  const double D = m.hidden_size, H = m.num_heads;
  const double qk = m.qk_head_dim(), v = m.v_head_dim;
  // Attention projections.
  double attn = m.q_lora_rank == 0 ? D * H * qk : D * m.q_lora_rank + m.q_lora_rank * H * qk;
  attn += D * (m.kv_lora_rank + m.qk_rope_head_dim) +
          m.kv_lora_rank * H * (m.qk_nope_head_dim + v) + H * v * D;
  const double dense_mlp = 3.0 * D * m.intermediate_size;
  const double expert = 3.0 * D * m.moe_intermediate_size;
  const double moe = expert * (m.top_k + m.num_shared_experts) + D * m.num_routed_experts;
  const int64_t moe_layers = m.num_layers - m.num_dense_layers;
  double active =
      m.num_layers * attn + m.num_dense_layers * dense_mlp + moe_layers * moe + D * m.vocab_size;
  // MTP modules: eh_proj + one block each (MoE when past the dense layers) + shared head.
  for (int64_t k = 0; k < m.mtp_depth; ++k) {
    active += 2.0 * D * D + attn + (m.is_moe_layer(m.num_layers + k) ? moe : dense_mlp) +
              D * m.vocab_size;
  }
  // Causal attention scores and weighted values: each query sees seq_len / 2 keys on average.
  const double attention_matmuls = (m.num_layers + m.mtp_depth) * H * (qk + v) * seq_len;
  return 6.0 * active + 3.0 * attention_matmuls;
}

namespace {

parallel::MeshOptions mesh_options(const Config& c) {
  parallel::MeshOptions o;
  o.pipeline_parallel = static_cast<int>(c.parallel.pipeline_parallel);
  o.expert_parallel = static_cast<int>(c.parallel.expert_parallel);
  o.ranks_per_node_override = static_cast<int>(c.parallel.ranks_per_node);
  return o;
}

data::SamplerOptions sampler_options(const Config& c) {
  data::SamplerOptions o;
  o.source = c.data.source;
  o.path = c.data.path;
  o.seed = static_cast<uint64_t>(c.run.seed);
  o.seq_len = c.train.seq_len;
  o.global_batch_size = c.train.global_batch_size;
  o.val_fraction = c.data.val_fraction;
  return o;
}

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              targets.reshape({-1}));
}

// RAII: lower-precision autocast for the compute dtype (bf16), a no-op for fp32. It uses the
// device-typed API of LibTorch 2.x; the per-backend calls (set_enabled, set_cpu_enabled) are
// deprecated and warn on every call.
class AutocastGuard {
 public:
  AutocastGuard(const std::string& dtype, torch::Device device)
      : enabled_(dtype == "bf16"), device_type_(device.type()) {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(device_type_, true);
    at::autocast::set_autocast_dtype(device_type_, at::kBFloat16);
  }
  ~AutocastGuard() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(device_type_, false);
    at::autocast::clear_cache();
  }

 private:
  bool enabled_;
  at::DeviceType device_type_;
};

}  // namespace

Trainer::Trainer(const Config& cfg,
                 parallel::Communicator& world,
                 const std::atomic<bool>* stop_flag)
    : cfg_(cfg),
      world_(world),
      mesh_(parallel::Mesh::create(world, mesh_options(cfg))),
      stop_flag_(stop_flag) {
  device_ = world.device();
  parallel::check_same_config(world, config_to_yaml(cfg_));

  // Threads: the node's cores shared by the ranks on it.
  int64_t threads = cfg_.run.threads;
  if (threads == 0) {
    int ranks_here = 0;
    for (int n : mesh_.node_of_world_rank()) ranks_here += (n == mesh_.node());
    threads = std::max<int64_t>(1, std::thread::hardware_concurrency() / std::max(1, ranks_here));
  }
  at::set_num_threads(static_cast<int>(threads));

  // 1. Expert parallelism: each MoE layer gets a dispatcher over the ep group.
  const auto& m = cfg_.model;
  model::DispatcherFactory make_dispatcher;
  if (mesh_.ep_size() > 1) {
    parallel::Communicator* ep = &mesh_.ep();
    const int64_t E = m.num_routed_experts;
    make_dispatcher = [ep, E](int64_t) {
      return std::make_shared<parallel::AllToAllDispatcher>(*ep, E);
    };
  }
  model_ = model::Transformer(m, make_dispatcher);
  // 2. Node-limited routing needs the node of every expert (experts are contiguous per ep rank).
  if (m.max_nodes_per_token > 0) {
    std::vector<int64_t> expert_node(m.num_routed_experts);
    const int64_t per_rank = m.num_routed_experts / mesh_.ep_size();
    for (int64_t e = 0; e < m.num_routed_experts; ++e)
      expert_node[e] = mesh_.node_of_ep_rank(static_cast<int>(e / per_rank));
    for (auto& layer : model_->moe_layers()) layer->gate->routing.expert_node = expert_node;
  }
  // 3. Initialisation keyed by global names: identical for every layout.
  model::init_parameters(*model_, static_cast<uint64_t>(cfg_.run.seed));
  model_->to(device_);

  // 4. Optimizer groups.
  ParamGroupSpec dense{"dense", {}, &mesh_.dp(), nullptr, 1.0 / mesh_.dp_size()};
  ParamGroupSpec expert{"expert", {}, &mesh_.edp(), &mesh_.ep(), 1.0 / mesh_.dp_size()};
  for (auto& item : model_->named_parameters()) {
    (model::is_expert_param(item.key()) ? expert : dense)
        .params.push_back({item.key(), item.value()});
  }
  std::vector<ParamGroupSpec> groups{dense};
  if (!expert.params.empty()) groups.push_back(expert);
  optim_ =
      std::make_unique<Optimizer>(groups, cfg_.optim, static_cast<int>(cfg_.parallel.zero_stage));

  data_ = data::make_data_source(sampler_options(cfg_));
  CONDENSA_CHECK(data_->vocab_size() <= m.vocab_size, ConfigError, "model.vocab_size (",
                 m.vocab_size, ") is smaller than the vocabulary of the data (",
                 data_->vocab_size(), ", tokenizer '", data_->tokenizer_name(), "')");
  flops_per_token_ = training_flops_per_token(m, cfg_.train.seq_len);
  peak_flops_ = measure_matmul_flops(
      cfg_.train.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32, 512, 0.2);
}

bool Trainer::stop_requested() {
  auto flag =
      torch::tensor({(stop_flag_ && stop_flag_->load()) ? int64_t(1) : int64_t(0)}, torch::kInt64);
  flag = world_.to_device(flag);
  world_.all_reduce(flag, parallel::ReduceOp::kMax);
  return world_.to_cpu(flag).item<int64_t>() != 0;
}

Trainer::StepStats Trainer::forward_backward(int64_t step) {
  const int64_t dp = mesh_.dp_size(), mb = cfg_.train.micro_batch_size;
  const int64_t rows = cfg_.train.global_batch_size / dp;
  const int64_t num_micro = rows / mb;
  const int64_t first_row = mesh_.dp_rank() * rows;
  const int64_t depth = cfg_.model.mtp_depth;
  const double mtp_weight =
      (cfg_.model.mtp_loss_weight_until_step < 0 || step <= cfg_.model.mtp_loss_weight_until_step)
          ? cfg_.model.mtp_loss_weight
          : cfg_.model.mtp_loss_weight_after;
  StepStats st;
  model_->train();
  model_->zero_grad();
  for (int64_t micro = 0; micro < num_micro; ++micro) {
    auto batch = data_->batch(data::Split::kTrain, step, first_row + micro * mb, mb);
    auto tokens = batch.tokens.to(device_);
    const int64_t S = tokens.size(1) - 1;
    auto inputs = tokens.narrow(1, 0, S), targets = tokens.narrow(1, 1, S);
    model_->set_token_languages(batch.language.narrow(1, 0, S));
    model::ModelOutput out;
    torch::Tensor loss, ce, mtp;
    {
      AutocastGuard autocast(cfg_.train.dtype, device_);
      model::ForwardOptions fo;
      fo.with_mtp = depth > 0;
      out = model_->forward(inputs, fo);
      ce = cross_entropy(out.logits_BSV, targets);
      mtp = torch::zeros({}, ce.options());
      for (size_t k = 0; k < out.mtp_logits.size(); ++k) {
        const int64_t d = static_cast<int64_t>(k) + 1;  // module k predicts token i + d + 1
        mtp = mtp + cross_entropy(out.mtp_logits[k], tokens.narrow(1, d + 1, S - d));
      }
      if (depth > 0) mtp = mtp * (mtp_weight / depth);
      loss = ce + mtp + out.aux_loss;
    }
    (loss / num_micro).backward();
    st.loss += ce.item<double>() / num_micro;
    st.mtp_loss += mtp.item<double>() / num_micro;
    st.aux_loss += out.aux_loss.item<double>() / num_micro;
  }
  model_->set_token_languages(torch::Tensor());
  return st;
}

void Trainer::update_router_bias(int64_t step, std::vector<torch::Tensor>& loads) {
  // Global expert load of this step: every data-parallel rank routed its own tokens.
  torch::NoGradGuard no_grad;
  loads.clear();
  auto layers = model_->moe_layers();
  if (layers.empty()) return;
  std::vector<torch::Tensor> local;
  for (auto& l : layers) local.push_back(l->stats.tokens_per_expert_E.to(torch::kFloat64));
  auto all = world_.to_device(torch::stack(local));
  mesh_.dp().all_reduce(all, parallel::ReduceOp::kSum);
  all = world_.to_cpu(all);
  const auto& m = cfg_.model;
  const bool update = m.router_bias && m.bias_update_rate > 0 &&
                      (m.bias_update_until_step < 0 || step <= m.bias_update_until_step);
  for (size_t i = 0; i < layers.size(); ++i) {
    auto load = all[i];
    loads.push_back(load);
    if (update)
      model::update_balance_bias(layers[i]->gate->e_score_correction_bias, load,
                                 m.bias_update_rate);
  }
}

double Trainer::validation_loss() {
  torch::NoGradGuard no_grad;
  model_->eval();
  const int64_t dp = mesh_.dp_size(), mb = cfg_.train.micro_batch_size;
  const int64_t rows = cfg_.train.global_batch_size / dp;
  double sum = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < cfg_.train.eval_batches; ++b) {
    for (int64_t first = 0; first < rows; first += mb) {
      auto batch = data_->batch(data::Split::kVal, b, mesh_.dp_rank() * rows + first, mb);
      auto tokens = batch.tokens.to(device_);
      const int64_t S = tokens.size(1) - 1;
      auto out = model_->forward(tokens.narrow(1, 0, S));
      sum += cross_entropy(out.logits_BSV, tokens.narrow(1, 1, S)).item<double>();
      ++count;
    }
  }
  for (auto& l : model_->moe_layers()) l->reset_stats();
  auto t = world_.to_device(torch::tensor({sum / count}, torch::kFloat64));
  mesh_.dp().all_reduce(t, parallel::ReduceOp::kSum);
  return world_.to_cpu(t).item<double>() / dp;
}

std::string Trainer::save(int64_t step) {
  SaveRequest req;
  req.root = (fs::path(cfg_.run.dir) / "checkpoints").string();
  req.step = step;
  req.keep = static_cast<int>(cfg_.checkpoint.keep);
  req.meta = {{"step", step},
              {"optimizer_steps", optim_->step_count()},
              {"tokens_seen", tokens_seen_},
              {"data", data_->fingerprint()},
              {"config", config_to_yaml(cfg_)},
              {"layout",
               {{"world", world_.size()},
                {"dp", mesh_.dp_size()},
                {"ep", mesh_.ep_size()},
                {"pp", mesh_.pp_size()},
                {"zero_stage", cfg_.parallel.zero_stage}}}};
  last_checkpoint_ = save_checkpoint(req, *model_, *optim_, mesh_, world_);
  return last_checkpoint_;
}

int64_t Trainer::resume() {
  const auto& mode = cfg_.checkpoint.resume;
  if (mode == "none") return 0;
  std::string dir;
  if (mode == "auto") {
    std::vector<std::string> warnings;
    auto found =
        find_latest_checkpoint((fs::path(cfg_.run.dir) / "checkpoints").string(), &warnings);
    if (is_logger()) {
      for (auto& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    }
    if (!found) return 0;
    dir = *found;
  } else {
    dir = mode;
    verify_checkpoint(dir);
  }
  // Every rank must resume from the same directory.
  auto dirs = world_.all_gather_string(dir);
  for (size_t r = 1; r < dirs.size(); ++r) {
    CONDENSA_CHECK(dirs[r] == dirs[0], CheckpointError, "rank ", r, " would resume from '", dirs[r],
                   "' but rank 0 from '", dirs[0], "'");
  }
  auto meta = load_checkpoint(dir, *model_, *optim_);
  if (meta.contains("data") && meta["data"] != data_->fingerprint() && is_logger()) {
    std::fprintf(stderr,
                 "warning: the data differs from the checkpoint's (%s vs %s); the loss curve will "
                 "not continue exactly\n",
                 meta["data"].dump().c_str(), data_->fingerprint().dump().c_str());
  }
  tokens_seen_ = meta.value("tokens_seen", int64_t(0));
  last_checkpoint_ = dir;
  const int64_t step = meta.at("step").get<int64_t>();
  if (is_logger())
    std::printf("resumed from %s (step %ld)\n", dir.c_str(), static_cast<long>(step));
  return step;
}

void Trainer::log_step(int64_t step,
                       const StepStats& st,
                       double lr,
                       double grad_norm,
                       double step_s,
                       const std::vector<torch::Tensor>& loads) {
  MetricsRecord rec;
  rec.step = step;
  rec.total_steps = cfg_.train.steps;
  rec.loss = st.loss;
  rec.mtp_loss = st.mtp_loss;
  rec.aux_loss = st.aux_loss;
  rec.lr = lr;
  rec.grad_norm = grad_norm;
  const double tokens = static_cast<double>(cfg_.train.global_batch_size * cfg_.train.seq_len);
  rec.tokens_per_s = tokens / step_s;
  rec.tokens_seen = tokens_seen_;
  rec.mfu = flops_per_token_ * rec.tokens_per_s / (peak_flops_ * world_.size());
  const double avg_step = timed_steps_ > 0 ? train_seconds_ / timed_steps_ : step_s;
  rec.eta_s = avg_step * static_cast<double>(cfg_.train.steps - step);
  auto layers = model_->moe_layers();
  for (size_t i = 0; i < loads.size(); ++i) {
    MoELayerRecord l;
    l.tokens_per_expert = loads[i];
    l.bias = layers[i]->gate->e_score_correction_bias.cpu();
    // Tokens per (language, expert) over the log interval, summed over data parallel.
    const int64_t num_languages = static_cast<int64_t>(data_->language_names().size());
    if (num_languages > 0) {
      auto global = torch::zeros({num_languages, cfg_.model.num_routed_experts}, torch::kInt64);
      const auto& local = layers[i]->stats.tokens_per_expert_language_LE;
      if (local.defined()) {
        const int64_t n = std::min(num_languages, local.size(0));
        global.narrow(0, 0, n).copy_(local.narrow(0, 0, n));
      }
      global = world_.to_device(global);
      mesh_.dp().all_reduce(global, parallel::ReduceOp::kSum);
      l.languages = world_.to_cpu(global);
    }
    rec.moe.push_back(l);
  }
  if (is_logger()) {
    write_metrics_line(metrics_, rec, data_->language_names());
    print_progress_line(rec);
  }
}

TrainSummary Trainer::run() {
  TrainSummary summary;
  const int64_t start = resume();
  if (is_logger()) {
    fs::create_directories(cfg_.run.dir);
    atomic_write_file((fs::path(cfg_.run.dir) / "config.yaml").string(), config_to_yaml(cfg_));
    // The metrics file continues the resumed curve: records after the resumed step are dropped.
    truncate_metrics_after((fs::path(cfg_.run.dir) / "metrics.jsonl").string(), start);
    metrics_.open((fs::path(cfg_.run.dir) / "metrics.jsonl").string(), std::ios::app);
    std::printf(
        "condensa: %s | %s | device %s | %ld threads/rank | peak %.1f GFLOP/s/rank (%s matmul)\n",
        mesh_.describe().c_str(), describe_model(cfg_.model).c_str(), device_.str().c_str(),
        static_cast<long>(at::get_num_threads()), peak_flops_ / 1e9, cfg_.train.dtype.c_str());
    std::printf("run dir %s, steps %ld..%ld, global batch %ld x %ld tokens\n", cfg_.run.dir.c_str(),
                static_cast<long>(start + 1), static_cast<long>(cfg_.train.steps),
                static_cast<long>(cfg_.train.global_batch_size),
                static_cast<long>(cfg_.train.seq_len));
    std::fflush(stdout);
  }
  summary.first_step = start + 1;
  for (auto& l : model_->moe_layers()) l->reset_stats();
  std::vector<torch::Tensor> loads;
  for (int64_t step = start + 1; step <= cfg_.train.steps; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    StepStats st = forward_backward(step);
    optim_->reduce_gradients();
    const double grad_norm = optim_->clip_grad_norm(cfg_.train.grad_clip);
    const double lr = lr_at(cfg_.optim, cfg_.train.steps, step);
    optim_->step(lr);
    update_router_bias(step, loads);
    tokens_seen_ += cfg_.train.global_batch_size * cfg_.train.seq_len;

    // Loss averaged over data-parallel ranks (each saw different rows).
    auto losses =
        world_.to_device(torch::tensor({st.loss, st.mtp_loss, st.aux_loss}, torch::kFloat64));
    mesh_.dp().all_reduce(losses, parallel::ReduceOp::kSum);
    losses = world_.to_cpu(losses) / static_cast<double>(mesh_.dp_size());
    st = {losses[0].item<double>(), losses[1].item<double>(), losses[2].item<double>()};
    CONDENSA_CHECK(std::isfinite(st.loss), Error, "loss is ", st.loss, " at step ", step,
                   ": training diverged (lower optim.lr or check the data)");
    const double step_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step > start + 1) train_seconds_ += step_s, ++timed_steps_;  // the first step warms up
    summary.final_loss = st.loss;
    summary.last_step = step;

    if (step % cfg_.log.every == 0 || step == cfg_.train.steps)
      log_step(step, st, lr, grad_norm, step_s, loads);
    for (auto& l : model_->moe_layers()) {
      if (step % cfg_.log.every == 0)
        l->reset_stats();
      else
        l->stats.tokens_per_expert_E.zero_();
    }
    if (cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0 &&
        step != cfg_.train.steps) {
      const double val = validation_loss();
      if (is_logger()) {
        std::printf("  step %ld validation loss %.4f\n", static_cast<long>(step), val);
        write_eval_line(metrics_, step, val);
      }
    }
    const bool stop_step =
        cfg_.train.stop_at_step > 0 && step >= cfg_.train.stop_at_step && step < cfg_.train.steps;
    const bool stop = stop_requested() || stop_step;
    const bool periodic = cfg_.checkpoint.every > 0 && step % cfg_.checkpoint.every == 0;
    if (periodic || stop || step == cfg_.train.steps) {
      auto dir = save(step);
      summary.checkpoint = dir;
      if (is_logger()) std::printf("  saved checkpoint %s\n", dir.c_str());
    }
    if (stop) {
      summary.interrupted = true;
      if (is_logger()) {
        std::printf("stopped %s after step %ld; checkpoint %s\n",
                    stop_step ? "at train.stop_at_step" : "by signal", static_cast<long>(step),
                    summary.checkpoint.c_str());
      }
      return summary;
    }
  }
  if (summary.last_step >= summary.first_step || start == cfg_.train.steps) {
    summary.final_val_loss = validation_loss();
    if (is_logger()) {
      write_eval_line(metrics_, cfg_.train.steps, summary.final_val_loss);
      const double avg = timed_steps_ > 0 ? train_seconds_ / timed_steps_ : 0;
      const double tps = avg > 0 ? cfg_.train.global_batch_size * cfg_.train.seq_len / avg : 0;
      std::printf(
          "done: steps %ld..%ld, final loss %.4f, validation loss %.4f, %.0f tokens/s, MFU "
          "%.2f%%\n",
          static_cast<long>(summary.first_step), static_cast<long>(summary.last_step),
          summary.final_loss, summary.final_val_loss, tps,
          100.0 * flops_per_token_ * tps / (peak_flops_ * world_.size()));
      std::printf("checkpoint: %s\nmetrics:    %s\n", last_checkpoint_.c_str(),
                  (fs::path(cfg_.run.dir) / "metrics.jsonl").string().c_str());
    }
  }
  summary.checkpoint = last_checkpoint_;
  return summary;
}

}  // namespace condensa::trainer
