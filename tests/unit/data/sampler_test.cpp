// Tests for data/sampler.h: determinism, layout (dp) independence, splits and errors.
#include "data/sampler.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tests/support/test_util.h"

namespace condensa::data {
namespace {

using condensa::testing::TempDir;

// A shard whose token at global position i is i % 60000 (so a window's start is visible).
void write_position_shard(const std::filesystem::path& dir, int64_t num_tokens) {
  ShardWriter w(dir, "positions", 60000);
  std::vector<int32_t> doc;
  for (int64_t i = 0; i < num_tokens; ++i) {
    doc.push_back(static_cast<int32_t>(i % 60000));
    if (doc.size() == 100 || i + 1 == num_tokens) {
      w.add_document(doc);
      doc.clear();
    }
  }
  w.finish();
}

SamplerOptions synthetic_options() {
  SamplerOptions o;
  o.seed = 99;
  o.seq_len = 64;
  o.global_batch_size = 8;
  return o;
}

bool same(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && torch::equal(a, b);
}

// The global batch assembled the way dp ranks read it: each rank its dp_row_slice, split into
// micro batches of `micro` rows, ranks visited last-first so that call order cannot matter.
Batch assemble(const DataSource& src, Split split, int64_t step, int64_t dp, int64_t micro) {
  std::vector<torch::Tensor> tokens(dp), language(dp);
  for (int64_t r = dp - 1; r >= 0; --r) {
    RowSlice s = dp_row_slice(src.options().global_batch_size, r, dp);
    std::vector<torch::Tensor> t, l;
    for (int64_t m = 0; m < s.num_rows; m += micro) {
      Batch b = src.batch(split, step, s.first_row + m, std::min(micro, s.num_rows - m));
      t.push_back(b.tokens);
      l.push_back(b.language);
    }
    tokens[r] = torch::cat(t);
    language[r] = torch::cat(l);
  }
  return Batch{torch::cat(tokens), torch::cat(language)};
}

void expect_dp_independent(const DataSource& src) {
  for (Split split : {Split::kTrain, Split::kVal}) {
    for (int64_t step : {0, 1, 17}) {
      Batch global = src.batch(split, step, 0, src.options().global_batch_size);
      for (int64_t dp : {1, 2, 4}) {
        for (int64_t micro : {1, 2}) {
          Batch b = assemble(src, split, step, dp, micro);
          EXPECT_TRUE(same(b.tokens, global.tokens))
              << split_name(split) << " step " << step << " dp " << dp << " micro " << micro;
          EXPECT_TRUE(same(b.language, global.language));
        }
      }
    }
  }
}

TEST(Sampler, SyntheticBatchShapeAndContent) {
  auto src = make_data_source(synthetic_options());
  Batch b = src->batch(Split::kTrain, 3, 0, 8);
  ASSERT_EQ(b.tokens.sizes(), (std::vector<int64_t>{8, 65}));
  ASSERT_EQ(b.language.sizes(), (std::vector<int64_t>{8, 65}));
  EXPECT_EQ(b.tokens.scalar_type(), torch::kInt64);
  EXPECT_EQ(b.language.scalar_type(), torch::kInt64);
  EXPECT_EQ(src->vocab_size(), 259);
  EXPECT_EQ(src->tokenizer_name(), "byte");
  const auto names = src->language_names();
  ASSERT_GE(names.size(), 7u);
  auto t = b.tokens.accessor<int64_t, 2>();
  auto l = b.language.accessor<int64_t, 2>();
  for (int64_t r = 0; r < 8; ++r) {
    EXPECT_EQ(t[r][0], ByteTokenizer::kBos) << "row " << r << " starts at a document";
    for (int64_t i = 0; i < 65; ++i) {
      ASSERT_TRUE(t[r][i] >= 0 && t[r][i] < 259);
      ASSERT_TRUE(l[r][i] >= 0 && l[r][i] < static_cast<int64_t>(names.size()));
      // Language only changes at a document start.
      if (i > 0 && l[r][i] != l[r][i - 1]) {
        EXPECT_EQ(t[r][i], ByteTokenizer::kBos);
      }
      // High bytes belong to Markov languages, ASCII to task languages.
      if (t[r][i] >= 0x80 && t[r][i] < 256) {
        EXPECT_EQ(names[l[r][i]].rfind("markov", 0), 0u);
      }
      if (t[r][i] < 0x80) {
        EXPECT_EQ(names[l[r][i]].rfind("markov", 0), std::string::npos);
      }
    }
  }
}

TEST(Sampler, DeterministicAcrossInstancesAndSensitiveToInputs) {
  auto a = make_data_source(synthetic_options());
  auto b = make_data_source(synthetic_options());
  SamplerOptions other_seed = synthetic_options();
  other_seed.seed = 100;
  auto c = make_data_source(other_seed);
  Batch x = a->batch(Split::kTrain, 5, 0, 8);
  EXPECT_TRUE(same(x.tokens, b->batch(Split::kTrain, 5, 0, 8).tokens));
  EXPECT_TRUE(same(x.language, b->batch(Split::kTrain, 5, 0, 8).language));
  EXPECT_FALSE(same(x.tokens, a->batch(Split::kTrain, 6, 0, 8).tokens));
  EXPECT_FALSE(same(x.tokens, c->batch(Split::kTrain, 5, 0, 8).tokens));
  // Rows within a batch differ from each other.
  EXPECT_FALSE(same(x.tokens[0], x.tokens[1]));
  EXPECT_EQ(a->fingerprint(), b->fingerprint());
  EXPECT_NE(a->fingerprint(), c->fingerprint());
  EXPECT_EQ(a->fingerprint()["seq_len"], 64);
}

TEST(Sampler, SyntheticDpIndependence) {
  expect_dp_independent(*make_data_source(synthetic_options()));
}

TEST(Sampler, TokenDpIndependence) {
  TempDir tmp("sampler");
  write_position_shard(tmp.path() / "s", 5000);
  SamplerOptions o = synthetic_options();
  o.source = "tokens";
  o.path = (tmp.path() / "s").string();
  o.val_fraction = 0.2;
  expect_dp_independent(*make_data_source(o));
}

TEST(Sampler, SyntheticTrainAndValDiffer) {
  auto src = make_data_source(synthetic_options());
  for (int64_t step = 0; step < 5; ++step) {
    Batch train = src->batch(Split::kTrain, step, 0, 8);
    Batch val = src->batch(Split::kVal, step, 0, 8);
    for (int64_t r = 0; r < 8; ++r) EXPECT_FALSE(same(train.tokens[r], val.tokens[r]));
  }
}

TEST(Sampler, TokenWindowsStayInsideTheirSplit) {
  TempDir tmp("sampler");
  const int64_t n = 5000;  // val_fraction 0.2: train [0, 4000), val [4000, 5000)
  write_position_shard(tmp.path() / "s", n);
  SamplerOptions o = synthetic_options();
  o.source = "tokens";
  o.path = (tmp.path() / "s").string();
  o.val_fraction = 0.2;
  auto src = make_data_source(o);
  EXPECT_TRUE(src->language_names().empty());
  EXPECT_EQ(src->vocab_size(), 60000);
  int64_t min_start = n, max_end = 0;
  for (Split split : {Split::kTrain, Split::kVal}) {
    const int64_t lo = split == Split::kTrain ? 0 : 4000;
    const int64_t hi = split == Split::kTrain ? 4000 : 5000;
    for (int64_t step = 0; step < 50; ++step) {
      Batch b = src->batch(split, step, 0, 8);
      EXPECT_TRUE(same(b.language, torch::full({8, 65}, -1, torch::kInt64)));
      auto t = b.tokens.accessor<int64_t, 2>();
      for (int64_t r = 0; r < 8; ++r) {
        for (int64_t i = 0; i < 65; ++i) ASSERT_EQ(t[r][i], t[r][0] + i) << "contiguous window";
        EXPECT_GE(t[r][0], lo) << split_name(split);
        EXPECT_LE(t[r][64], hi - 1) << split_name(split);
        if (split == Split::kVal) {
          min_start = std::min(min_start, t[r][0]);
          max_end = std::max(max_end, t[r][64]);
        }
      }
    }
  }
  // 400 val windows cover the held-out range from end to end.
  EXPECT_LT(min_start, 4030);
  EXPECT_GT(max_end, 4970);
}

TEST(Sampler, TokenDataShorterThanWindowNamesPathAndCounts) {
  TempDir tmp("sampler");
  write_position_shard(tmp.path() / "s", 50);
  SamplerOptions o = synthetic_options();
  o.source = "tokens";
  o.path = (tmp.path() / "s").string();
  o.val_fraction = 0;
  try {
    make_data_source(o);
    FAIL() << "no exception";
  } catch (const DataError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(o.path), std::string::npos) << msg;
    EXPECT_NE(msg.find("50 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("seq_len+1 = 65"), std::string::npos) << msg;
  }
  // Enough for train, too little held out for val.
  write_position_shard(tmp.path() / "t", 1000);
  o.path = (tmp.path() / "t").string();
  o.val_fraction = 0.05;
  try {
    make_data_source(o);
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("val split (last 50 tokens"), std::string::npos)
        << e.what();
  }
  o.val_fraction = 0;
  auto src = make_data_source(o);
  EXPECT_THROW(src->batch(Split::kVal, 0, 0, 1), ConfigError);
}

TEST(Sampler, TokenFingerprintTracksData) {
  TempDir tmp("sampler");
  write_position_shard(tmp.path() / "a", 3000);
  write_position_shard(tmp.path() / "b", 3001);
  SamplerOptions o = synthetic_options();
  o.source = "tokens";
  o.path = (tmp.path() / "a").string();
  nlohmann::json fa = make_data_source(o)->fingerprint();
  EXPECT_EQ(fa["source"], "tokens");
  EXPECT_EQ(fa["path"], o.path);
  EXPECT_EQ(fa["checksum"], format_checksum(TokenShard::open(tmp.path() / "a").info().checksum));
  o.path = (tmp.path() / "b").string();
  EXPECT_NE(make_data_source(o)->fingerprint()["checksum"], fa["checksum"]);
}

TEST(Sampler, OptionsAreValidated) {
  auto expect_config_error = [](SamplerOptions o, const std::string& part) {
    try {
      make_data_source(o);
      ADD_FAILURE() << "no exception for " << part;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  SamplerOptions o = synthetic_options();
  o.source = "hdf5";
  expect_config_error(o, "data source 'hdf5'");
  o = synthetic_options();
  o.source = "tokens";
  expect_config_error(o, "needs a path");
  o = synthetic_options();
  o.seq_len = 0;
  expect_config_error(o, "seq_len (0)");
  o = synthetic_options();
  o.global_batch_size = -2;
  expect_config_error(o, "global_batch_size (-2)");
  o = synthetic_options();
  o.val_fraction = 1.5;
  expect_config_error(o, "val_fraction (1.5)");
}

TEST(Sampler, BatchRowsAndDpSliceAreChecked) {
  auto src = make_data_source(synthetic_options());
  EXPECT_THROW(src->batch(Split::kTrain, 0, 6, 4), Error);
  EXPECT_THROW(src->batch(Split::kTrain, -1, 0, 1), Error);
  EXPECT_EQ(src->batch(Split::kTrain, 0, 8, 0).tokens.size(0), 0);
  RowSlice s = dp_row_slice(8, 3, 4);
  EXPECT_EQ(s.first_row, 6);
  EXPECT_EQ(s.num_rows, 2);
  try {
    dp_row_slice(10, 0, 4);
    FAIL() << "no exception";
  } catch (const ConfigError& e) {
    EXPECT_NE(
        std::string(e.what()).find("data-parallel size (4) must divide global_batch_size (10)"),
        std::string::npos)
        << e.what();
  }
  EXPECT_THROW(dp_row_slice(8, 4, 4), ConfigError);
}

}  // namespace
}  // namespace condensa::data
