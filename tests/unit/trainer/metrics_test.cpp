// Routing reports: per-language expert counts against an explicit loop over assignments.
#include "trainer/metrics.h"

#include <gtest/gtest.h>

using condensa::trainer::count_tokens_by_language;

TEST(Metrics, CountsTokensPerLanguageAndExpert) {
  const int64_t T = 40, K = 3, L = 4, E = 7;
  torch::manual_seed(21);
  auto idx = torch::randint(0, E, {T, K}, torch::kInt64);
  idx.masked_fill_(torch::rand({T, K}) < 0.2, -1);            // dropped by capacity
  auto lang = torch::randint(-1, L + 2, {T}, torch::kInt64);  // -1 and >= L: not counted
  auto counts = count_tokens_by_language(idx, lang, L, E);
  ASSERT_EQ(counts.sizes(), (std::vector<int64_t>{L, E}));
  ASSERT_EQ(counts.scalar_type(), torch::kInt64);

  std::vector<std::vector<int64_t>> expected(L, std::vector<int64_t>(E, 0));
  int64_t counted = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t l = lang[t].item<int64_t>();
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = idx[t][k].item<int64_t>();
      if (l >= 0 && l < L && e >= 0) ++expected[l][e], ++counted;
    }
  }
  ASSERT_GT(counted, 0);
  ASSERT_LT(counted, T * K);  // the case exercises the uncounted paths
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(counts[l][e].item<int64_t>(), expected[l][e])
          << "language " << l << " expert " << e;
  }
}
