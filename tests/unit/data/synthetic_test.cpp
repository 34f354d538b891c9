// Tests for data/synthetic.h: determinism, document shape, and that each language is what it
// claims to be, checked by independent parsers of the generated text.
#include "data/synthetic.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "data/tokenizer.h"

namespace condensa::data {
namespace {

int language_index(const SyntheticMixture& m, const std::string& name) {
  const auto& names = m.language_names();
  auto it = std::find(names.begin(), names.end(), name);
  return it == names.end() ? -1 : static_cast<int>(it - names.begin());
}

// Body lines (between BOS and EOS) of the first `count` documents of one language.
std::vector<std::string> lines_of(const SyntheticMixture& m, const std::string& name, int count) {
  const int lang = language_index(m, name);
  std::vector<std::string> lines;
  for (uint64_t key = 0; count > 0; ++key) {
    Document d = m.generate(key);
    if (d.language != lang) continue;
    --count;
    std::string body(d.tokens.begin() + 1, d.tokens.end() - 1);
    std::istringstream in(body);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  return lines;
}

TEST(Synthetic, DeterministicInSeedAndKey) {
  SyntheticMixture a(7), b(7), c(8);
  int differs_by_seed = 0, differs_by_key = 0;
  for (uint64_t key = 0; key < 200; ++key) {
    Document da = a.generate(key);
    Document db = b.generate(key);
    EXPECT_EQ(da.tokens, db.tokens);
    EXPECT_EQ(da.language, db.language);
    differs_by_seed += c.generate(key).tokens != da.tokens;
    differs_by_key += a.generate(key + 1000).tokens != da.tokens;
  }
  EXPECT_GT(differs_by_seed, 190);
  EXPECT_GT(differs_by_key, 190);
}

TEST(Synthetic, AllLanguagesNamedAndDrawnEvenly) {
  SyntheticMixture m(1);
  const auto& names = m.language_names();
  ASSERT_GE(m.num_languages(), 7);
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), names.size());
  for (const char* n :
       {"arithmetic", "sort", "copy", "reverse", "markov_a", "markov_b", "markov_c"}) {
    EXPECT_GE(language_index(m, n), 0) << n;
  }
  std::vector<int> counts(m.num_languages());
  const int num_docs = 8000;
  for (uint64_t key = 0; key < num_docs; ++key) counts.at(m.generate(key).language)++;
  for (int l = 0; l < m.num_languages(); ++l) {
    EXPECT_GT(counts[l], num_docs / m.num_languages() * 0.8) << names[l];
  }
}

TEST(Synthetic, DocumentsAreWrappedAndShort) {
  SyntheticMixture m(2);
  for (uint64_t key = 0; key < 2000; ++key) {
    Document d = m.generate(key);
    ASSERT_GE(d.tokens.size(), 10u) << key;
    ASSERT_LE(d.tokens.size(), 400u) << key;
    EXPECT_EQ(d.tokens.front(), ByteTokenizer::kBos);
    EXPECT_EQ(d.tokens.back(), ByteTokenizer::kEos);
    for (size_t i = 1; i + 1 < d.tokens.size(); ++i) {
      ASSERT_TRUE(d.tokens[i] >= 0 && d.tokens[i] < 256) << "key " << key << " pos " << i;
    }
  }
}

TEST(Synthetic, ArithmeticResultsAreCorrect) {
  SyntheticMixture m(3);
  auto lines = lines_of(m, "arithmetic", 100);
  ASSERT_GT(lines.size(), 300u);
  int plus = 0, minus = 0;
  for (const auto& line : lines) {
    long a = 0, b = 0, c = 0;
    char op = 0, eq = 0;
    std::istringstream in(line);
    ASSERT_TRUE(in >> a >> op >> b >> eq >> c) << line;
    ASSERT_EQ(eq, '=') << line;
    ASSERT_TRUE(op == '+' || op == '-') << line;
    EXPECT_EQ(c, op == '+' ? a + b : a - b) << line;
    EXPECT_GE(c, 0) << line;
    (op == '+' ? plus : minus)++;
  }
  EXPECT_GT(plus, 50);
  EXPECT_GT(minus, 50);
}

TEST(Synthetic, SortCopyReverseAnswersAreCorrect) {
  SyntheticMixture m(4);
  for (const auto& line : lines_of(m, "sort", 100)) {
    ASSERT_EQ(line.rfind("sort ", 0), 0u) << line;
    size_t gt = line.find(" > ");
    ASSERT_NE(gt, std::string::npos) << line;
    std::istringstream q(line.substr(5, gt - 5)), a(line.substr(gt + 3));
    std::vector<int> question, answer;
    for (int x; q >> x;) question.push_back(x);
    for (int x; a >> x;) answer.push_back(x);
    ASSERT_GE(question.size(), 3u) << line;
    std::sort(question.begin(), question.end());
    EXPECT_EQ(answer, question) << line;
  }
  for (const char* name : {"copy", "reverse"}) {
    const std::string prefix = std::string(name) + " ";
    for (const auto& line : lines_of(m, name, 100)) {
      ASSERT_EQ(line.rfind(prefix, 0), 0u) << line;
      size_t gt = line.find(" > ");
      ASSERT_NE(gt, std::string::npos) << line;
      std::string word = line.substr(prefix.size(), gt - prefix.size());
      std::string answer = line.substr(gt + 3);
      ASSERT_GE(word.size(), 3u) << line;
      if (prefix == "reverse ") std::reverse(word.begin(), word.end());
      EXPECT_EQ(answer, word) << line;
    }
  }
}

// Observed successor sets of each Markov symbol, per Markov language.
std::map<int, std::map<int, std::set<int>>> markov_transitions(const SyntheticMixture& m,
                                                               int num_docs) {
  std::map<int, std::map<int, std::set<int>>> next;  // language -> symbol -> successors
  for (uint64_t key = 0; key < static_cast<uint64_t>(num_docs); ++key) {
    Document d = m.generate(key);
    if (m.language_names()[d.language].rfind("markov", 0) != 0) continue;
    for (size_t i = 1; i + 2 < d.tokens.size(); ++i)
      next[d.language][d.tokens[i]].insert(d.tokens[i + 1]);
  }
  return next;
}

TEST(Synthetic, MarkovAlphabetsAreDisjointHighBytesAndSparse) {
  SyntheticMixture m(5);
  auto next = markov_transitions(m, 4000);
  ASSERT_GE(next.size(), 3u);
  std::map<int, int> owner;  // byte -> language
  for (const auto& [lang, table] : next) {
    for (const auto& [symbol, successors] : table) {
      EXPECT_GE(symbol, 0x80) << m.language_names()[lang];
      auto [it, inserted] = owner.emplace(symbol, lang);
      EXPECT_TRUE(inserted || it->second == lang)
          << "byte " << symbol << " used by " << m.language_names()[it->second] << " and "
          << m.language_names()[lang];
      EXPECT_LE(successors.size(), 4u) << m.language_names()[lang] << " byte " << symbol;
      EXPECT_GE(successors.size(), 1u);
    }
  }
  // Task languages stay in ASCII, so no byte is shared with a Markov language.
  for (uint64_t key = 0; key < 2000; ++key) {
    Document d = m.generate(key);
    if (m.language_names()[d.language].rfind("markov", 0) == 0) continue;
    for (size_t i = 1; i + 1 < d.tokens.size(); ++i) ASSERT_LT(d.tokens[i], 0x80);
  }
}

TEST(Synthetic, MarkovTablesAreDrawnFromSeed) {
  auto a = markov_transitions(SyntheticMixture(11), 2000);
  auto b = markov_transitions(SyntheticMixture(12), 2000);
  EXPECT_NE(a, b);
  EXPECT_EQ(a, markov_transitions(SyntheticMixture(11), 2000));
}

TEST(Synthetic, BigramEntropyIsFarBelowUniform) {
  // A bigram model is a lower bar than a small transformer: if the conditional entropy
  // H(next | current) of the stream is low, the data is learnable.
  SyntheticMixture m(6);
  std::map<std::pair<int, int>, double> pair_counts;
  std::map<int, double> counts;
  double total = 0;
  for (uint64_t key = 0; key < 4000; ++key) {
    Document d = m.generate(key);
    for (size_t i = 0; i + 1 < d.tokens.size(); ++i) {
      pair_counts[{d.tokens[i], d.tokens[i + 1]}] += 1;
      counts[d.tokens[i]] += 1;
      total += 1;
    }
  }
  double entropy = 0;
  for (const auto& [pair, n] : pair_counts) entropy -= n / total * std::log(n / counts[pair.first]);
  EXPECT_LT(entropy, 2.0) << "uniform is " << std::log(259.0);
  EXPECT_GT(entropy, 0.3) << "degenerate data";
}

}  // namespace
}  // namespace condensa::data
