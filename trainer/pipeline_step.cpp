// The trainer's pipeline-parallel step (parallel.pipeline_parallel > 1): set-up of the
// schedule, partition, communicators and optimizer groups, the forward and backward passes a
// stage runs, the embedding's gradient between the first and last stage, validation through
// the stages, and the MoE-layer rows gathered for metrics. See docs/parallel.md.
#include <algorithm>
#include <map>

#include "common/error.h"
#include "model/autocast.h"
#include "model/moe/experts.h"
#include "trainer/trainer.h"

namespace condensa::trainer {

model::ModelPart Trainer::setup_pipeline() {
  pipe_ = std::make_unique<PipelineState>();
  auto& P = *pipe_;
  const int p = mesh_.pp_size(), r = mesh_.pp_rank();
  P.schedule = pipeline_schedule_options(cfg_, world_.size());
  P.stages = pipeline::partition_layers(cfg_.model, pipeline::num_stages(P.schedule),
                                        cfg_.parallel.pipeline_layer_counts());
  const auto program = pipeline::build_program(P.schedule, pipeline::build_schedule(P.schedule));
  pipeline::check_program(P.schedule, program);  // cheap; a broken program must never run
  P.program = program[r];
  // Collective over world, in this order on every rank.
  P.channels = pipeline::make_channels(mesh_.pp());
  const bool dualpipe = P.schedule.kind == pipeline::ScheduleKind::kDualPipe;
  const bool copy = !dualpipe && cfg_.model.mtp_depth > 0;  // the last stage embeds too
  const bool holds_copy = copy && (r == 0 || r == p - 1);
  P.embedding = world_.split(holds_copy ? mesh_.dp_rank() : -1, r);
  if (P.embedding) P.embedding->set_name("pp/embedding");
  const int pair = std::min(r, p - 1 - r);
  P.mirror_dp = world_.split(dualpipe ? pair : -1, world_.rank());
  P.mirror_edp =
      world_.split(dualpipe ? pair * mesh_.ep_size() + mesh_.ep_rank() : -1, world_.rank());
  if (dualpipe) {
    P.mirror_dp->set_name("dp+mirror");
    P.mirror_edp->set_name("edp+mirror");
    P.owner = r < p / 2;
    P.groups.dense = P.mirror_dp.get();
    P.groups.expert = P.mirror_edp.get();
    P.groups.norm_weight = P.owner ? 1.0 : 0.0;
  }
  P.embedding_copy = holds_copy && r == p - 1;
  P.groups.embedding_group = holds_copy;
  P.groups.embedding_owner = !P.embedding_copy;

  auto part = pipeline::model_part(P.schedule, P.stages, r, cfg_.model.mtp_depth);
  const auto& m = cfg_.model;
  for (int64_t l : part.layers) {
    if (m.is_moe_layer(l)) P.moe_rows.push_back(l - m.num_dense_layers);
  }
  P.num_moe_rows = m.num_layers - m.num_dense_layers + m.mtp_depth;
  if (part.head) {
    for (int64_t k = 0; k < m.mtp_depth; ++k)
      P.moe_rows.push_back(m.num_layers - m.num_dense_layers + k);
  }
  if (is_logger()) {
    std::printf("pipeline: %s schedule, %d ranks x %d micro-batches%s, bubble %.3f (ideal)\n%s\n",
                pipeline::schedule_kind_name(P.schedule.kind), p, P.schedule.num_micro_batches,
                P.schedule.kind == pipeline::ScheduleKind::kInterleaved
                    ? str(" x ", P.schedule.virtual_stages, " chunks").c_str()
                    : "",
                pipeline::theoretical_bubble(P.schedule),
                pipeline::describe_partition(P.stages).c_str());
  }
  return part;
}

torch::Tensor Trainer::global_moe_rows(const torch::Tensor& local) {
  if (!pipe_) return local;
  auto sizes = local.sizes().vec();
  sizes[0] = pipe_->num_moe_rows;
  auto out = torch::zeros(sizes, local.options().device(torch::kCPU));
  if (pipe_->owner && local.size(0) > 0) {
    auto index = torch::tensor(pipe_->moe_rows, torch::kInt64);
    out.index_copy_(0, index, local.cpu());
  }
  out = world_.to_device(out);
  mesh_.pp().all_reduce(out, parallel::ReduceOp::kSum);
  return world_.to_cpu(out);
}

void Trainer::sync_embedding_gradient() {
  if (!pipe_ || !pipe_->embedding) return;
  torch::NoGradGuard no_grad;
  auto& w = model_->embed_tokens->weight;
  CONDENSA_CHECK(w.grad().defined() && w.grad().is_contiguous(), Error,
                 "pipeline: the embedding has no contiguous gradient to synchronise");
  auto g = w.mutable_grad();
  pipe_->embedding->all_reduce(g, parallel::ReduceOp::kSum);
}

torch::Tensor Trainer::forward_backward_pipeline(int64_t step) {
  auto& P = *pipe_;
  const int64_t dp = mesh_.dp_size(), mb = cfg_.train.micro_batch_size;
  const int64_t rows = cfg_.train.global_batch_size / dp;
  const int64_t num_micro = rows / mb;
  const int64_t first_row = mesh_.dp_rank() * rows;
  const int64_t depth = cfg_.model.mtp_depth;
  const bool languages = !data_->language_names().empty();
  auto sums = torch::zeros({3}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
  model_->train();
  optim_->zero_grad();

  std::map<int, data::Batch> batches;
  auto batch_of = [&](int micro) -> const data::Batch& {
    auto it = batches.find(micro);
    if (it == batches.end()) {
      auto b = data_->batch(data::Split::kTrain, step, first_row + micro * mb, mb);
      b.tokens = b.tokens.to(device_);
      it = batches.emplace(micro, std::move(b)).first;
    }
    return it->second;
  };
  struct Saved {
    torch::Tensor x, h, aux, loss;
  };
  std::map<std::pair<int, int>, Saved> saved;  // (micro-batch, stage)
  const int last = pipeline::num_stages(P.schedule) - 1;

  pipeline::Passes passes;
  passes.forward = [&](const pipeline::Action& a, const torch::Tensor& input) {
    const auto& st = P.stages.at(a.stage);
    const auto& batch = batch_of(a.micro_batch);
    const auto& tokens = batch.tokens;
    const int64_t S = tokens.size(1) - 1;
    auto inputs = tokens.narrow(1, 0, S);
    if (languages) {  // only the layers of this pass leave assignments to count
      model::keep_routing_assignments(*model_, false);
      model::keep_routing_assignments(*model_, true);
    }
    Saved s;
    torch::Tensor out;
    {
      model::AutocastScope autocast(model::autocast_for(cfg_.train.dtype, device_));
      s.x = a.stage == 0 ? model_->embed(inputs) : input.requires_grad_(true);
      s.h = model_->run_layers(s.x, st.first_layer, st.num_layers, &s.aux);
      if (a.stage == last) {
        auto o = model_->head_forward(s.h, depth > 0 ? model_->embed(inputs) : torch::Tensor(),
                                      depth > 0);
        auto [ce, mtp] = head_losses(o, tokens, step);
        auto aux = s.aux.defined() ? s.aux + o.aux_loss : o.aux_loss;
        s.loss = (ce + mtp + aux) / num_micro;
        sums.add_(torch::stack({ce.detach(), mtp.detach(), aux.detach()})
                      .to(torch::kFloat64)
                      .div_(static_cast<double>(num_micro)));
      } else {
        if (s.aux.defined()) {
          s.aux = s.aux / num_micro;
          sums[2].add_(s.aux.detach().to(torch::kFloat64));
        }
        out = s.h.detach();
      }
    }
    if (languages) count_routing_by_language(batch.language.narrow(1, 0, S));
    saved[{a.micro_batch, a.stage}] = std::move(s);
    return out;
  };
  passes.backward = [&](const pipeline::Action& a, const torch::Tensor& grad) {
    auto it = saved.find({a.micro_batch, a.stage});
    CONDENSA_CHECK(it != saved.end(), Error, "pipeline: backward of micro-batch ", a.micro_batch,
                   " stage ", a.stage, " before its forward");
    Saved s = std::move(it->second);
    saved.erase(it);
    model::WeightGradsInPlaceScope in_place;  // the experts' weight gradients straight into .grad
    if (s.loss.defined()) {
      s.loss.backward();
    } else {
      std::vector<torch::Tensor> outputs{s.h}, grads{grad};
      if (s.aux.defined() && s.aux.requires_grad()) {
        outputs.push_back(s.aux);
        grads.push_back(torch::ones_like(s.aux));
      }
      torch::autograd::backward(outputs, grads);
    }
    return a.stage == 0 ? torch::Tensor() : s.x.grad();
  };
  const int64_t S = cfg_.train.seq_len;
  P.timing = pipeline::run_program(P.program, passes, P.channels, {mb, S, cfg_.model.hidden_size},
                                   torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  CONDENSA_CHECK(saved.empty(), Error, "pipeline: ", saved.size(),
                 " forward pass(es) of this step had no backward");
  return sums;
}

double Trainer::validation_loss_pipeline() {
  auto& P = *pipe_;
  torch::NoGradGuard no_grad;
  model_->eval();
  const int64_t dp = mesh_.dp_size(), mb = cfg_.train.micro_batch_size;
  const int64_t rows = cfg_.train.global_batch_size / dp;
  const int64_t per_batch = rows / mb;
  pipeline::ScheduleOptions o = P.schedule;
  o.num_micro_batches = static_cast<int>(cfg_.train.eval_batches * per_batch);
  const auto program = pipeline::build_program(o, pipeline::build_forward_only(o));
  const int last = pipeline::num_stages(o) - 1;
  double sum = 0;
  pipeline::Passes passes;
  passes.forward = [&](const pipeline::Action& a, const torch::Tensor& input) {
    const auto& st = P.stages.at(a.stage);
    const int64_t b = a.micro_batch / per_batch, first = (a.micro_batch % per_batch) * mb;
    auto tokens =
        data_->batch(data::Split::kVal, b, mesh_.dp_rank() * rows + first, mb).tokens.to(device_);
    const int64_t S = tokens.size(1) - 1;
    auto x = a.stage == 0 ? model_->embed(tokens.narrow(1, 0, S)) : input;
    torch::Tensor aux;
    auto h = model_->run_layers(x, st.first_layer, st.num_layers, &aux);
    if (a.stage != last) return h;
    auto out = model_->head_forward(h, torch::Tensor(), false);
    sum += model::token_cross_entropy(out.logits_BSV, tokens.narrow(1, 1, S)).item<double>();
    return torch::Tensor();
  };
  pipeline::run_program(program[mesh_.pp_rank()], passes, P.channels,
                        {mb, cfg_.train.seq_len, cfg_.model.hidden_size},
                        torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  reset_routing_stats(/*log_interval=*/true);
  auto t = world_.to_device(torch::tensor({sum}, torch::kFloat64));
  mesh_.pp().all_reduce(t, parallel::ReduceOp::kSum);
  mesh_.dp().all_reduce(t, parallel::ReduceOp::kSum);
  return world_.to_cpu(t).item<double>() / (static_cast<double>(o.num_micro_batches) * dp);
}

}  // namespace condensa::trainer
