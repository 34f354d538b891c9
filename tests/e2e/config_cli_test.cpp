// `condensa train` with a bad configuration, through the built binary: exit code 2 and a
// message naming the key and its value; --help exits 0.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/test_util.h"

using namespace condensa::testing;

TEST(ConfigCli, TrainWithBadConfigExitsTwoAndNamesKey) {
  TempDir dir;
  std::ofstream(dir.path() / "bad.yaml") << "train: {steps: -1}\n";
  auto r = run_condensa("train " + (dir.path() / "bad.yaml").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.steps = -1"), std::string::npos) << r.output;
  auto r2 = run_condensa("train " + source_path("configs/tiny.yaml") + " --set model.top_k=9");
  EXPECT_EQ(r2.exit_code, 2) << r2.output;
  EXPECT_NE(r2.output.find("model.top_k = 9"), std::string::npos) << r2.output;
  auto r3 = run_condensa("train --help");
  EXPECT_EQ(r3.exit_code, 0) << r3.output;
  EXPECT_NE(r3.output.find("usage: condensa train"), std::string::npos) << r3.output;
}
