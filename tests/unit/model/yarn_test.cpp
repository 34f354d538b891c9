// YaRN rope scaling against a plain-double transcription of the published formula
// (DeepSeek-V3 inference code, precompute_freqs_cis, and the Hugging Face DeepseekV3 "yarn"
// rope): per rotary pair i, the original frequency theta^(-2i/R) is kept for the fast dims
// below the correction range, divided by the factor for the slow dims above it, and blended
// linearly inside it; the correction range comes from beta_fast / beta_slow rotations over
// the original context. The attention softmax scale is multiplied by mscale^2 with
// mscale = 0.1 * mscale_all_dim * ln(factor) + 1, and the cos/sin tables by
// get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim).
//
// Shape legend: S positions, R rope dims (R/2 rotary pairs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/layers.h"

using namespace condensa::model;

namespace {

constexpr double kPi = 3.14159265358979323846;

// Rotary dims index at which a frequency makes `rotations` turns over `context` positions.
double correction_dim(double rotations, int64_t dim, double base, int64_t context) {
  return dim * std::log(context / (rotations * 2 * kPi)) / (2 * std::log(base));
}

double get_mscale(double factor, double mscale) {
  return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

struct YarnReference {
  std::vector<double> freq;  // per rotary pair
  double low = 0, high = 0;  // correction range (pair indices)
  double table_scale = 1;    // multiplies cos and sin
  double softmax_scale = 0;
};

YarnReference yarn_reference(const ModelConfig& c) {
  YarnReference ref;
  const int64_t dim = c.qk_rope_head_dim;
  ref.low = std::max(
      std::floor(correction_dim(c.rope_beta_fast, dim, c.rope_theta, c.rope_original_max_seq_len)),
      0.0);
  ref.high = std::min(
      std::ceil(correction_dim(c.rope_beta_slow, dim, c.rope_theta, c.rope_original_max_seq_len)),
      static_cast<double>(dim - 1));
  if (ref.low == ref.high) ref.high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double original = 1.0 / std::pow(c.rope_theta, 2.0 * i / dim);
    double interpolate = (i - ref.low) / (ref.high - ref.low);  // 0 = keep, 1 = divide
    interpolate = std::min(1.0, std::max(0.0, interpolate));
    ref.freq.push_back(original * (1 - interpolate) + original / c.rope_factor * interpolate);
  }
  ref.table_scale =
      get_mscale(c.rope_factor, c.rope_mscale) / get_mscale(c.rope_factor, c.rope_mscale_all_dim);
  const double m = get_mscale(c.rope_factor, c.rope_mscale_all_dim);
  ref.softmax_scale = 1.0 / std::sqrt(static_cast<double>(c.qk_head_dim())) * m * m;
  return ref;
}

ModelConfig yarn_config() {
  ModelConfig c;  // DeepSeek-V3's rope scaling on a small rope dim
  c.qk_rope_head_dim = 16;
  c.qk_nope_head_dim = 8;
  c.rope_theta = 10000;
  c.rope_factor = 40;
  c.rope_original_max_seq_len = 4096;
  c.max_seq_len = 8192;
  c.rope_beta_fast = 32;
  c.rope_beta_slow = 1;
  c.rope_mscale = 1;
  c.rope_mscale_all_dim = 1;
  return c;
}

void expect_tables_match(const ModelConfig& c, const YarnReference& ref) {
  auto rope = make_rope_tables(c);
  ASSERT_EQ(rope.cos_SR.sizes(), (std::vector<int64_t>{c.max_seq_len, c.qk_rope_head_dim / 2}));
  for (int64_t pos : {int64_t(0), int64_t(1), int64_t(7), int64_t(4095), c.max_seq_len - 1}) {
    for (int64_t i = 0; i < c.qk_rope_head_dim / 2; ++i) {
      const double angle = pos * ref.freq[i];
      EXPECT_NEAR(rope.cos_SR[pos][i].item<double>(), std::cos(angle) * ref.table_scale, 1e-9)
          << "pos " << pos << " pair " << i;
      EXPECT_NEAR(rope.sin_SR[pos][i].item<double>(), std::sin(angle) * ref.table_scale, 1e-9)
          << "pos " << pos << " pair " << i;
    }
  }
}

}  // namespace

TEST(Yarn, TablesAndSoftmaxScaleMatchTheFormula) {
  const auto c = yarn_config();
  const auto ref = yarn_reference(c);
  // The case exercises all three regimes: kept, blended and interpolated pairs.
  ASSERT_EQ(ref.low, 2.0);
  ASSERT_EQ(ref.high, 6.0);
  expect_tables_match(c, ref);
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(attention_softmax_scale(c), m * m / std::sqrt(24.0), 1e-15);
  EXPECT_NEAR(attention_softmax_scale(c), ref.softmax_scale, 1e-15);
  MLA mla(c);
  EXPECT_NEAR(mla->softmax_scale, ref.softmax_scale, 1e-15);
}

TEST(Yarn, TableScaleIsTheRatioOfTheTwoMscales) {
  auto c = yarn_config();
  c.rope_factor = 8;
  c.rope_mscale = 0.707;
  c.rope_mscale_all_dim = 1.0;
  const auto ref = yarn_reference(c);
  ASSERT_LT(ref.table_scale, 0.99);
  expect_tables_match(c, ref);
  EXPECT_NEAR(attention_softmax_scale(c), ref.softmax_scale, 1e-15);
}

TEST(Yarn, FactorOneIsPlainRope) {
  auto c = yarn_config();
  c.rope_factor = 1;
  YarnReference ref;
  for (int64_t i = 0; i < c.qk_rope_head_dim / 2; ++i)
    ref.freq.push_back(1.0 / std::pow(c.rope_theta, 2.0 * i / c.qk_rope_head_dim));
  expect_tables_match(c, ref);
  EXPECT_NEAR(attention_softmax_scale(c), 1.0 / std::sqrt(24.0), 1e-15);
}
