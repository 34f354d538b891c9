// Pipeline-parallel schedules as data: for each pipeline rank, the ordered list of forward and
// backward passes it runs in one optimizer step, plus an event simulator that checks a schedule
// (every pass once, on the rank that owns its stage, no deadlock) and measures its bubble.
//
// Key design choice: a schedule is a plain value (`[rank] -> actions`) built by pure functions
// and checked by the same simulator the tests and docs use, so the runtime only executes it;
// it never decides an order. This module uses the C++17 standard library and common/error.h
// only (no torch); trainer/pipeline/runtime.h runs its programs.
//
// Vocabulary: p = pipeline ranks (parallel.pipeline_parallel), m = micro-batches per optimizer
// step (train.global_batch_size / (data_parallel x train.micro_batch_size)), v = model chunks
// per rank (parallel.virtual_stages, interleaved only). A *stage* is a global position in the
// pipeline; a *chunk* is a rank-local index of the stages that rank holds.
//
// Schedules:
//  * 1f1b: stage s on rank s (one chunk). Rank r runs min(p - r - 1, m) warm-up forwards, then
//    alternates one forward and one backward, then drains the remaining backwards.
//    Needs m >= p. Bubble (p - 1) / m of the ideal compute time; rank r holds at most p - r
//    micro-batches' activations.
//  * interleaved: Megatron-LM's interleaved 1F1B. Rank r holds chunks c = 0..v-1 implementing
//    stage c * p + r. Micro-batches go through a rank in groups of p per chunk; rank r runs
//    min(v * m, 2 (p - r - 1) + (v - 1) p) warm-up forwards, then 1F1B over (micro-batch,
//    chunk) units, backward chunks in reverse order. Needs m % p == 0 and v >= 2. Bubble
//    (p - 1) / (v m); rank r holds at most min(v m, 2 (p - r - 1) + (v - 1) p + 1) chunk
//    activations (each 1/v of a 1f1b stage's).
//  * dualpipe: the bidirectional schedule of DeepSeek's DualPipe. The model has p stages and
//    every rank r holds two of them: local chunk 0 is stage r of the *down* direction and local
//    chunk 1 is stage p - 1 - r of the *up* direction (a second copy of that stage's weights).
//    Micro-batches 0..m/2-1 enter at rank 0 and flow down (stage s on rank s); micro-batches
//    m/2..m-1 enter at rank p - 1 and flow up (stage s on rank p - 1 - s). The order is
//    DualPipe's eight-step order (deepseek-ai/DualPipe, dualpipe.py): warm-up forwards of the
//    near direction, forward pairs of both directions, the steady state "F0 B1 F1 B0" in
//    which each forward is paired with a backward of the other direction
//    (`paired_with_next`), then the cool-down. Needs p even and m even with m >= 2 p.
//    Each rank holds at most p + 1 micro-batches' stage activations (both chunks together).
//    Built: the F/B order, the two directions, the pairing marks, the one unpaired F0/B1 of
//    the middle ranks' first steady step. Not built: DualPipe's split backward. Here a
//    backward computes input and weight gradients together; DualPipe splits some backwards
//    into an input-gradient pass and a deferred weight-gradient pass (W) that fills bubbles
//    (its steps 3, 6, 7, 8). The W passes are simply absent, and a pair runs its forward and
//    backward one after the other in the simulator (the overlap only hides communication).
//    (DualPipe's phase 0 is the direction in whose first half the rank sits: down on ranks
//    < p/2, up on the others.) Bubble, as the simulator measures it (the tests hold it for
//    p = 2..12 and several m): every rank idles (p - 2) t_b - t_f when t_b >= 2 t_f and
//    (p - 2) t_f when t_b <= t_f (none for p = 2), whatever m; with t_b = 2 t_f the bubble is
//    (2 p - 5) / (3 m), against 1f1b's 3 (p - 1) / (3 m). W passes would cut it further.
#pragma once

#include <string>
#include <vector>

namespace condensa::trainer::pipeline {

enum class ScheduleKind { k1F1B, kInterleaved, kDualPipe };

// "1f1b" | "interleaved" | "dualpipe"; anything else is a ConfigError naming
// parallel.pipeline_schedule and the value.
ScheduleKind parse_schedule_kind(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int num_ranks = 1;          // p: parallel.pipeline_parallel
  int num_micro_batches = 1;  // m: micro-batches per optimizer step
  int virtual_stages = 1;     // v: model chunks per rank; read by interleaved only (the config
                              // layer warns when it is set for another schedule)
};

// One pass of one micro-batch through one model chunk.
struct Action {
  enum Kind { kForward, kBackward };
  Kind kind = kForward;
  int micro_batch = 0;
  int chunk = 0;  // local chunk index on this rank
  int stage = 0;  // global pipeline stage the chunk implements (in its direction, for dualpipe)
  // dualpipe: this forward and the next action (a backward of the other direction) form one
  // F&B pair whose communication and compute the runtime overlaps.
  bool paired_with_next = false;
};

using Schedule = std::vector<std::vector<Action>>;  // [rank] -> actions in execution order

// Throws ConfigError naming parallel.pipeline_parallel, parallel.virtual_stages or the
// micro-batch count with the offending values and the requirement.
void validate(const ScheduleOptions& o);

// validate(o), then the per-rank order described at the top of this file.
Schedule build_schedule(const ScheduleOptions& o);

// Stages a micro-batch passes through: p (1f1b), p * v (interleaved), p (dualpipe, in each
// direction).
int num_stages(const ScheduleOptions& o);

// Chunks each rank holds: 1, v, or 2 (dualpipe).
int num_chunks(const ScheduleOptions& o);

// Where (micro_batch, stage) runs. Only dualpipe depends on the micro-batch (its direction).
struct StageLocation {
  int rank = 0;
  int chunk = 0;
};
StageLocation locate_stage(const ScheduleOptions& o, int micro_batch, int stage);

// The pipeline ranks an action receives its input from and sends its output to (activations
// for a forward, activation gradients for a backward); kNoPeer where the input is the batch
// (first stage's forward) or the loss (last stage's backward), or where nothing is sent.
// A peer may be this rank itself (interleaved with p = 1): a local hand-off.
constexpr int kNoPeer = -1;
struct Peers {
  int recv_from = kNoPeer;
  int send_to = kNoPeer;
};
Peers peers(const ScheduleOptions& o, const Action& a);

// Idle time over ideal compute time with t_b = 2 t_f and no communication: (p - 1) / m for
// 1f1b, (p - 1) / (v m) for interleaved and, for the dualpipe order built here,
// ((p - 2) t_b - t_f) / (m (t_f + t_b)) = (2 p - 5) / (3 m) for p >= 4, 0 for p = 2.
double theoretical_bubble(const ScheduleOptions& o);

struct SimResult {
  std::vector<double> busy_s;       // [rank] compute time
  std::vector<double> idle_s;       // [rank] makespan - busy time
  double makespan = 0;              // end of the last action (all ranks start at 0)
  double bubble_fraction = 0;       // sum of idle / sum of busy over ranks
  std::vector<int> peak_in_flight;  // [rank] most forwards done whose backward is not
};

// Runs every rank's list in order: an action starts when its rank is free and its input is
// done (forward (mb, s) needs forward (mb, s - 1); backward (mb, s) needs its own forward and
// backward (mb, s + 1)). Forwards take t_forward, backwards t_backward; communication is free.
// Throws std::logic_error if an action is on the wrong rank or chunk, appears twice or is
// missing, or if no rank can progress (naming each blocked rank, its next action and what it
// waits for).
SimResult simulate(const ScheduleOptions& o,
                   const Schedule& schedule,
                   double t_forward,
                   double t_backward);

// ---------------------------------------------------------------------------------------------
// Execution program: the schedule with its communication made explicit, what the runtime runs.
//
// A message is the activation leaving (micro_batch, stage) in a forward, or the gradient leaving
// (micro_batch, stage) toward stage - 1 in a backward. A rank posts each send as soon as its
// pass is done and goes on (Communicator::post_send), blocks only to receive a pass's input
// just before the pass, and waits for its posted sends at the end of the step. Activations and
// gradients travel on two communicators (channels); on each, messages between two ranks match
// in posting order, with no tags, so check_program proves that each ordered pair of ranks posts
// each kind's sends and receives in the same order, and that the program runs to the end. A
// hand-off between two chunks of one rank (interleaved with p = 1) is local: no message.
struct Message {
  Action::Kind kind = Action::kForward;
  int micro_batch = 0;
  int stage = 0;  // the sending pass's stage
  int from = 0, to = 0;
  bool operator==(const Message& o) const {
    return kind == o.kind && micro_batch == o.micro_batch && stage == o.stage && from == o.from &&
           to == o.to;
  }
};

// The transport lane of a message: messages between neighbouring ranks travel on lane 0 when
// they leave an even rank and lane 1 when they leave an odd one; the wrap-around between the
// last and the first rank (interleaved, p >= 3) on lane 2. Each lane of each kind is its own
// communicator, on which a rank only sends or only receives: so a transport that runs one
// communicator's operations in order on one stream (NCCL) never queues a receive behind a send.
constexpr int kNumLanes = 3;
int message_lane(const Message& m);

struct ProgramStep {
  enum Kind { kRecv, kPass, kSend };
  Kind kind = kPass;
  Action action;    // kPass
  Message message;  // kRecv, kSend
};

using Program = std::vector<std::vector<ProgramStep>>;  // [rank] -> steps in order

Program build_program(const ScheduleOptions& o, const Schedule& schedule);

// Throws std::logic_error unless every ordered pair of ranks posts each kind's messages in the
// same order on both sides, each rank only sends or only receives on each (kind, lane), and the
// program runs to the end (a receive returns once its message has been posted; a send never
// blocks), naming the messages or the blocked ranks.
void check_program(const ScheduleOptions& o, const Program& program);

// Forwards only, for validation: every micro-batch through every stage, in (micro-batch, stage)
// order on each rank, placed as in training (dualpipe: the second half of the micro-batches
// goes up). Needs no minimum micro-batch count.
Schedule build_forward_only(const ScheduleOptions& o);

// One line per rank, time on x (simulated with t_b = 2 t_f): a forward is "F<mb>" one time unit
// wide, a backward "B<mb>" then "-" fill, two units wide; idle is '.'. Odd local chunks are
// lower case (f, b): interleaved chunk 1, dualpipe's up direction.
std::string render_ascii(const ScheduleOptions& o, const Schedule& schedule);

}  // namespace condensa::trainer::pipeline
