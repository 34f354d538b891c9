// Which config changes a resumed run may make (trainer/checkpoint/resume_rules.h).
#include "trainer/checkpoint/resume_rules.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "trainer/config/config.h"

namespace condensa::trainer {
namespace {

Config config(const std::vector<std::string>& overrides) {
  return parse_config_text("{}", overrides);
}

std::string refusal(const Config& saved, const Config& resumed, int64_t step) {
  try {
    check_resume_config(saved, resumed, step, "ck/step_00000020");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ResumeRules, TrajectoryKeysAreRefusedWithEveryDifferenceListed) {
  const Config saved = config({"train.steps=20"});
  const Config resumed = config({"train.steps=30", "optim.lr=0.01", "model.hidden_size=128",
                                 "run.seed=7", "data.val_fraction=0.1", "train.dtype=bf16"});
  const std::string msg = refusal(saved, resumed, 20);
  for (const char* part :
       {"ck/step_00000020", "optim.lr: 0.003 -> 0.01", "model.hidden_size: 64 -> 128",
        "run.seed: 1234 -> 7", "data.val_fraction: 0.05 -> 0.1", "train.dtype: 'fp32' -> 'bf16'",
        "checkpoint.allow_config_change=true"}) {
    EXPECT_NE(msg.find(part), std::string::npos) << msg << "\n  lacks: " << part;
  }
  EXPECT_EQ(msg.find("train.steps"), std::string::npos) << "an extension is not refused: " << msg;
}

TEST(ResumeRules, AllowConfigChangeAcceptsAndNotesEachChange) {
  const Config saved = config({"train.steps=20"});
  const Config resumed =
      config({"train.steps=20", "optim.lr=0.01", "checkpoint.allow_config_change=true"});
  const auto notes = check_resume_config(saved, resumed, 20, "ck");
  ASSERT_EQ(notes.size(), 2u);  // optim.lr and checkpoint.allow_config_change itself
  EXPECT_NE(notes[0].find("optim.lr: 0.003 -> 0.01 (changes the trajectory"), std::string::npos)
      << notes[0];
}

TEST(ResumeRules, LayoutLoggingCadenceAndLongerRunsAreAllowedAndNoted) {
  const Config saved = config({"train.steps=20"});
  const Config resumed = config(
      {"train.steps=40", "run.dir=elsewhere", "run.threads=2", "parallel.expert_parallel=2",
       "parallel.zero_stage=1", "train.micro_batch_size=2", "checkpoint.every=5", "log.every=1",
       "train.eval_every=5", "train.stop_at_step=30", "train.max_skipped_steps=0"});
  const auto notes = check_resume_config(saved, resumed, 20, "ck");
  EXPECT_EQ(notes.size(), 11u);
  EXPECT_EQ(notes[0], "run.dir: 'runs/default' -> 'elsewhere'");
  bool steps_noted = false;
  for (const auto& n : notes)
    steps_noted |= n == "train.steps: 20 -> 40 (the learning-rate schedule follows the new total)";
  EXPECT_TRUE(steps_noted);
  for (const auto& c : config_changes(saved, resumed)) EXPECT_FALSE(c.trajectory) << c.key;
}

TEST(ResumeRules, TrainStepsBelowTheCheckpointIsAnError) {
  const Config saved = config({"train.steps=20"});
  const std::string msg = refusal(saved, config({"train.steps=10"}), 20);
  EXPECT_NE(msg.find("train.steps (10) is below the step of the checkpoint it resumes (20"),
            std::string::npos)
      << msg;
  EXPECT_EQ(refusal(saved, config({"train.steps=20"}), 20), "");  // complete, not an error
}

TEST(ResumeRules, StepZeroCheckpointIsNotCompared) {
  // condensa import stores defaults for everything but the model: nothing was trained yet.
  EXPECT_TRUE(check_resume_config(config({}), config({"optim.lr=0.01"}), 0, "ck").empty());
}

TEST(ResumeRules, SegmentConfigName) {
  EXPECT_EQ(segment_config_name(0), "config.step_00000000.yaml");
  EXPECT_EQ(segment_config_name(20), "config.step_00000020.yaml");
}

}  // namespace
}  // namespace condensa::trainer
