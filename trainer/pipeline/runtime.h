// Pipeline runtime: what a rank holds under a schedule, and the loop that runs its program
// (trainer/pipeline/schedule.h) with the passes the trainer supplies.
//
// Key design choice: the runtime decides nothing. The order of passes and messages is the
// program, proven deadlock-free and order-matched by check_program; the runtime receives each
// pass's input, calls the pass, and posts its output. Activations and gradients travel on
// their own communicators over the pipeline ranks (three lanes each, see message_lane), fp32,
// shaped [micro_batch, seq_len, hidden].
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "model/transformer.h"
#include "parallel/communicator.h"
#include "trainer/pipeline/partition.h"
#include "trainer/pipeline/schedule.h"

namespace condensa::trainer::pipeline {

// The global stage of each local chunk of `rank`: [s] (1f1b), [r, p + r, ...] (interleaved),
// [r, p - 1 - r] (dualpipe: down, then up).
std::vector<int> stages_of_rank(const ScheduleOptions& o, int rank);

// What `rank` holds: the layers of its stages, the embedding when it holds stage 0 (or, with
// MTP, the last stage: the MTP modules embed the shifted tokens), the head with the last stage.
model::ModelPart model_part(const ScheduleOptions& o,
                            const std::vector<StageLayers>& stages,
                            int rank,
                            int64_t mtp_depth);

// The passes of one step, supplied by the trainer.
struct Passes {
  // Forward of (micro_batch, stage) on its input x (undefined on stage 0, which reads the
  // batch); returns the activation for the next stage (undefined from the last stage).
  std::function<torch::Tensor(const Action&, const torch::Tensor& x)> forward;
  // Backward of (micro_batch, stage) from the gradient of its output (undefined on the last
  // stage, which starts from its loss); returns the gradient of its input (undefined on stage 0).
  std::function<torch::Tensor(const Action&, const torch::Tensor& grad)> backward;
};

// The communicators messages travel on, by message kind (Action::Kind) and lane
// (message_lane): six copies of the pipeline-rank communicator, made by make_channels.
struct Channels {
  std::vector<std::unique_ptr<parallel::Communicator>> owned;
  parallel::Communicator* lane[2][kNumLanes] = {};
  parallel::Communicator& of(const Message& m) const { return *lane[m.kind][message_lane(m)]; }
};
// Collective over `pipeline` (and every rank of its parent that splits it): named
// "pp/activations/from-even" ... "pp/gradients/wrap".
Channels make_channels(parallel::Communicator& pipeline);

// Where one rank's time went in run_program.
struct PassTiming {
  double compute_s = 0;  // inside passes
  double wait_s = 0;     // blocked in receives and in the final wait for posted sends
};

// Runs this rank's program. Receives land in new tensors of `shape` and `options` (float32);
// hand-offs between two chunks of this rank stay local. Returns after every posted send has
// been received.
PassTiming run_program(const std::vector<ProgramStep>& steps,
                       const Passes& passes,
                       const Channels& channels,
                       const std::vector<int64_t>& shape,
                       const torch::TensorOptions& options);

}  // namespace condensa::trainer::pipeline
