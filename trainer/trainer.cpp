#include "trainer/trainer.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <tuple>

#include "common/durable_file.h"
#include "common/error.h"
#include "common/matmul_peak.h"
#include "model/accounting.h"
#include "model/autocast.h"
#include "model/cpu_fused.h"
#include "model/moe/experts.h"
#include "model/transformer.h"
#include "trainer/checkpoint/directory.h"
#include "trainer/checkpoint/resume_rules.h"
#include "trainer/checkpoint/run_lock.h"
#include "trainer/checkpoint/state.h"
#include "trainer/metrics.h"
#include "trainer/optim/lr_schedule.h"
#include "trainer/parallelize.h"
#include "trainer/report.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

namespace {

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

}  // namespace

Trainer::Trainer(const Config& cfg,
                 parallel::Communicator& world,
                 const std::atomic<bool>* stop_flag)
    : cfg_(cfg), world_(world), mesh_(build_mesh(cfg, world)), stop_flag_(stop_flag) {
  device_ = world.device();
  parallel::check_same_config(world, config_to_yaml(cfg_));
  // The construction steps of trainer/parallelize.h, in their order.
  set_threads_per_rank(cfg_, mesh_);
  if (mesh_.pp_size() > 1) {
    const model::ModelPart part = setup_pipeline();
    model_ = build_model(cfg_, mesh_, device_, &part);
  } else {
    model_ = build_model(cfg_, mesh_, device_);
  }
  optim_ = std::make_unique<Optimizer>(
      optimizer_groups(*model_, mesh_, pipe_ ? &pipe_->groups : nullptr), cfg_.optim,
      static_cast<int>(cfg_.parallel.zero_stage));
  if (pipe_) optim_->set_norm_across_stages(&mesh_.pp());

  const auto& m = cfg_.model;
  data_ = data::make_data_source(sampler_options(cfg_));
  CONDENSA_CHECK(data_->vocab_size() <= m.vocab_size, ConfigError, "model.vocab_size (",
                 m.vocab_size, ") is smaller than the vocabulary of the data (",
                 data_->vocab_size(), ", tokenizer '", data_->tokenizer_name(), "')");
  // Routing reports per language: the trainer bins each layer's assignments by the batch's
  // language ids (the model knows nothing of languages).
  model::keep_routing_assignments(*model_, !data_->language_names().empty());
  flops_per_token_ = model::training_flops_per_token(m, cfg_.train.seq_len);
  // MFU's peak: the matmul rate of the device the model runs on, in the compute dtype.
  peak_flops_ =
      measure_matmul_flops(cfg_.train.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32,
                           device_.is_cpu() ? 512 : 8192, device_.is_cpu() ? 0.2 : 0.5, device_);
  if (cfg_.train.dtype == "bf16" && device_.is_cpu()) {
    const double fp32 = measure_matmul_flops(torch::kFloat32, 512, 0.2, device_);
    if (model::cpu_bf16_products_widened()) {
      // bf16 products run as fp32 GEMMs on the widened operands (model.cpu_bf16_products).
      peak_flops_ = std::max(peak_flops_, fp32);
    } else if (fp32 > peak_flops_ && world_.rank() == 0) {
      std::fprintf(stderr,
                   "warning: train.dtype bf16 on this CPU: bf16 matmul %.1f GFLOP/s against fp32 "
                   "%.1f GFLOP/s; model.cpu_bf16_products is native: set it to auto or widened "
                   "to run bf16 products as fp32 GEMMs\n",
                   peak_flops_ / 1e9, fp32 / 1e9);
    }
  }
}

void Trainer::reset_routing_stats(bool log_interval) {
  model::reset_routing_stats(*model_);  // the per-step expert load
  if (log_interval) language_counts_.clear();
}

bool Trainer::stop_requested() {
  auto flag =
      torch::tensor({(stop_flag_ && stop_flag_->load()) ? int64_t(1) : int64_t(0)}, torch::kInt64);
  flag = world_.to_device(flag);
  world_.all_reduce(flag, parallel::ReduceOp::kMax);
  return world_.to_cpu(flag).item<int64_t>() != 0;
}

torch::Tensor Trainer::forward_backward(int64_t step) {
  if (pipe_) return forward_backward_pipeline(step);
  const int64_t dp = mesh_.dp_size(), mb = cfg_.train.micro_batch_size;
  const int64_t rows = cfg_.train.global_batch_size / dp;
  const int64_t num_micro = rows / mb;
  const int64_t first_row = mesh_.dp_rank() * rows;
  const int64_t depth = cfg_.model.mtp_depth;
  // Loss sums stay on the device: read once per step, after the data-parallel reduction.
  auto sums = torch::zeros({3}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
  model_->train();
  optim_->zero_grad();
  for (int64_t micro = 0; micro < num_micro; ++micro) {
    RECORD_USER_SCOPE("condensa::micro_batch");
    auto batch = data_->batch(data::Split::kTrain, step, first_row + micro * mb, mb);
    // To a GPU: from pinned host memory, without waiting for the copy.
    auto tokens = device_.is_cpu() ? batch.tokens
                                   : batch.tokens.pin_memory().to(device_, /*non_blocking=*/true);
    const int64_t S = tokens.size(1) - 1;
    auto inputs = tokens.narrow(1, 0, S);
    model::ModelOutput out;
    torch::Tensor loss, ce, mtp;
    {
      model::AutocastScope autocast(model::autocast_for(cfg_.train.dtype, device_));
      model::ForwardOptions fo;
      fo.with_mtp = depth > 0;
      out = model_->forward(inputs, fo);
      std::tie(ce, mtp) = head_losses(out, tokens, step);
      loss = ce + mtp + out.aux_loss;
    }
    count_routing_by_language(batch.language.narrow(1, 0, S));
    {
      model::WeightGradsInPlaceScope in_place;  // the experts' weight gradients straight into .grad
      (loss / num_micro).backward();
    }
    sums.add_(torch::stack({ce.detach(), mtp.detach(), out.aux_loss.detach()})
                  .to(torch::kFloat64)
                  .div_(static_cast<double>(num_micro)));
  }
  return sums;
}

std::pair<torch::Tensor, torch::Tensor> Trainer::head_losses(const model::ModelOutput& out,
                                                             const torch::Tensor& tokens,
                                                             int64_t step) const {
  const auto& m = cfg_.model;
  if (m.mtp_depth == 0) return model::head_losses(out, tokens, 1.0);
  const double weight = (m.mtp_loss_weight_until_step < 0 || step <= m.mtp_loss_weight_until_step)
                            ? m.mtp_loss_weight
                            : m.mtp_loss_weight_after;
  return model::head_losses(out, tokens, weight / m.mtp_depth);
}

void Trainer::count_routing_by_language(const torch::Tensor& language_BS) {
  const auto num_languages = static_cast<int64_t>(data_->language_names().size());
  if (num_languages == 0) return;
  auto assignments = model::routing_assignments(*model_);
  language_counts_.resize(assignments.size());
  for (size_t i = 0; i < assignments.size(); ++i) {
    const auto& idx_TK = assignments[i];
    // MTP blocks route shorter, shifted windows: only layers that saw the batch's tokens count.
    if (!idx_TK.defined() || idx_TK.size(0) != language_BS.numel()) continue;
    auto counts_LE = count_tokens_by_language(idx_TK, language_BS.reshape({-1}).to(idx_TK.device()),
                                              num_languages, cfg_.model.num_routed_experts);
    auto& acc = language_counts_[i];
    acc = acc.defined() ? acc + counts_LE : counts_LE;
  }
}

void Trainer::update_router_bias(int64_t step, std::vector<torch::Tensor>& loads) {
  // Global expert load of this step: every data-parallel rank routed its own tokens.
  torch::NoGradGuard no_grad;
  loads.clear();
  if (model_->moe_layers().empty() && !pipe_) return;
  // Dualpipe: the two ranks that hold a stage routed different micro-batches through it.
  auto& comm = pipe_ && pipe_->mirror_dp ? *pipe_->mirror_dp : mesh_.dp();
  auto all = world_.to_device(model::expert_load(*model_).to(torch::kFloat64));
  if (comm.size() > 1) comm.all_reduce(all, parallel::ReduceOp::kSum);
  all = world_.to_cpu(all);
  const auto& m = cfg_.model;
  const bool update = m.router_bias && m.bias_update_rate > 0 &&
                      (m.bias_update_until_step < 0 || step <= m.bias_update_until_step);
  if (update) model::apply_bias_update(*model_, all, m.bias_update_rate);
  all = global_moe_rows(all);  // every stage's layers, for metrics
  for (int64_t i = 0; i < all.size(0); ++i) loads.push_back(all[i]);
}

double Trainer::validation_loss() {
  if (pipe_) return validation_loss_pipeline();
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
      sum += model::token_cross_entropy(out.logits_BSV, tokens.narrow(1, 1, S)).item<double>();
      ++count;
    }
  }
  reset_routing_stats(/*log_interval=*/true);
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
  const bool owner = !pipe_ || pipe_->owner;
  req.write_dense = mesh_.dp_rank() == 0 && owner;
  req.write_experts = mesh_.edp_rank() == 0 && owner;
  if (pipe_ && pipe_->embedding_copy) req.skip_prefix = "embed_tokens.";
  last_checkpoint_ = save_checkpoint(req, *model_, *optim_, world_);
  return last_checkpoint_;
}

void Trainer::throw_if_rank0_failed(const std::string& error, bool config_error) {
  const std::string verdict = world_.all_gather_string(error).at(0);
  if (verdict.empty()) return;
  if (config_error) throw ConfigError(verdict);
  throw Error(verdict);
}

void Trainer::start_fresh() {
  const fs::path run_dir(cfg_.run.dir);
  std::string error;
  if (is_logger()) {
    const auto checkpoints = list_checkpoint_dirs((run_dir / "checkpoints").string());
    const fs::path metrics = run_dir / "metrics.jsonl";
    std::error_code ec;
    const bool has_metrics = fs::file_size(metrics, ec) > 0 && !ec;
    std::string found;
    if (!checkpoints.empty()) {
      found = str(checkpoints.size(), " checkpoint(s), newest ",
                  fs::path(checkpoints.back()).filename().string());
    }
    if (has_metrics) found += str(found.empty() ? "" : " and ", "metrics.jsonl");
    if (!found.empty() && !cfg_.run.overwrite) {
      error = str("run.dir ", cfg_.run.dir, " already holds a run (", found,
                  ") and checkpoint.resume is none: continue it with checkpoint.resume=auto, use "
                  "a new run.dir, or set run.overwrite=true to delete that run");
    } else if (!found.empty()) {
      fs::remove_all(run_dir / "checkpoints");
      fs::remove(metrics);
      for (const auto& e : fs::directory_iterator(run_dir)) {
        const std::string name = e.path().filename().string();
        if (name.rfind("config.step_", 0) == 0) fs::remove(e.path());
      }
      std::printf("run.overwrite: deleted the previous run in %s (%s)\n", cfg_.run.dir.c_str(),
                  found.c_str());
    }
  }
  throw_if_rank0_failed(error, /*config_error=*/true);
}

void Trainer::check_resumed_config(const nlohmann::json& meta, const std::string& dir) {
  const int64_t step = meta.at("step").get<int64_t>();
  const bool allow = cfg_.checkpoint.allow_config_change;
  Config saved;
  try {
    saved = parse_config_text(meta.at("config").get<std::string>(), {}, dir + "/meta.json");
  } catch (const std::exception& e) {
    CONDENSA_CHECK(allow, CheckpointError, "cannot compare with the config stored in ", dir,
                   "/meta.json (", e.what(),
                   "); set checkpoint.allow_config_change=true to resume "
                   "without comparing");
    if (is_logger())
      std::fprintf(stderr, "warning: resuming without comparing configs: %s\n", e.what());
    return;
  }
  for (const auto& note : check_resume_config(saved, cfg_, step, dir)) {
    if (is_logger()) std::printf("note: config changed since the checkpoint: %s\n", note.c_str());
  }
}

int64_t Trainer::resume() {
  const auto& mode = cfg_.checkpoint.resume;
  if (cfg_.run.overwrite && mode != "none" && is_logger()) {
    std::fprintf(stderr, "warning: run.overwrite has no effect unless checkpoint.resume is none\n");
  }
  if (mode == "none") {
    start_fresh();
    return 0;
  }
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
  check_resumed_config(read_checkpoint_meta(dir), dir);
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
  auto biases = global_moe_rows(model::balance_biases(*model_).cpu().to(torch::kFloat32));
  const int64_t num_languages = static_cast<int64_t>(data_->language_names().size());
  // Tokens per (language, expert) of each MoE layer over the log interval, summed over data
  // parallel (and gathered from every stage).
  std::vector<torch::Tensor> languages;
  if (num_languages > 0) {
    const int64_t local = static_cast<int64_t>(model_->moe_layers().size());
    auto all = torch::zeros({local, num_languages, cfg_.model.num_routed_experts}, torch::kInt64);
    for (int64_t i = 0; i < local; ++i) {
      if (i < static_cast<int64_t>(language_counts_.size()) && language_counts_[i].defined())
        all[i].copy_(language_counts_[i]);
    }
    auto& comm = pipe_ && pipe_->mirror_dp ? *pipe_->mirror_dp : mesh_.dp();
    all = world_.to_device(all);
    comm.all_reduce(all, parallel::ReduceOp::kSum);
    all = global_moe_rows(world_.to_cpu(all));
    for (int64_t i = 0; i < all.size(0); ++i) languages.push_back(all[i]);
  }
  for (size_t i = 0; i < loads.size(); ++i) {
    MoELayerRecord l;
    l.tokens_per_expert = loads[i];
    l.bias = biases[i];
    // Tokens per (language, expert) over the log interval, summed over data parallel.
    if (num_languages > 0) l.languages = languages[i];
    rec.moe.push_back(l);
  }
  if (is_logger()) {
    write_metrics_line(metrics_, rec, data_->language_names());
    if (tensorboard_) tensorboard_->write_step(rec);
    print_progress_line(rec);
  }
}

Trainer::StepResult Trainer::train_step(int64_t step, std::vector<torch::Tensor>& loads) {
  // The phases are named ranges in a `bench train --profile` trace.
  StepResult r;
  torch::Tensor sums;
  {
    RECORD_USER_SCOPE("condensa::forward_backward");
    sums = forward_backward(step);
  }
  {
    RECORD_USER_SCOPE("condensa::gradient_sync");
    sync_embedding_gradient();
    optim_->reduce_gradients();
    r.grad_norm = optim_->clip_grad_norm(cfg_.train.grad_clip);
  }
  r.lr = lr_at(cfg_.optim, cfg_.train.steps, step);
  {
    RECORD_USER_SCOPE("condensa::step_stats");
    r.applied = reduce_step_stats(sums, r.grad_norm, &r.stats);
  }
  if (r.applied) {
    RECORD_USER_SCOPE("condensa::optimizer");
    consecutive_skips_ = 0;
    optim_->step(r.lr);
    update_router_bias(step, loads);
    tokens_seen_ += cfg_.train.global_batch_size * cfg_.train.seq_len;
  }
  return r;
}

BenchResult Trainer::benchmark(int64_t warmup, int64_t steps) {
  CONDENSA_CHECK(warmup >= 0 && steps > 0, ConfigError, "bench train: --warmup (", warmup,
                 ") must be >= 0 and --steps (", steps, ") > 0");
  BenchResult b;
  std::vector<torch::Tensor> loads;
  std::vector<double> times, compute, wait;
  for (int64_t step = 1; step <= warmup + steps; ++step) {
    world_.barrier();
    auto t0 = std::chrono::steady_clock::now();
    const StepResult r = train_step(step, loads);  // ends with a host read: the step is done
    reset_routing_stats(/*log_interval=*/true);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto t = world_.to_device(torch::tensor({seconds}, torch::kFloat64));
    world_.all_reduce(t, parallel::ReduceOp::kMax);  // the slowest rank
    if (step > warmup) times.push_back(world_.to_cpu(t).item<double>());
    if (step > warmup && pipe_) {
      compute.push_back(pipe_->timing.compute_s);
      wait.push_back(pipe_->timing.wait_s);
    }
    b.final_loss = r.stats.loss;
  }
  if (pipe_) {
    // Per stage (this data-parallel column of the pipeline): median compute and wait.
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    auto mine = world_.to_device(torch::tensor({median(compute), median(wait)}, torch::kFloat64));
    auto all = world_.to_device(torch::zeros({2 * mesh_.pp_size()}, torch::kFloat64));
    mesh_.pp().all_gather(mine, all);
    all = world_.to_cpu(all);
    for (int s = 0; s < mesh_.pp_size(); ++s) {
      b.stage_compute_s.push_back(all[2 * s].item<double>());
      b.stage_wait_s.push_back(all[2 * s + 1].item<double>());
    }
  }
  std::sort(times.begin(), times.end());
  b.steps = steps;
  b.median_step_s = times[times.size() / 2];
  b.min_step_s = times.front();
  b.max_step_s = times.back();
  b.tokens_per_step = cfg_.train.global_batch_size * cfg_.train.seq_len;
  b.tokens_per_s = b.tokens_per_step / b.median_step_s;
  b.flops_per_token = flops_per_token_;
  b.peak_flops_per_rank = peak_flops_;
  b.mfu = flops_per_token_ * b.tokens_per_s / (peak_flops_ * world_.size());
  return b;
}

bool Trainer::reduce_step_stats(const torch::Tensor& sums, double grad_norm, StepStats* st) {
  // NOTE: each rank adds 1 to the last entry when its losses or the global gradient norm are
  // not finite; a sum of small integers is exact in any reduction order, so every rank takes
  // the same decision.
  // Built on the device: the step's one read of the loss sums is the to_cpu below.
  auto bad = (~torch::isfinite(sums)).any().to(torch::kFloat64).reshape({1});
  if (!std::isfinite(grad_norm)) bad.fill_(1.0);
  auto t = torch::cat({sums, bad});
  // Pipeline: each stage holds the losses it computed (the last stage the loss, every stage
  // its MoE layers' auxiliary loss).
  if (mesh_.pp_size() > 1) mesh_.pp().all_reduce(t, parallel::ReduceOp::kSum);
  if (mesh_.dp_size() > 1) mesh_.dp().all_reduce(t, parallel::ReduceOp::kSum);
  t = world_.to_cpu(t);
  // Loss averaged over data-parallel ranks (each saw different rows).
  const double dp = static_cast<double>(mesh_.dp_size());
  auto v = t.accessor<double, 1>();
  *st = {v[0] / dp, v[1] / dp, v[2] / dp};
  return v[3] == 0;
}

void Trainer::skip_step(int64_t step, const StepStats& st, double grad_norm) {
  ++consecutive_skips_;
  const std::string what = str("loss ", st.loss, ", grad_norm ", grad_norm);
  if (is_logger()) {
    std::printf(
        "  step %ld skipped (not applied): non-finite %s; %ld in a row, "
        "train.max_skipped_steps %ld\n",
        static_cast<long>(step), what.c_str(), static_cast<long>(consecutive_skips_),
        static_cast<long>(cfg_.train.max_skipped_steps));
    nlohmann::json rec = {{"step", step},
                          {"skipped", true},
                          {"reason", "non-finite " + what},
                          {"consecutive_skips", consecutive_skips_}};
    metrics_ << rec.dump() << "\n" << std::flush;
  }
  CONDENSA_CHECK(consecutive_skips_ <= cfg_.train.max_skipped_steps, Error,
                 "training diverged: ", consecutive_skips_,
                 " steps in a row had a non-finite loss or gradient norm (step ", step, ": ", what,
                 "), more than train.max_skipped_steps (", cfg_.train.max_skipped_steps,
                 "); none of them was applied; lower optim.lr or check the data",
                 last_checkpoint_.empty() ? "" : "; last checkpoint " + last_checkpoint_);
}

TrainSummary Trainer::run() {
  TrainSummary summary;
  // One run per run.dir: rank 0 holds the lock until run() returns.
  std::unique_ptr<RunDirLock> lock;
  std::string lock_error;
  if (is_logger()) {
    try {
      lock = std::make_unique<RunDirLock>(cfg_.run.dir);
      if (!lock->stale_holder().empty()) {
        std::printf("note: taking over %s from a run that did not exit cleanly (%s)\n",
                    lock->path().c_str(), lock->stale_holder().c_str());
      }
    } catch (const std::exception& e) {
      lock_error = e.what();
    }
  }
  throw_if_rank0_failed(lock_error, /*config_error=*/false);
  const int64_t start = resume();
  summary.first_step = start + 1;
  summary.last_step = start;
  summary.checkpoint = last_checkpoint_;
  if (start == cfg_.train.steps) {
    if (is_logger()) {
      std::printf(
          "run already complete: %s is at train.steps (%ld); nothing to train (raise "
          "train.steps to continue it)\n",
          last_checkpoint_.c_str(), static_cast<long>(start));
    }
    return summary;
  }
  if (on_phase_) on_phase_(Phase::kSteps);
  if (is_logger()) {
    fs::create_directories(cfg_.run.dir);
    atomic_write_file((fs::path(cfg_.run.dir) / "config.yaml").string(), config_to_yaml(cfg_));
    // Every run segment keeps the config it ran with, next to the checkpoints it made.
    atomic_write_file((fs::path(cfg_.run.dir) / segment_config_name(start)).string(),
                      config_to_yaml(cfg_));
    // The metrics file continues the resumed curve: records after the resumed step are dropped.
    truncate_metrics_after((fs::path(cfg_.run.dir) / "metrics.jsonl").string(), start);
    metrics_.open((fs::path(cfg_.run.dir) / "metrics.jsonl").string(), std::ios::app);
    if (cfg_.log.tensorboard) {
      tensorboard_ = std::make_unique<TensorBoardLog>((fs::path(cfg_.run.dir) / "tb").string(),
                                                      cfg_.model, start + 1);
    }
    atomic_write_file((fs::path(cfg_.run.dir) / "layout.json").string(),
                      layout_json(mesh_, cfg_, device_.str()).dump(2) + "\n");
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
  reset_routing_stats(/*log_interval=*/true);
  std::vector<torch::Tensor> loads;
  for (int64_t step = start + 1; step <= cfg_.train.steps; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    const StepResult r = train_step(step, loads);
    const StepStats& st = r.stats;
    const double grad_norm = r.grad_norm, lr = r.lr;
    const bool apply = r.applied;
    if (!apply) skip_step(step, st, grad_norm);
    const double step_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step > start + 1) train_seconds_ += step_s, ++timed_steps_;  // the first step warms up
    if (apply) summary.final_loss = st.loss;
    summary.last_step = step;

    if (apply && (step % cfg_.log.every == 0 || step == cfg_.train.steps))
      log_step(step, st, lr, grad_norm, step_s, loads);
    reset_routing_stats(/*log_interval=*/step % cfg_.log.every == 0);
    if (cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0 &&
        step != cfg_.train.steps) {
      const double val = validation_loss();
      if (is_logger()) {
        std::printf("  step %ld validation loss %.4f\n", static_cast<long>(step), val);
        write_eval_line(metrics_, step, val);
        if (tensorboard_) tensorboard_->write_eval(step, val);
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
  if (summary.last_step >= summary.first_step) {
    if (on_phase_) on_phase_(Phase::kFinalValidation);
    summary.final_val_loss = validation_loss();
    if (is_logger()) {
      write_eval_line(metrics_, cfg_.train.steps, summary.final_val_loss);
      if (tensorboard_) tensorboard_->write_eval(cfg_.train.steps, summary.final_val_loss);
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
