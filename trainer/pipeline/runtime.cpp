#include "trainer/pipeline/runtime.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>

#include "common/error.h"

namespace condensa::trainer::pipeline {

std::vector<int> stages_of_rank(const ScheduleOptions& o, int rank) {
  const int p = o.num_ranks;
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      return {rank};
    case ScheduleKind::kInterleaved: {
      std::vector<int> out;
      for (int c = 0; c < o.virtual_stages; ++c) out.push_back(c * p + rank);
      return out;
    }
    case ScheduleKind::kDualPipe:
      return {rank, p - 1 - rank};
  }
  return {};
}

model::ModelPart model_part(const ScheduleOptions& o,
                            const std::vector<StageLayers>& stages,
                            int rank,
                            int64_t mtp_depth) {
  model::ModelPart part;
  part.embedding = part.head = false;
  std::vector<int> mine = stages_of_rank(o, rank);
  std::sort(mine.begin(), mine.end());
  mine.erase(std::unique(mine.begin(), mine.end()), mine.end());
  for (int s : mine) {
    const StageLayers& st = stages.at(s);
    for (int64_t l = st.first_layer; l < st.first_layer + st.num_layers; ++l)
      part.layers.push_back(l);
    part.embedding = part.embedding || st.embedding || (st.head && mtp_depth > 0);
    part.head = part.head || st.head;
  }
  return part;
}

Channels make_channels(parallel::Communicator& pipeline) {
  Channels c;
  const char* kinds[2] = {"pp/activations", "pp/gradients"};
  const char* lanes[kNumLanes] = {"from-even", "from-odd", "wrap"};
  for (int k = 0; k < 2; ++k) {
    for (int l = 0; l < kNumLanes; ++l) {
      c.owned.push_back(pipeline.split(0, pipeline.rank()));
      c.owned.back()->set_name(str(kinds[k], "/", lanes[l]));
      c.lane[k][l] = c.owned.back().get();
    }
  }
  return c;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

PassTiming run_program(const std::vector<ProgramStep>& steps,
                       const Passes& passes,
                       const Channels& channels,
                       const std::vector<int64_t>& shape,
                       const torch::TensorOptions& options) {
  PassTiming timing;
  // Outputs handed to another chunk of this rank, keyed by (kind, micro-batch, sending stage).
  std::map<std::tuple<int, int, int>, torch::Tensor> local;
  torch::Tensor received, output;
  for (size_t i = 0; i < steps.size(); ++i) {
    const ProgramStep& step = steps[i];
    const Message& m = step.message;
    auto& channel = channels.of(m);
    if (step.kind == ProgramStep::kRecv) {
      const auto t0 = std::chrono::steady_clock::now();
      received = torch::empty(shape, options);
      channel.recv(received, m.from);
      timing.wait_s += seconds_since(t0);
      continue;
    }
    if (step.kind == ProgramStep::kSend) {
      CONDENSA_CHECK(output.defined(), Error, "pipeline: the pass before the send of micro-batch ",
                     m.micro_batch, " stage ", m.stage, " produced nothing to send");
      channel.post_send(output.to(options.dtype()).contiguous(), m.to);
      output = torch::Tensor();
      continue;
    }
    const Action& a = step.action;
    torch::Tensor input = received;
    received = torch::Tensor();
    if (!input.defined()) {
      const int from = a.kind == Action::kForward ? a.stage - 1 : a.stage + 1;
      auto it = local.find({a.kind, a.micro_batch, from});
      if (it != local.end()) {
        input = it->second;
        local.erase(it);
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    output = a.kind == Action::kForward ? passes.forward(a, input) : passes.backward(a, input);
    timing.compute_s += seconds_since(t0);
    const bool sent_next = i + 1 < steps.size() && steps[i + 1].kind == ProgramStep::kSend;
    if (output.defined() && !sent_next) {
      local[{a.kind, a.micro_batch, a.stage}] = output;
      output = torch::Tensor();
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& c : channels.owned) c->wait_sends();
  timing.wait_s += seconds_since(t0);
  CONDENSA_CHECK(local.empty(), Error, "pipeline: ", local.size(),
                 " local hand-off(s) were never consumed");
  return timing;
}

}  // namespace condensa::trainer::pipeline
