// Pipeline schedules (trainer/pipeline/schedule.h): coverage and stage ownership against an
// ownership rule written out here, per-rank orders against lists derived by hand from each
// schedule's definition, simulated bubbles against the closed forms, peak activations, config
// errors, and a broken schedule that must deadlock.
#include "trainer/pipeline/schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/error.h"

using namespace condensa::trainer::pipeline;
using ::testing::HasSubstr;

namespace {

ScheduleOptions opts(ScheduleKind kind, int p, int m, int v = 1) {
  ScheduleOptions o;
  o.kind = kind;
  o.num_ranks = p;
  o.num_micro_batches = m;
  o.virtual_stages = v;
  return o;
}

// "F0 B0 f4 ..." for one rank: upper case for local chunk 0, lower case for chunk 1.
std::string order(const std::vector<Action>& actions) {
  std::ostringstream os;
  for (const Action& a : actions) {
    const bool fwd = a.kind == Action::kForward;
    const char letter = a.chunk == 0 ? (fwd ? 'F' : 'B') : (fwd ? 'f' : 'b');
    os << (os.tellp() > 0 ? " " : "") << letter << a.micro_batch;
    if (a.chunk > 1) os << "c" << a.chunk;
  }
  return os.str();
}

// The rank and local chunk that own (micro-batch, stage), restated from the definitions.
std::pair<int, int> owner(const ScheduleOptions& o, int mb, int stage) {
  const int p = o.num_ranks;
  switch (o.kind) {
    case ScheduleKind::k1F1B:
      return {stage, 0};
    case ScheduleKind::kInterleaved:
      return {stage % p, stage / p};
    case ScheduleKind::kDualPipe:
      return mb < o.num_micro_batches / 2 ? std::make_pair(stage, 0)
                                          : std::make_pair(p - 1 - stage, 1);
  }
  return {-1, -1};
}

std::vector<ScheduleOptions> valid_layouts() {
  std::vector<ScheduleOptions> all;
  for (int p : {1, 2, 3, 4, 5, 8}) {
    for (int m : {p, p + 1, 2 * p + 3, 4 * p}) all.push_back(opts(ScheduleKind::k1F1B, p, m));
  }
  for (int p : {1, 2, 3, 4, 8}) {
    for (int v : {2, 3, 4}) {
      for (int k : {1, 2, 3}) all.push_back(opts(ScheduleKind::kInterleaved, p, k * p, v));
    }
  }
  for (int p : {2, 4, 6, 8, 12}) {
    for (int m : {2 * p, 2 * p + 2, 3 * p, 5 * p + 4}) {
      if (m % 2 == 0) all.push_back(opts(ScheduleKind::kDualPipe, p, m));
    }
  }
  return all;
}

std::string name(const ScheduleOptions& o) {
  std::ostringstream os;
  os << schedule_kind_name(o.kind) << " p=" << o.num_ranks << " m=" << o.num_micro_batches
     << " v=" << o.virtual_stages;
  return os.str();
}

TEST(PipelineSchedule, ParsesTheThreeNamesAndNamesTheKeyForOthers) {
  EXPECT_EQ(parse_schedule_kind("1f1b"), ScheduleKind::k1F1B);
  EXPECT_EQ(parse_schedule_kind("interleaved"), ScheduleKind::kInterleaved);
  EXPECT_EQ(parse_schedule_kind("dualpipe"), ScheduleKind::kDualPipe);
  for (const char* bad : {"gpipe", "1F1B", ""}) {
    try {
      parse_schedule_kind(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const condensa::ConfigError& e) {
      EXPECT_THAT(e.what(), HasSubstr("parallel.pipeline_schedule"));
      EXPECT_THAT(e.what(), HasSubstr(std::string("'") + bad + "'"));
    }
  }
}

TEST(PipelineSchedule, EveryPassRunsOnceOnTheRankThatOwnsItsStage) {
  for (const ScheduleOptions& o : valid_layouts()) {
    SCOPED_TRACE(name(o));
    const int stages =
        o.kind == ScheduleKind::kInterleaved ? o.num_ranks * o.virtual_stages : o.num_ranks;
    ASSERT_EQ(num_stages(o), stages);
    const Schedule s = build_schedule(o);
    ASSERT_EQ(static_cast<int>(s.size()), o.num_ranks);
    std::map<std::tuple<int, int, int>, int> count;  // (kind, micro-batch, stage)
    for (int r = 0; r < o.num_ranks; ++r) {
      for (const Action& a : s[r]) {
        ASSERT_GE(a.stage, 0);
        ASSERT_LT(a.stage, stages);
        ASSERT_GE(a.micro_batch, 0);
        ASSERT_LT(a.micro_batch, o.num_micro_batches);
        EXPECT_EQ(owner(o, a.micro_batch, a.stage), std::make_pair(r, a.chunk));
        const StageLocation at = locate_stage(o, a.micro_batch, a.stage);
        EXPECT_EQ(std::make_pair(at.rank, at.chunk), std::make_pair(r, a.chunk));
        ++count[{a.kind, a.micro_batch, a.stage}];
      }
    }
    EXPECT_EQ(count.size(), 2u * o.num_micro_batches * stages);
    for (const auto& [key, n] : count) EXPECT_EQ(n, 1);
  }
}

TEST(PipelineSchedule, EveryScheduleSimulatesWithoutDeadlock) {
  for (const ScheduleOptions& o : valid_layouts()) {
    SCOPED_TRACE(name(o));
    const Schedule s = build_schedule(o);
    for (double t_b : {2.0, 1.0}) {
      const SimResult res = simulate(o, s, 1.0, t_b);
      // Each micro-batch passes every rank once per chunk, except dualpipe's: one direction
      // each, so a rank runs m forwards and m backwards over its two chunks.
      const int passes =
          o.num_micro_batches * (o.kind == ScheduleKind::kDualPipe ? 1 : num_chunks(o));
      for (int r = 0; r < o.num_ranks; ++r) {
        EXPECT_DOUBLE_EQ(res.busy_s[r], passes * (1.0 + t_b));
        EXPECT_GE(res.idle_s[r], 0.0);
        EXPECT_DOUBLE_EQ(res.idle_s[r] + res.busy_s[r], res.makespan);
      }
    }
  }
}

// 1f1b, p = 4, m = 8: rank 0 warms up with p - 1 = 3 forwards, alternates F/B five times and
// drains three backwards; the last rank has no warm-up.
TEST(PipelineSchedule, OneFOneBOrderMatchesTheDefinition) {
  const Schedule s = build_schedule(opts(ScheduleKind::k1F1B, 4, 8));
  EXPECT_EQ(order(s[0]), "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7");
  EXPECT_EQ(order(s[2]), "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7");
  EXPECT_EQ(order(s[3]), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7");
  for (int r = 0; r < 4; ++r) {
    for (const Action& a : s[r]) EXPECT_EQ(a.stage, r);
  }
}

// interleaved, p = 2, v = 2, m = 4: units walk groups of p = 2 micro-batches through chunk 0
// then chunk 1 (backward: chunk 1 then 0). Rank 0 warms up with 2 (p - 1) + (v - 1) p = 4
// units, rank 1 with 2.
TEST(PipelineSchedule, InterleavedOrderMatchesMegatron) {
  const Schedule s = build_schedule(opts(ScheduleKind::kInterleaved, 2, 4, 2));
  EXPECT_EQ(order(s[0]), "F0 F1 f0 f1 F2 b0 F3 b1 f2 B0 f3 B1 b2 b3 B2 B3");
  EXPECT_EQ(order(s[1]), "F0 F1 f0 b0 f1 b1 F2 B0 F3 B1 f2 b2 f3 b3 B2 B3");
  for (int r = 0; r < 2; ++r) {
    for (const Action& a : s[r]) EXPECT_EQ(a.stage, a.chunk * 2 + r);
  }
}

// dualpipe, p = 4, m = 8: micro-batches 0-3 go down (chunk 0, upper case), 4-7 go up
// (chunk 1, lower case). DualPipe's steps for rank 0 (half_rank 0, not a middle rank):
// 2 F0 | F0 F1 | B1 F1 | F0+B1 F1+B0 | B1 F1+B0 | B1 B0 | B0. Rank 1 is a middle rank
// (half_rank 1): F0 F1 F0 F1 | two steady steps, the first F0 not paired | B1 B0 B1 B0.
TEST(PipelineSchedule, DualPipeOrderMatchesItsSteps) {
  const Schedule s = build_schedule(opts(ScheduleKind::kDualPipe, 4, 8));
  EXPECT_EQ(order(s[0]), "F0 F1 F2 f4 b4 f5 F3 b5 f6 B0 b6 f7 B1 b7 B2 B3");
  EXPECT_EQ(order(s[1]), "F0 f4 F1 f5 F2 b4 f6 B0 F3 b5 f7 B1 b6 B2 b7 B3");
  // Ranks p - 1 - r mirror ranks r with the directions swapped.
  EXPECT_EQ(order(s[3]), "f4 f5 f6 F0 B0 F1 f7 B1 F2 b4 B2 F3 b5 B3 b6 b7");
  auto paired = [](const std::vector<Action>& actions) {
    std::string marks;
    for (const Action& a : actions) marks += a.paired_with_next ? 'P' : '.';
    return marks;
  };
  EXPECT_EQ(paired(s[0]), "......P.P..P....");
  EXPECT_EQ(paired(s[1]), "......P.P.P.....");
  for (int r = 0; r < 4; ++r) {
    for (size_t i = 0; i < s[r].size(); ++i) {
      if (!s[r][i].paired_with_next) continue;
      ASSERT_LT(i + 1, s[r].size());
      EXPECT_EQ(s[r][i].kind, Action::kForward);
      EXPECT_EQ(s[r][i + 1].kind, Action::kBackward);
      EXPECT_NE(s[r][i].chunk, s[r][i + 1].chunk) << "a pair joins the two directions";
    }
  }
}

TEST(PipelineSchedule, SimulatedBubbleEqualsTheClosedForms) {
  for (int p : {2, 3, 4, 6, 8}) {
    for (int m : {p, 2 * p, 3 * p + 1}) {
      const ScheduleOptions o = opts(ScheduleKind::k1F1B, p, m);
      const SimResult res = simulate(o, build_schedule(o), 1.0, 2.0);
      EXPECT_NEAR(res.bubble_fraction, (p - 1.0) / m, 1e-9) << name(o);
      EXPECT_NEAR(theoretical_bubble(o), (p - 1.0) / m, 1e-12);
      for (double idle : res.idle_s) EXPECT_NEAR(idle, (p - 1) * 3.0, 1e-9) << name(o);
    }
    for (int v : {2, 3, 4}) {
      for (int m : {p, 2 * p, 4 * p}) {
        const ScheduleOptions o = opts(ScheduleKind::kInterleaved, p, m, v);
        const SimResult res = simulate(o, build_schedule(o), 1.0, 2.0);
        EXPECT_NEAR(res.bubble_fraction, (p - 1.0) / (v * m), 1e-9) << name(o);
        EXPECT_NEAR(theoretical_bubble(o), (p - 1.0) / (v * m), 1e-12);
      }
    }
  }
}

TEST(PipelineSchedule, DualPipeBubbleIsBelowOneFOneBAndMatchesItsFormula) {
  for (int p : {2, 4, 6, 8, 10, 12}) {
    for (int m : {2 * p, 2 * p + 2, 4 * p, 6 * p}) {
      const ScheduleOptions o = opts(ScheduleKind::kDualPipe, p, m);
      const Schedule s = build_schedule(o);
      const SimResult res = simulate(o, s, 1.0, 2.0);
      const double expected = p == 2 ? 0.0 : (2.0 * p - 5) / (3.0 * m);
      EXPECT_NEAR(res.bubble_fraction, expected, 1e-9) << name(o);
      EXPECT_NEAR(theoretical_bubble(o), expected, 1e-12) << name(o);
      const ScheduleOptions one = opts(ScheduleKind::k1F1B, p, m);
      EXPECT_LT(res.bubble_fraction, simulate(one, build_schedule(one), 1.0, 2.0).bubble_fraction);
      // Idle per rank, (p - 2) t_b - t_f for t_b >= 2 t_f and (p - 2) t_f for t_b <= t_f.
      for (double t_b : {2.0, 3.0, 5.0, 0.5, 1.0}) {
        const double idle = p == 2 ? 0.0 : (t_b >= 2.0 ? (p - 2) * t_b - 1.0 : (p - 2) * 1.0);
        for (double x : simulate(o, s, 1.0, t_b).idle_s) {
          EXPECT_NEAR(x, idle, 1e-9) << name(o) << " t_b=" << t_b;
        }
      }
    }
  }
}

TEST(PipelineSchedule, PeakInFlightActivationsAreTheDocumentedOnes) {
  for (int p : {2, 4, 5, 8}) {
    const ScheduleOptions o = opts(ScheduleKind::k1F1B, p, 3 * p);
    const SimResult res = simulate(o, build_schedule(o), 1.0, 2.0);
    for (int r = 0; r < p; ++r) EXPECT_EQ(res.peak_in_flight[r], p - r) << name(o);
  }
  for (int p : {2, 4}) {
    for (int v : {2, 3}) {
      for (int m : {p, 3 * p}) {
        const ScheduleOptions o = opts(ScheduleKind::kInterleaved, p, m, v);
        const SimResult res = simulate(o, build_schedule(o), 1.0, 2.0);
        for (int r = 0; r < p; ++r) {
          const int expected = std::min(v * m, 2 * (p - r - 1) + (v - 1) * p + 1);
          EXPECT_EQ(res.peak_in_flight[r], expected) << name(o) << " rank " << r;
        }
      }
    }
  }
  for (int p : {2, 4, 6, 8}) {
    const ScheduleOptions o = opts(ScheduleKind::kDualPipe, p, 4 * p);
    const SimResult res = simulate(o, build_schedule(o), 1.0, 2.0);
    for (int r = 0; r < p; ++r) EXPECT_EQ(res.peak_in_flight[r], p + 1) << name(o);
  }
}

TEST(PipelineSchedule, PeersFollowTheStagesOfEachDirection) {
  // 1f1b p = 4: forward of stage 1 comes from rank 0 and goes to rank 2; backward reverses.
  const ScheduleOptions one = opts(ScheduleKind::k1F1B, 4, 4);
  Action a;
  a.kind = Action::kForward;
  a.micro_batch = 2;
  a.stage = 1;
  EXPECT_EQ(peers(one, a).recv_from, 0);
  EXPECT_EQ(peers(one, a).send_to, 2);
  a.kind = Action::kBackward;
  EXPECT_EQ(peers(one, a).recv_from, 2);
  EXPECT_EQ(peers(one, a).send_to, 0);
  a.stage = 3;  // the last stage's backward starts from the loss
  EXPECT_EQ(peers(one, a).recv_from, kNoPeer);
  a.kind = Action::kForward;
  a.stage = 0;  // the first stage's forward reads the batch
  EXPECT_EQ(peers(one, a).recv_from, kNoPeer);

  // interleaved p = 2, v = 2: stage 1 (rank 1, chunk 0) feeds stage 2 (rank 0, chunk 1).
  const ScheduleOptions il = opts(ScheduleKind::kInterleaved, 2, 4, 2);
  a.stage = 1;
  EXPECT_EQ(peers(il, a).recv_from, 0);
  EXPECT_EQ(peers(il, a).send_to, 0);
  a.stage = 3;
  EXPECT_EQ(peers(il, a).send_to, kNoPeer);

  // dualpipe p = 4, m = 8: micro-batch 5 goes up, stage 0 on rank 3, stage 1 on rank 2.
  const ScheduleOptions dp = opts(ScheduleKind::kDualPipe, 4, 8);
  a.micro_batch = 5;
  a.stage = 1;
  EXPECT_EQ(peers(dp, a).recv_from, 3);
  EXPECT_EQ(peers(dp, a).send_to, 1);
  a.micro_batch = 1;  // down: stage 1 on rank 1
  EXPECT_EQ(peers(dp, a).recv_from, 0);
  EXPECT_EQ(peers(dp, a).send_to, 2);
  EXPECT_EQ(locate_stage(dp, 5, 0).rank, 3);
  EXPECT_EQ(locate_stage(dp, 5, 0).chunk, 1);
}

void expect_config_error(const ScheduleOptions& o, const std::vector<std::string>& parts) {
  try {
    validate(o);
    ADD_FAILURE() << "accepted " << name(o);
  } catch (const condensa::ConfigError& e) {
    for (const std::string& part : parts) EXPECT_THAT(e.what(), HasSubstr(part)) << name(o);
  }
  EXPECT_THROW(build_schedule(o), condensa::ConfigError);
}

TEST(PipelineSchedule, ValidationNamesTheKeysValuesAndRequirement) {
  expect_config_error(opts(ScheduleKind::k1F1B, 4, 3),
                      {"parallel.pipeline_schedule 1f1b", "micro-batches per step",
                       "train.global_batch_size", "(3) >= parallel.pipeline_parallel (4)"});
  expect_config_error(opts(ScheduleKind::kInterleaved, 4, 6, 2),
                      {"parallel.pipeline_schedule interleaved", "micro-batches per step",
                       "(6) to be a multiple of parallel.pipeline_parallel (4)"});
  expect_config_error(opts(ScheduleKind::kInterleaved, 4, 8, 1),
                      {"parallel.virtual_stages (1) must be >= 2"});
  expect_config_error(
      opts(ScheduleKind::kDualPipe, 3, 12),
      {"parallel.pipeline_schedule dualpipe", "even parallel.pipeline_parallel", "got 3"});
  expect_config_error(opts(ScheduleKind::kDualPipe, 4, 6),
                      {"parallel.pipeline_schedule dualpipe", "micro-batches per step (",
                       "(6) to be even and >= 2 x parallel.pipeline_parallel (2 x 4 = 8)"});
  expect_config_error(opts(ScheduleKind::kDualPipe, 4, 9),
                      {"(9) to be even", "parallel.pipeline_parallel"});
  expect_config_error(opts(ScheduleKind::k1F1B, 0, 4), {"parallel.pipeline_parallel (0)"});
}

TEST(PipelineSchedule, BrokenScheduleDeadlocksNamingTheRank) {
  const ScheduleOptions o = opts(ScheduleKind::k1F1B, 4, 8);
  Schedule s = build_schedule(o);
  // The last rank runs the backward of micro-batch 0 before the forward it differentiates.
  std::swap(s[3][0], s[3][1]);
  try {
    simulate(o, s, 1.0, 2.0);
    ADD_FAILURE() << "no deadlock reported";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("deadlock"));
    EXPECT_THAT(e.what(), HasSubstr("rank 3 at action 0 (backward of micro-batch 0 at stage 3"));
    EXPECT_THAT(e.what(), HasSubstr("waits for the forward of micro-batch 0 at stage 3 (chunk 0) "
                                    "on rank 3"));
    EXPECT_THAT(e.what(), HasSubstr("rank 0 at action 4 (backward of micro-batch 0 at stage 0"));
  }
  // Crossed orders deadlock too: rank 0 of an interleaved schedule waits for chunk 1's
  // backward before running the forward rank 1 needs.
  const ScheduleOptions il = opts(ScheduleKind::kInterleaved, 2, 2, 2);
  Schedule t = build_schedule(il);
  ASSERT_EQ(order(t[0]), "F0 F1 f0 f1 b0 b1 B0 B1");
  std::swap(t[0][2], t[0][4]);  // b0 before f0
  EXPECT_THROW(simulate(il, t, 1.0, 2.0), std::logic_error);
}

TEST(PipelineSchedule, SimulateRejectsMisplacedMissingAndRepeatedPasses) {
  const ScheduleOptions o = opts(ScheduleKind::k1F1B, 2, 2);
  Schedule moved = build_schedule(o);
  moved[1].push_back(moved[0].back());
  moved[0].pop_back();
  EXPECT_THROW(
      {
        try {
          simulate(o, moved, 1.0, 2.0);
        } catch (const std::logic_error& e) {
          EXPECT_THAT(e.what(), HasSubstr("belongs on rank 0"));
          throw;
        }
      },
      std::logic_error);
  Schedule missing = build_schedule(o);
  missing[0].pop_back();
  EXPECT_THROW(
      {
        try {
          simulate(o, missing, 1.0, 2.0);
        } catch (const std::logic_error& e) {
          EXPECT_THAT(e.what(), HasSubstr("never runs the backward of micro-batch 1 at stage 0"));
          throw;
        }
      },
      std::logic_error);
  Schedule twice = build_schedule(o);
  twice[1].push_back(twice[1].back());
  EXPECT_THROW(simulate(o, twice, 1.0, 2.0), std::logic_error);
}

TEST(PipelineSchedule, AsciiPictureDrawsEachRankOnTheTimeAxis) {
  const ScheduleOptions o = opts(ScheduleKind::k1F1B, 4, 8);
  const std::string pic = render_ascii(o, build_schedule(o));
  std::istringstream lines(pic);
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(line);
  ASSERT_EQ(rows.size(), 4u);
  // (m + p - 1) (t_f + t_b) = 33 time units of two characters each.
  for (const std::string& row : rows) EXPECT_EQ(row.size(), std::string("rank 0 | ").size() + 66);
  // The last rank waits p - 1 = 3 forwards, then alternates; rank 0 idles before B0.
  EXPECT_EQ(rows[3].substr(0, 27), "rank 3 | ......F0B0--F1B1--");
  EXPECT_EQ(rows[0].substr(0, 33), "rank 0 | F0F1F2F3............B0--");
}

}  // namespace

// The runtime's program: for every schedule and a range of shapes, each pair of ranks posts its
// messages in the same order on both sides and the batched exchanges never deadlock.
TEST(PipelineProgram, EveryScheduleRunsWithMatchedOrderedExchanges) {
  int checked = 0;
  for (int p = 1; p <= 8; ++p) {
    for (int m : {p, 2 * p, 3 * p, 4 * p}) {
      std::vector<ScheduleOptions> cases{opts(ScheduleKind::k1F1B, p, m)};
      for (int v : {2, 3}) cases.push_back(opts(ScheduleKind::kInterleaved, p, m, v));
      if (p % 2 == 0 && m % 2 == 0 && m >= 2 * p)
        cases.push_back(opts(ScheduleKind::kDualPipe, p, m));
      for (const auto& o : cases) {
        SCOPED_TRACE(schedule_kind_name(o.kind) + (" p " + std::to_string(p)) + " m " +
                     std::to_string(m) + " v " + std::to_string(o.virtual_stages));
        EXPECT_NO_THROW(check_program(o, build_program(o, build_schedule(o))));
        EXPECT_NO_THROW(check_program(o, build_program(o, build_forward_only(o))));
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 80);
}

// A forward pass's output goes to the next stage's rank as soon as it is done, its gradient
// comes back from it: a 1f1b rank 1 of 3 with 3 micro-batches runs exactly these steps.
TEST(PipelineProgram, OneFOneBMiddleRankReceivesBeforeAndSendsAfterEachPass) {
  const auto o = opts(ScheduleKind::k1F1B, 3, 3);
  const auto program = build_program(o, build_schedule(o));
  std::ostringstream os;
  for (const auto& step : program[1]) {
    const auto& m = step.message;
    const char* what = m.kind == Action::kForward ? "a" : "g";
    if (step.kind == ProgramStep::kPass) {
      os << (step.action.kind == Action::kForward ? "F" : "B") << step.action.micro_batch << " ";
    } else if (step.kind == ProgramStep::kRecv) {
      os << "r" << what << m.micro_batch << "<" << m.from << " ";
    } else {
      os << "s" << what << m.micro_batch << ">" << m.to << " ";
    }
  }
  // Rank 1: one warm-up forward, then F1 B0, F2 B1, then B2 (schedule order).
  EXPECT_EQ(os.str(),
            "ra0<0 F0 sa0>2 ra1<0 F1 sa1>2 rg0<2 B0 sg0>0 ra2<0 F2 sa2>2 rg1<2 B1 sg1>0 rg2<2 B2 "
            "sg2>0 ");
}

// Messages posted out of order on one side are found, naming both messages.
TEST(PipelineProgram, MessagesPostedInADifferentOrderAreFound) {
  const auto o = opts(ScheduleKind::k1F1B, 2, 2);
  auto program = build_program(o, build_schedule(o));
  // Rank 1 receives activations 0 and 1: swap which one each exchange expects.
  std::vector<ProgramStep*> recvs;
  for (auto& step : program[1]) {
    if (step.kind == ProgramStep::kRecv && step.message.kind == Action::kForward)
      recvs.push_back(&step);
  }
  ASSERT_EQ(recvs.size(), 2u);
  std::swap(recvs[0]->message, recvs[1]->message);
  try {
    check_program(o, program);
    FAIL() << "no error";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("activation message 0 from rank 0 to rank 1"));
    EXPECT_THAT(e.what(), HasSubstr("sent as activation of micro-batch 0 stage 0"));
    EXPECT_THAT(e.what(), HasSubstr("received as activation of micro-batch 1 stage 0"));
  }
}

// A send posted too late blocks its receiver: the run names each blocked rank and message.
TEST(PipelineProgram, ASendPostedTooLateIsADeadlockNamingRanksAndMessages) {
  const auto o = opts(ScheduleKind::k1F1B, 2, 2);
  auto program = build_program(o, build_schedule(o));
  // Rank 0 posts its second activation only at the very end.
  auto& steps = program[0];
  for (auto it = steps.begin(); it != steps.end(); ++it) {
    if (it->kind == ProgramStep::kSend && it->message.micro_batch == 1) {
      const ProgramStep late = *it;
      steps.erase(it);
      steps.push_back(late);
      break;
    }
  }
  try {
    check_program(o, program);
    FAIL() << "no error";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("deadlock: rank 0 waits for the gradient of micro-batch 1 "
                                    "stage 1 from rank 1 to rank 0; rank 1 waits for the "
                                    "activation of micro-batch 1 stage 0 from rank 0 to rank 1"));
  }
}

// The NCCL transport's stricter model: on each rank, the operations of one communicator (a
// message kind and lane) run in posting order on one stream (an op starts when the one before
// it on that stream has completed, and completes when its match is at the head of the peer's
// stream); the host posts sends without waiting and waits for each receive. Every schedule's
// program runs to the end under it too. (With one stream per kind instead of per lane,
// interleaved and dualpipe deadlock: a receive waits behind a send whose receiver waits
// likewise.)
TEST(PipelineProgram, EveryProgramRunsWithOneInOrderStreamPerLane) {
  struct Op {
    bool send;
    int peer;
    int64_t seq;
  };
  auto runs_in_order = [](const Program& program, std::string* where) {
    const int p = static_cast<int>(program.size());
    std::vector<size_t> at(p, 0);
    std::vector<bool> waiting(p, false);  // host blocked on its last posted receive
    // (rank, kind, lane) -> posted, pending.
    std::map<std::tuple<int, int, int>, std::vector<Op>> stream;
    std::map<std::tuple<int, int, int, bool>, int64_t> seq;  // (from, to, kind, send) -> next
    while (true) {
      bool progress = false;
      for (int r = 0; r < p; ++r) {
        while (!waiting[r] && at[r] < program[r].size()) {
          const auto& step = program[r][at[r]++];
          progress = true;
          if (step.kind == ProgramStep::kPass) continue;
          const Message& m = step.message;
          const bool send = step.kind == ProgramStep::kSend;
          stream[{r, m.kind, message_lane(m)}].push_back(
              {send, send ? m.to : m.from, seq[{m.from, m.to, m.kind, send}]++});
          if (!send) waiting[r] = true;
        }
      }
      for (auto& [key, ops] : stream) {
        if (ops.empty()) continue;
        const Op head = ops.front();
        auto& peer_ops = stream[{head.peer, std::get<1>(key), std::get<2>(key)}];
        if (peer_ops.empty()) continue;
        const Op other = peer_ops.front();
        if (other.send != head.send && other.peer == std::get<0>(key) && other.seq == head.seq) {
          ops.erase(ops.begin());
          peer_ops.erase(peer_ops.begin());
          progress = true;
        }
      }
      for (int r = 0; r < p; ++r) {
        if (!waiting[r]) continue;
        bool recv_pending = false;
        for (auto& [k, ops] : stream) {
          if (std::get<0>(k) != r) continue;
          for (const Op& op : ops) recv_pending = recv_pending || !op.send;
        }
        if (!recv_pending) {
          waiting[r] = false;
          progress = true;
        }
      }
      if (progress) continue;
      bool done = true;
      for (int r = 0; r < p; ++r) done = done && at[r] == program[r].size() && !waiting[r];
      for (auto& [key, ops] : stream) done = done && ops.empty();
      if (done) return true;
      for (int r = 0; r < p; ++r) {
        if (at[r] < program[r].size() || waiting[r]) *where += " rank " + std::to_string(r);
      }
      return false;
    }
  };
  int checked = 0;
  for (int p = 2; p <= 8; ++p) {
    for (int m : {p, 2 * p, 4 * p}) {
      std::vector<ScheduleOptions> cases{opts(ScheduleKind::k1F1B, p, m)};
      for (int v : {2, 3}) cases.push_back(opts(ScheduleKind::kInterleaved, p, m, v));
      if (p % 2 == 0 && m >= 2 * p) cases.push_back(opts(ScheduleKind::kDualPipe, p, m));
      for (const auto& o : cases) {
        std::string where;
        EXPECT_TRUE(runs_in_order(build_program(o, build_schedule(o)), &where))
            << schedule_kind_name(o.kind) << " p " << p << " m " << m << " v " << o.virtual_stages
            << ": blocked" << where;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 50);
}
