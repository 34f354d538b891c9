#include "trainer/pipeline/schedule.h"

#include <algorithm>
#include <map>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "common/error.h"

namespace condensa::trainer::pipeline {

namespace {

const char* const kMicroBatches =
    "micro-batches per step (train.global_batch_size / (data_parallel x "
    "train.micro_batch_size))";

Action make(Action::Kind kind, int micro_batch, int chunk, int stage) {
  Action a;
  a.kind = kind;
  a.micro_batch = micro_batch;
  a.chunk = chunk;
  a.stage = stage;
  return a;
}

Schedule build_1f1b(const ScheduleOptions& o) {
  const int p = o.num_ranks, m = o.num_micro_batches;
  Schedule s(p);
  for (int r = 0; r < p; ++r) {
    const int warmup = std::min(p - r - 1, m);
    for (int i = 0; i < warmup; ++i) s[r].push_back(make(Action::kForward, i, 0, r));
    for (int i = 0; i < m - warmup; ++i) {
      s[r].push_back(make(Action::kForward, warmup + i, 0, r));
      s[r].push_back(make(Action::kBackward, i, 0, r));
    }
    for (int i = m - warmup; i < m; ++i) s[r].push_back(make(Action::kBackward, i, 0, r));
  }
  return s;
}

// Megatron-LM's interleaved order: the k-th (micro-batch, chunk) unit of a rank walks groups
// of p micro-batches through chunk 0, 1, ..., v - 1 (forward) or v - 1, ..., 0 (backward).
Action interleaved_unit(const ScheduleOptions& o, int rank, int k, Action::Kind kind) {
  const int p = o.num_ranks, v = o.virtual_stages;
  const int in_group = k % (p * v);
  int chunk = in_group / p;
  if (kind == Action::kBackward) chunk = v - 1 - chunk;
  const int micro_batch = (k / (p * v)) * p + k % p;
  return make(kind, micro_batch, chunk, chunk * p + rank);
}

Schedule build_interleaved(const ScheduleOptions& o) {
  const int p = o.num_ranks, v = o.virtual_stages;
  const int total = o.num_micro_batches * v;
  Schedule s(p);
  for (int r = 0; r < p; ++r) {
    const int warmup = std::min(total, 2 * (p - r - 1) + (v - 1) * p);
    for (int k = 0; k < warmup; ++k) s[r].push_back(interleaved_unit(o, r, k, Action::kForward));
    for (int k = 0; k < total - warmup; ++k) {
      s[r].push_back(interleaved_unit(o, r, warmup + k, Action::kForward));
      s[r].push_back(interleaved_unit(o, r, k, Action::kBackward));
    }
    for (int k = total - warmup; k < total; ++k) {
      s[r].push_back(interleaved_unit(o, r, k, Action::kBackward));
    }
  }
  return s;
}

// One rank's DualPipe order. DualPipe names a rank's two directions by phase: phase 0 is the
// direction in whose first half the rank sits (down for r < p/2, up otherwise), phase 1 the
// other; ranks r and p - 1 - r run the same phase order. Each phase takes its forwards and
// its backwards in micro-batch order.
class DualPipeRank {
 public:
  DualPipeRank(const ScheduleOptions& o, int rank) : o_(o), rank_(rank) {
    const int p = o.num_ranks;
    const bool down_is_phase0 = rank < p / 2;
    for (int phase = 0; phase < 2; ++phase) {
      const bool down = (phase == 0) == down_is_phase0;
      chunk_[phase] = down ? 0 : 1;
      stage_[phase] = down ? rank : p - 1 - rank;
      first_mb_[phase] = down ? 0 : o.num_micro_batches / 2;
    }
  }

  std::vector<Action> build() {
    const int half_ranks = o_.num_ranks / 2;
    const int h = std::min(rank_, o_.num_ranks - 1 - rank_);  // distance from the nearer end
    const bool middle = h == half_ranks - 1;
    const int tail = half_ranks - h - 1;
    for (int i = 0; i < 2 * tail; ++i) F(0);     // 1: nF0
    for (int i = 0; i < h + 1; ++i) F(0), F(1);  // 2: nF0F1
    for (int i = 0; i < tail; ++i) B(1), F(1);   // 3: nB1F1 (DualPipe: B1 W1 F1)
    const int steady = o_.num_micro_batches / 2 - o_.num_ranks + h + 1;
    for (int i = 0; i < steady; ++i) {  // 4: nF0B1F1B0
      F(0, /*paired=*/!(middle && i == 0)), B(1);
      F(1, true), B(0);
    }
    for (int i = 0; i < tail; ++i) B(1), F(1, true), B(0);  // 5: nB1F1B0
    for (int i = 0; i < h + 1; ++i) B(1), B(0);             // 6: nB1B0
    for (int i = 0; i < tail; ++i) B(0);                    // 7: nWB0 (W absent)
    return std::move(out_);                                 // 8: nW (absent)
  }

 private:
  void F(int phase, bool paired = false) { push(Action::kForward, phase, paired); }
  void B(int phase) { push(Action::kBackward, phase, false); }
  void push(Action::Kind kind, int phase, bool paired) {
    int& next = kind == Action::kForward ? next_forward_[phase] : next_backward_[phase];
    Action a = make(kind, first_mb_[phase] + next++, chunk_[phase], stage_[phase]);
    a.paired_with_next = paired;
    out_.push_back(a);
  }

  const ScheduleOptions& o_;
  const int rank_;
  int chunk_[2], stage_[2], first_mb_[2];
  int next_forward_[2] = {0, 0}, next_backward_[2] = {0, 0};
  std::vector<Action> out_;
};

Schedule build_dualpipe(const ScheduleOptions& o) {
  Schedule s(o.num_ranks);
  for (int r = 0; r < o.num_ranks; ++r) s[r] = DualPipeRank(o, r).build();
  return s;
}

std::string describe(const Action& a) {
  return str(a.kind == Action::kForward ? "forward" : "backward", " of micro-batch ", a.micro_batch,
             " at stage ", a.stage, " (chunk ", a.chunk, ")");
}

}  // namespace

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "1f1b") return ScheduleKind::k1F1B;
  if (name == "interleaved") return ScheduleKind::kInterleaved;
  if (name == "dualpipe") return ScheduleKind::kDualPipe;
  throw ConfigError(
      str("parallel.pipeline_schedule: expected 1f1b, interleaved or dualpipe, got '", name, "'"));
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::k1F1B:
      return "1f1b";
    case ScheduleKind::kInterleaved:
      return "interleaved";
    case ScheduleKind::kDualPipe:
      return "dualpipe";
  }
  return "?";
}

void validate(const ScheduleOptions& o) {
  const int p = o.num_ranks, m = o.num_micro_batches, v = o.virtual_stages;
  CONDENSA_CHECK(p >= 1, ConfigError, "parallel.pipeline_parallel (", p, ") must be >= 1");
  CONDENSA_CHECK(m >= 1, ConfigError, kMicroBatches, " (", m, ") must be >= 1");
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      CONDENSA_CHECK(m >= p, ConfigError, "parallel.pipeline_schedule 1f1b needs ", kMicroBatches,
                     " (", m, ") >= parallel.pipeline_parallel (", p, ")");
      break;
    case ScheduleKind::kInterleaved:
      CONDENSA_CHECK(v >= 2, ConfigError, "parallel.virtual_stages (", v,
                     ") must be >= 2 for parallel.pipeline_schedule interleaved");
      CONDENSA_CHECK(m % p == 0, ConfigError, "parallel.pipeline_schedule interleaved needs ",
                     kMicroBatches, " (", m, ") to be a multiple of parallel.pipeline_parallel (",
                     p, ")");
      break;
    case ScheduleKind::kDualPipe:
      CONDENSA_CHECK(p % 2 == 0, ConfigError, "parallel.pipeline_schedule dualpipe needs an even ",
                     "parallel.pipeline_parallel, got ", p);
      CONDENSA_CHECK(m % 2 == 0 && m >= 2 * p, ConfigError,
                     "parallel.pipeline_schedule dualpipe needs ", kMicroBatches, " (", m,
                     ") to be even and >= 2 x parallel.pipeline_parallel (2 x ", p, " = ", 2 * p,
                     ")");
      break;
  }
}

Schedule build_schedule(const ScheduleOptions& o) {
  validate(o);
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      return build_1f1b(o);
    case ScheduleKind::kInterleaved:
      return build_interleaved(o);
    case ScheduleKind::kDualPipe:
      return build_dualpipe(o);
  }
  return {};
}

int num_stages(const ScheduleOptions& o) {
  return o.kind == ScheduleKind::kInterleaved ? o.num_ranks * o.virtual_stages : o.num_ranks;
}

int num_chunks(const ScheduleOptions& o) {
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      return 1;
    case ScheduleKind::kInterleaved:
      return o.virtual_stages;
    case ScheduleKind::kDualPipe:
      return 2;
  }
  return 1;
}

StageLocation locate_stage(const ScheduleOptions& o, int micro_batch, int stage) {
  const int p = o.num_ranks;
  if (stage < 0 || stage >= num_stages(o) || micro_batch < 0 ||
      micro_batch >= o.num_micro_batches) {
    throw std::out_of_range(str("pipeline stage ", stage, " of micro-batch ", micro_batch,
                                " is outside ", num_stages(o), " stages and ", o.num_micro_batches,
                                " micro-batches"));
  }
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      return {stage, 0};
    case ScheduleKind::kInterleaved:
      return {stage % p, stage / p};
    case ScheduleKind::kDualPipe:
      if (micro_batch < o.num_micro_batches / 2) return {stage, 0};
      return {p - 1 - stage, 1};
  }
  return {};
}

Peers peers(const ScheduleOptions& o, const Action& a) {
  const int last = num_stages(o) - 1;
  const int before = a.stage > 0 ? locate_stage(o, a.micro_batch, a.stage - 1).rank : kNoPeer;
  const int after = a.stage < last ? locate_stage(o, a.micro_batch, a.stage + 1).rank : kNoPeer;
  if (a.kind == Action::kForward) return {before, after};
  return {after, before};
}

double theoretical_bubble(const ScheduleOptions& o) {
  validate(o);
  const double p = o.num_ranks, m = o.num_micro_batches, v = o.virtual_stages;
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      return (p - 1) / m;
    case ScheduleKind::kInterleaved:
      return (p - 1) / (v * m);
    case ScheduleKind::kDualPipe:
      // ((p - 2) t_b - t_f) / (m (t_f + t_b)) at t_b = 2 t_f; p = 2 has no bubble.
      return p == 2 ? 0.0 : (2 * p - 5) / (3 * m);
  }
  return 0;
}

namespace {

// Finish time of every (kind, micro-batch, stage); negative until done.
class DoneTable {
 public:
  DoneTable(int num_micro_batches, int num_stages)
      : m_(num_micro_batches), s_(num_stages), t_(2 * m_ * s_, -1.0) {}
  double& at(Action::Kind kind, int micro_batch, int stage) {
    return t_[(static_cast<int>(kind) * m_ + micro_batch) * s_ + stage];
  }

 private:
  int m_, s_;
  std::vector<double> t_;
};

// The passes `a` waits for: forward (mb, s - 1); or forward (mb, s) and backward (mb, s + 1).
std::vector<Action> inputs_of(const Action& a, int num_stages) {
  std::vector<Action> in;
  if (a.kind == Action::kForward) {
    if (a.stage > 0) in.push_back(make(Action::kForward, a.micro_batch, 0, a.stage - 1));
  } else {
    in.push_back(make(Action::kForward, a.micro_batch, 0, a.stage));
    if (a.stage + 1 < num_stages) {
      in.push_back(make(Action::kBackward, a.micro_batch, 0, a.stage + 1));
    }
  }
  return in;
}

// Every action on the rank and chunk that own its stage, each (kind, micro-batch, stage) once.
void check_coverage(const ScheduleOptions& o, const Schedule& schedule) {
  const int p = o.num_ranks, m = o.num_micro_batches, stages = num_stages(o);
  if (static_cast<int>(schedule.size()) != p) {
    throw std::logic_error(str("pipeline schedule has ", schedule.size(), " ranks, expected ", p));
  }
  DoneTable seen(m, stages);
  for (int r = 0; r < p; ++r) {
    for (size_t i = 0; i < schedule[r].size(); ++i) {
      const Action& a = schedule[r][i];
      if (a.micro_batch < 0 || a.micro_batch >= m || a.stage < 0 || a.stage >= stages) {
        throw std::logic_error(str("rank ", r, " action ", i, " (", describe(a), ") is outside ", m,
                                   " micro-batches and ", stages, " stages"));
      }
      const StageLocation at = locate_stage(o, a.micro_batch, a.stage);
      if (at.rank != r || at.chunk != a.chunk) {
        throw std::logic_error(str("rank ", r, " action ", i, " (", describe(a),
                                   ") belongs on rank ", at.rank, " chunk ", at.chunk));
      }
      double& slot = seen.at(a.kind, a.micro_batch, a.stage);
      if (slot >= 0) throw std::logic_error(str("rank ", r, " runs ", describe(a), " twice"));
      slot = 1;
    }
  }
  for (int kind = 0; kind < 2; ++kind) {
    for (int mb = 0; mb < m; ++mb) {
      for (int st = 0; st < stages; ++st) {
        const Action a = make(static_cast<Action::Kind>(kind), mb, 0, st);
        if (seen.at(a.kind, mb, st) < 0) {
          throw std::logic_error(str("pipeline schedule never runs the ", describe(a)));
        }
      }
    }
  }
}

// simulate(), also returning each action's start time ([rank][index]).
SimResult run(const ScheduleOptions& o,
              const Schedule& schedule,
              double t_forward,
              double t_backward,
              std::vector<std::vector<double>>* starts) {
  validate(o);
  check_coverage(o, schedule);
  const int p = o.num_ranks, stages = num_stages(o);
  DoneTable done(o.num_micro_batches, stages);
  std::vector<size_t> next(p, 0);
  std::vector<double> free_at(p, 0.0);
  std::vector<int> in_flight(p, 0);
  SimResult res;
  res.busy_s.assign(p, 0.0);
  res.peak_in_flight.assign(p, 0);
  starts->assign(p, {});
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < p; ++r) {
      for (; next[r] < schedule[r].size(); ++next[r]) {
        const Action& a = schedule[r][next[r]];
        double start = free_at[r];
        bool ready = true;
        for (const Action& in : inputs_of(a, stages)) {
          const double t = done.at(in.kind, in.micro_batch, in.stage);
          ready = ready && t >= 0;
          start = std::max(start, t);
        }
        if (!ready) break;
        const double dt = a.kind == Action::kForward ? t_forward : t_backward;
        (*starts)[r].push_back(start);
        free_at[r] = done.at(a.kind, a.micro_batch, a.stage) = start + dt;
        res.busy_s[r] += dt;
        in_flight[r] += a.kind == Action::kForward ? 1 : -1;
        res.peak_in_flight[r] = std::max(res.peak_in_flight[r], in_flight[r]);
        progress = true;
      }
    }
  }
  std::ostringstream blocked;
  for (int r = 0; r < p; ++r) {
    if (next[r] == schedule[r].size()) continue;
    const Action& a = schedule[r][next[r]];
    blocked << "; rank " << r << " at action " << next[r] << " (" << describe(a) << ") waits for";
    for (const Action& in : inputs_of(a, stages)) {
      if (done.at(in.kind, in.micro_batch, in.stage) < 0) {
        Action owner = in;
        const StageLocation at = locate_stage(o, in.micro_batch, in.stage);
        owner.chunk = at.chunk;
        blocked << " the " << describe(owner) << " on rank " << at.rank;
      }
    }
  }
  if (!blocked.str().empty()) {
    throw std::logic_error("pipeline schedule deadlock: no rank can progress" + blocked.str());
  }
  res.makespan = *std::max_element(free_at.begin(), free_at.end());
  double idle = 0, busy = 0;
  for (int r = 0; r < p; ++r) {
    res.idle_s.push_back(res.makespan - res.busy_s[r]);
    idle += res.idle_s[r];
    busy += res.busy_s[r];
  }
  res.bubble_fraction = busy > 0 ? idle / busy : 0;
  return res;
}

}  // namespace

SimResult simulate(const ScheduleOptions& o,
                   const Schedule& schedule,
                   double t_forward,
                   double t_backward) {
  std::vector<std::vector<double>> starts;
  return run(o, schedule, t_forward, t_backward, &starts);
}

std::string render_ascii(const ScheduleOptions& o, const Schedule& schedule) {
  std::vector<std::vector<double>> starts;
  const SimResult res = run(o, schedule, 1.0, 2.0, &starts);
  const size_t width = 1 + std::to_string(o.num_micro_batches - 1).size();  // one time unit
  std::ostringstream out;
  for (size_t r = 0; r < schedule.size(); ++r) {
    std::string line(static_cast<size_t>(res.makespan) * width, '.');
    for (size_t i = 0; i < schedule[r].size(); ++i) {
      const Action& a = schedule[r][i];
      const bool fwd = a.kind == Action::kForward;
      std::string label = std::string(1, fwd ? 'F' : 'B') + std::to_string(a.micro_batch);
      if (a.chunk % 2 == 1) label[0] = fwd ? 'f' : 'b';
      const size_t span = (fwd ? 1 : 2) * width;
      label.resize(span, fwd ? ' ' : '-');
      line.replace(static_cast<size_t>(starts[r][i]) * width, span, label);
    }
    out << "rank " << r << " | " << line << "\n";
  }
  return out.str();
}

int message_lane(const Message& m) {
  if (m.from - m.to == 1 || m.to - m.from == 1) return m.from % 2;
  return 2;
}

Program build_program(const ScheduleOptions& o, const Schedule& schedule) {
  Program program(schedule.size());
  for (size_t r = 0; r < schedule.size(); ++r) {
    const int rank = static_cast<int>(r);
    for (const Action& a : schedule[r]) {
      const Peers pr = peers(o, a);
      ProgramStep step;
      if (pr.recv_from != kNoPeer && pr.recv_from != rank) {
        // The input was sent by the neighbouring stage's pass of the same kind.
        const int from_stage = a.kind == Action::kForward ? a.stage - 1 : a.stage + 1;
        step.kind = ProgramStep::kRecv;
        step.message = {a.kind, a.micro_batch, from_stage, pr.recv_from, rank};
        program[r].push_back(step);
      }
      step.kind = ProgramStep::kPass;
      step.action = a;
      program[r].push_back(step);
      if (pr.send_to != kNoPeer && pr.send_to != rank) {
        step.kind = ProgramStep::kSend;
        step.message = {a.kind, a.micro_batch, a.stage, rank, pr.send_to};
        program[r].push_back(step);
      }
    }
  }
  return program;
}

void check_program(const ScheduleOptions& o, const Program& program) {
  const int p = static_cast<int>(program.size());
  auto name = [](const Message& m) {
    return str(m.kind == Action::kForward ? "activation" : "gradient", " of micro-batch ",
               m.micro_batch, " stage ", m.stage, " from rank ", m.from, " to rank ", m.to);
  };
  // Posting order per ordered pair, on the sending and on the receiving side.
  using Channel = std::tuple<int, int, int>;  // from, to, kind
  auto channel = [](const Message& m) { return Channel{m.from, m.to, m.kind}; };
  std::map<Channel, std::vector<Message>> sent, received;
  for (int r = 0; r < p; ++r) {
    for (const auto& step : program[r]) {
      if (step.kind == ProgramStep::kSend) sent[channel(step.message)].push_back(step.message);
      if (step.kind == ProgramStep::kRecv) received[channel(step.message)].push_back(step.message);
    }
  }
  for (const auto* side : {&sent, &received}) {
    for (const auto& kv : *side) {
      const auto& msgs = sent[kv.first];
      const auto& got = received[kv.first];
      for (size_t i = 0; i < std::max(msgs.size(), got.size()); ++i) {
        if (i >= msgs.size() || i >= got.size() || !(msgs[i] == got[i])) {
          throw std::logic_error(str(
              schedule_kind_name(o.kind), ": ",
              std::get<2>(kv.first) == Action::kForward ? "activation" : "gradient", " message ", i,
              " from rank ", std::get<0>(kv.first), " to rank ", std::get<1>(kv.first),
              " is sent as ", i < msgs.size() ? name(msgs[i]) : "nothing", " but received as ",
              i < got.size() ? name(got[i]) : "nothing"));
        }
      }
    }
  }
  // One role per rank on each (kind, lane).
  std::map<std::tuple<int, int, int>, bool> role;  // (rank, kind, lane) -> sends
  for (int r = 0; r < p; ++r) {
    for (const auto& step : program[r]) {
      if (step.kind == ProgramStep::kPass) continue;
      const bool send = step.kind == ProgramStep::kSend;
      const auto key =
          std::make_tuple(r, static_cast<int>(step.message.kind), message_lane(step.message));
      auto it = role.find(key);
      if (it == role.end()) {
        role[key] = send;
      } else if (it->second != send) {
        throw std::logic_error(str(schedule_kind_name(o.kind), ": rank ", r,
                                   " both sends and receives on lane ", message_lane(step.message),
                                   " (", name(step.message), ")"));
      }
    }
  }
  // Run: a receive waits until the sender has posted that many messages to this rank.
  std::vector<size_t> at(p, 0);
  std::map<Channel, size_t> posted, taken;
  while (true) {
    bool progress = false, finished = true;
    for (int r = 0; r < p; ++r) {
      while (at[r] < program[r].size()) {
        const auto& step = program[r][at[r]];
        const Channel pair = channel(step.message);
        if (step.kind == ProgramStep::kRecv) {
          if (posted[pair] <= taken[pair]) break;
          ++taken[pair];
        } else if (step.kind == ProgramStep::kSend) {
          ++posted[pair];
        }
        ++at[r];
        progress = true;
      }
      finished = finished && at[r] == program[r].size();
    }
    if (finished) return;
    if (!progress) {
      std::string blocked;
      for (int r = 0; r < p; ++r) {
        if (at[r] < program[r].size())
          blocked += str(" rank ", r, " waits for the ", name(program[r][at[r]].message), ";");
      }
      throw std::logic_error(str(schedule_kind_name(o.kind), ": deadlock:", blocked));
    }
  }
}

Schedule build_forward_only(const ScheduleOptions& o) {
  Schedule out(o.num_ranks);
  const int stages = num_stages(o);
  for (int mb = 0; mb < o.num_micro_batches; ++mb) {
    for (int s = 0; s < stages; ++s) {
      const StageLocation at = locate_stage(o, mb, s);
      out[at.rank].push_back(make(Action::kForward, mb, at.chunk, s));
    }
  }
  return out;
}

}  // namespace condensa::trainer::pipeline
