// Tests for `condensa data` through the built binary.
#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tests/support/test_util.h"

namespace condensa::data {
namespace {

namespace fs = std::filesystem;
using condensa::testing::CommandResult;
using condensa::testing::run_condensa;
using condensa::testing::TempDir;

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(DataCli, PrepareThenInspect) {
  TempDir in("cli-in"), out("cli-out");
  write_text(in.path() / "corpus" / "z.txt", "zeta\n");
  write_text(in.path() / "corpus" / "a" / "b.txt", "alpha beta");
  write_text(in.path() / "corpus" / "empty.txt", "");
  write_text(in.path() / "single.txt", std::string("x\0\xff", 3));
  const fs::path shard_dir = out.path() / "shard";

  CommandResult r =
      run_condensa("data prepare --input " + (in.path() / "corpus").string() + " --input " +
                   (in.path() / "single.txt").string() + " --out " + shard_dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "24 tokens, 3 documents (1 empty files skipped)")) << r.output;

  // Documents in order: the directory sorted by path, then the second --input.
  TokenShard shard = TokenShard::open(shard_dir);
  ASSERT_EQ(shard.num_documents(), 3);
  ByteTokenizer tok;
  std::vector<std::string> expected = {"alpha beta", "zeta\n", std::string("x\0\xff", 3)};
  for (int64_t d = 0; d < 3; ++d) {
    std::vector<int64_t> ids(shard.document_end(d) - shard.document_start(d));
    shard.copy(shard.document_start(d), static_cast<int64_t>(ids.size()), ids.data());
    ASSERT_GE(ids.size(), 2u);
    EXPECT_EQ(ids.front(), ByteTokenizer::kBos);
    EXPECT_EQ(ids.back(), ByteTokenizer::kEos);
    EXPECT_EQ(tok.decode(std::vector<int32_t>(ids.begin(), ids.end())), expected[d]);
  }
  EXPECT_EQ(shard.info().sources.size(), 3u);
  EXPECT_TRUE(contains(shard.info().sources[0], "b.txt"));

  r = run_condensa("data inspect " + shard_dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "\"num_tokens\": 24")) << r.output;
  EXPECT_TRUE(contains(r.output, "checksum ok")) << r.output;
  EXPECT_TRUE(contains(r.output, "<bos>alpha beta<eos>")) << r.output;

  // Corrupt one payload byte: inspect fails with exit 1 and names the file.
  {
    std::fstream f(shard_dir / "tokens.bin", std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(34);
    f.put('Q');
  }
  r = run_condensa("data inspect " + shard_dir.string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "tokens.bin: checksum mismatch")) << r.output;

  // Writing over an existing shard is refused.
  r = run_condensa("data prepare --input " + (in.path() / "single.txt").string() + " --out " +
                   shard_dir.string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "already contains a shard")) << r.output;
}

// `condensa data <args>`; returns its output when it exits 2 (a configuration error), else "".
std::string config_error(const std::vector<std::string>& args) {
  std::string cmd = "data";
  for (const auto& a : args) cmd += " '" + a + "'";
  CommandResult r = run_condensa(cmd);
  return r.exit_code == 2 ? r.output : "";
}

TEST(DataCli, BadFlagsAndMissingArgumentsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"prepare", "--bogus", "1", "--out", "/tmp/x"}, "unknown flag '--bogus'"},
      {{"prepare", "--input", "/tmp"}, "missing --out"},
      {{"prepare", "--out", "/tmp/x"}, "missing --input"},
      {{"prepare", "--input", "/tmp", "--out", "/tmp/x", "--tokenizer", "gpt9"},
       "unknown tokenizer 'gpt9'"},
      {{"prepare", "--input"}, "flag --input needs a value"},
      {{"inspect"}, "expected one shard directory, got 0"},
      {{"inspect", "--verify"}, "unknown flag '--verify'"},
      {{"sample", "--count", "abc"}, "--count expects a non-negative integer, got 'abc'"},
      {{"sample", "--seed", "-3"}, "--seed expects a non-negative integer, got '-3'"},
      {{"sample", "--seed", "1", "--seed", "2"}, "flag --seed given 2 times"},
      {{"sample", "extra"}, "unexpected argument 'extra'"},
      {{"frobnicate"}, "unknown data subcommand 'frobnicate'"},
      {{}, "missing subcommand"},
  };
  for (const auto& c : cases) {
    std::string msg = config_error(c.args);
    EXPECT_TRUE(contains(msg, c.expected))
        << "expected '" << c.expected << "', got '" << msg << "'";
  }
}

TEST(DataCli, BadFlagExitsTwo) {
  CommandResult r = run_condensa("data sample --bogus 1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "unknown flag '--bogus'")) << r.output;
}

TEST(DataCli, MissingInputExitsOneNamingPath) {
  TempDir out("cli-out");
  CommandResult r = run_condensa("data prepare --input /nonexistent/condensa.txt --out " +
                                 (out.path() / "s").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "/nonexistent/condensa.txt")) << r.output;
}

// Output of `condensa data <args>`, which must exit 0.
std::string run_ok(const std::vector<std::string>& args) {
  std::string cmd = "data";
  for (const auto& a : args) cmd += " '" + a + "'";
  CommandResult r = run_condensa(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return r.output;
}

TEST(DataCli, HelpExitsZero) {
  for (const char* sub : {"--help", "prepare", "inspect", "sample"}) {
    std::vector<std::string> args = {sub};
    if (args[0] != "--help") args.push_back("--help");
    EXPECT_TRUE(contains(run_ok(args), "usage: condensa data")) << sub;
  }
}

TEST(DataCli, SampleIsDeterministicAndLabelled) {
  std::string a = run_ok({"sample", "--seed", "5", "--count", "30"});
  std::string b = run_ok({"sample", "--seed=5", "--count=30"});
  std::string c = run_ok({"sample", "--seed", "6", "--count", "30"});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_TRUE(contains(a, "--- document 29: ")) << a;
  EXPECT_FALSE(contains(a, "--- document 30: ")) << a;
  EXPECT_TRUE(contains(a, "arithmetic")) << a;
  EXPECT_TRUE(contains(a, "<bos>")) << a;
}

}  // namespace
}  // namespace condensa::data
