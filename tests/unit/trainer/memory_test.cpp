// The memory estimate that refuses a run before allocating: its parameter terms against an
// allocated model, its sharding arithmetic, and the refusal message (keys and bytes).
#include "trainer/config/memory.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "model/transformer.h"
#include "tests/support/test_util.h"
#include "trainer/config/config.h"

using condensa::ConfigError;
using namespace condensa::trainer;

namespace {

double term_bytes(const MemoryEstimate& e, const std::string& what) {
  for (const auto& t : e.terms) {
    if (t.what == what) return t.bytes;
  }
  ADD_FAILURE() << "no term '" << what << "'";
  return 0;
}

std::string refusal(const MemoryEstimate& e, int64_t ranks, double machine) {
  try {
    check_memory_fits(e, ranks, machine);
  } catch (const ConfigError& err) {
    return err.what();
  }
  return "";
}

}  // namespace

TEST(MemoryEstimate, ParameterTermsAreSixteenBytesPerAllocatedParameter) {
  // The parameter terms together, against the parameters of the allocated model (MTP included):
  // fp32 weight + fp32 gradient + two fp32 AdamW moments.
  Config cfg = load_config(condensa::testing::source_path("configs/tiny.yaml"),
                           {"model.mtp_depth=1", "model.num_layers=3"});
  condensa::model::Transformer model(cfg.model);
  double allocated = 0;
  for (const auto& p : model->parameters()) allocated += static_cast<double>(p.numel());
  const MemoryEstimate e = estimate_memory(cfg, 1);
  double params = 0;
  for (const char* what :
       {"embedding + LM head", "attention", "dense MLPs", "experts", "MTP modules"}) {
    params += term_bytes(e, what);
  }
  // The embedding is shared with the MTP modules, the norms belong to no term: within 1%.
  EXPECT_NEAR(params / 16, allocated, 0.01 * allocated);
  EXPECT_DOUBLE_EQ(term_bytes(e, "logits of one micro-batch"),
                   2.0 * 32 * 259 * 4 * 2 * 2);  // micro 2 x seq 32 x vocab, x2 with MTP
  EXPECT_DOUBLE_EQ(term_bytes(e, "RoPE tables"), 128.0 * 8 / 2 * 8 * 3);
}

TEST(MemoryEstimate, ExpertParallelAndZeroOneShrinkThePerRankState) {
  Config cfg = load_config(condensa::testing::source_path("configs/tiny.yaml"));
  const double experts_1 = term_bytes(estimate_memory(cfg, 4), "experts");
  cfg.parallel.expert_parallel = 4;
  const double experts_4 = term_bytes(estimate_memory(cfg, 4), "experts");
  EXPECT_LT(experts_4, experts_1);
  const double embed_zero0 = term_bytes(estimate_memory(cfg, 4), "embedding + LM head");
  cfg.parallel.zero_stage = 1;
  // 8 bytes of weight and gradient stay, the 8 bytes of AdamW state split over dp 4.
  EXPECT_DOUBLE_EQ(term_bytes(estimate_memory(cfg, 4), "embedding + LM head"),
                   embed_zero0 * (8 + 8.0 / 4) / 16);
}

TEST(MemoryEstimate, RefusalNamesTheKeysAndTheBytes) {
  // The model.vocab_size = 2^40 is out of bounds; 2^30 with width 1024 is in bounds and
  // needs 2 x 2^40 parameters x 16 bytes = 32 TiB.
  Config cfg = load_config(condensa::testing::source_path("configs/tiny.yaml"),
                           {"model.vocab_size=1073741824", "model.hidden_size=1024"});
  const MemoryEstimate e = estimate_memory(cfg, 1);
  const std::string msg = refusal(e, 1, 64.0 * (1 << 30));
  EXPECT_NE(msg.find("more than this machine's 64.0 GiB of memory"), std::string::npos) << msg;
  EXPECT_NE(msg.find("embedding + LM head 32.0 TiB (model.vocab_size (1073741824) x "
                     "model.hidden_size (1024))"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

TEST(MemoryEstimate, RanksOnTheNodeShareTheMachine) {
  Config cfg = load_config(condensa::testing::source_path("configs/tiny.yaml"));
  const MemoryEstimate e = estimate_memory(cfg, 2);
  const double per_rank = e.total_bytes();
  EXPECT_EQ(refusal(e, 1, per_rank * 1.5), "");
  const std::string msg = refusal(e, 2, per_rank * 1.5);
  EXPECT_NE(msg.find("per rank x 2 ranks on this node"), std::string::npos) << msg;
}

TEST(MemoryEstimate, ShippedTrainingConfigsFitThisMachine) {
  EXPECT_GT(machine_memory_bytes(), 1e8);
  for (const char* f : {"configs/tiny.yaml", "configs/quickstart.yaml"}) {
    Config cfg = load_config(condensa::testing::source_path(f));
    EXPECT_EQ(refusal(estimate_memory(cfg, 1), 1, machine_memory_bytes()), "") << f;
  }
}
