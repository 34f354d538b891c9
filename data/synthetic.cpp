// Synthetic mixture generators. Each generator writes the document body as bytes; generate()
// wraps it in BOS/EOS. All randomness comes from Rng seeded by hash_combine(seed, tag, key), so
// the same (seed, key) gives the same document on any machine and in any order.
#include "data/synthetic.h"

#include <algorithm>

#include "common/error.h"
#include "common/hash.h"
#include "data/tokenizer.h"

namespace condensa::data {

namespace {

constexpr int kNumTaskLanguages = 4;  // arithmetic, sort, copy, reverse
struct MarkovSpec {
  const char* name;
  int first_byte;
  int branching;
};
constexpr MarkovSpec kMarkovSpecs[] = {
    {"markov_a", 0x80, 2}, {"markov_b", 0xa0, 3}, {"markov_c", 0xc0, 4}, {"markov_d", 0xe0, 2}};

int64_t uniform_in(Rng& rng, int64_t lo, int64_t hi) {  // inclusive
  return lo + static_cast<int64_t>(rng.uniform(static_cast<uint64_t>(hi - lo + 1)));
}

void gen_arithmetic(Rng& rng, std::string& body) {
  int64_t lines = uniform_in(rng, 3, 8);
  for (int64_t i = 0; i < lines; ++i) {
    int64_t a = uniform_in(rng, 0, 99);
    int64_t b = uniform_in(rng, 0, 99);
    if (rng.uniform(2) == 0) {
      body += str(a, "+", b, "=", a + b, "\n");
    } else {
      if (a < b) std::swap(a, b);
      body += str(a, "-", b, "=", a - b, "\n");
    }
  }
}

void gen_sort(Rng& rng, std::string& body) {
  int64_t lines = uniform_in(rng, 2, 5);
  for (int64_t i = 0; i < lines; ++i) {
    std::vector<char> digits(static_cast<size_t>(uniform_in(rng, 3, 8)));
    for (char& d : digits) d = static_cast<char>('0' + rng.uniform(10));
    body += "sort";
    for (char d : digits) body.append({' ', d});
    std::sort(digits.begin(), digits.end());
    body += " >";
    for (char d : digits) body.append({' ', d});
    body += '\n';
  }
}

std::string random_word(Rng& rng) {
  std::string w(static_cast<size_t>(uniform_in(rng, 3, 12)), 'a');
  for (char& c : w) c = static_cast<char>('a' + rng.uniform(26));
  return w;
}

void gen_copy(Rng& rng, bool reverse, std::string& body) {
  int64_t lines = uniform_in(rng, 2, 5);
  for (int64_t i = 0; i < lines; ++i) {
    std::string w = random_word(rng);
    std::string answer = reverse ? std::string(w.rbegin(), w.rend()) : w;
    body += str(reverse ? "reverse " : "copy ", w, " > ", answer, "\n");
  }
}

}  // namespace

SyntheticMixture::SyntheticMixture(uint64_t seed) : seed_(seed) {
  names_ = {"arithmetic", "sort", "copy", "reverse"};
  for (const auto& spec : kMarkovSpecs) {
    names_.push_back(spec.name);
    uint64_t chain_seed =
        hash_combine(seed, hash_string("synthetic.markov"), hash_string(spec.name));
    chains_.push_back(make_chain(chain_seed, spec.first_byte, spec.branching));
  }
}

SyntheticMixture::MarkovChain SyntheticMixture::make_chain(uint64_t seed,
                                                           int first_byte,
                                                           int branching) {
  Rng rng(seed);
  MarkovChain chain;
  chain.first_byte = first_byte;
  chain.next.resize(kMarkovAlphabet);
  chain.cdf.resize(kMarkovAlphabet);
  for (int s = 0; s < kMarkovAlphabet; ++s) {
    // `branching` distinct successors with random, unequal weights.
    std::vector<int> symbols(kMarkovAlphabet);
    for (int i = 0; i < kMarkovAlphabet; ++i) symbols[i] = i;
    for (int i = 0; i < branching; ++i) {
      std::swap(symbols[i], symbols[i + rng.uniform(kMarkovAlphabet - i)]);
    }
    chain.next[s].assign(symbols.begin(), symbols.begin() + branching);
    std::vector<double> weights(branching);
    double total = 0;
    for (double& w : weights) total += (w = 0.2 + rng.uniform01());
    double acc = 0;
    for (double w : weights) chain.cdf[s].push_back(acc += w / total);
    chain.cdf[s].back() = 1.0;
  }
  return chain;
}

void SyntheticMixture::generate_markov(const MarkovChain& chain,
                                       uint64_t rng_seed,
                                       std::string& body) const {
  Rng rng(rng_seed);
  int64_t length = uniform_in(rng, 48, 191);
  int symbol = static_cast<int>(rng.uniform(kMarkovAlphabet));
  for (int64_t i = 0; i < length; ++i) {
    body.push_back(static_cast<char>(chain.first_byte + symbol));
    const auto& cdf = chain.cdf[symbol];
    size_t pick = std::upper_bound(cdf.begin(), cdf.end(), rng.uniform01()) - cdf.begin();
    symbol = chain.next[symbol][std::min(pick, cdf.size() - 1)];
  }
}

Document SyntheticMixture::generate(uint64_t key) const {
  Rng rng(hash_combine(seed_, hash_string("synthetic.document"), key));
  Document doc;
  doc.language = static_cast<int>(rng.uniform(static_cast<uint64_t>(num_languages())));
  std::string body;
  switch (doc.language) {
    case 0:
      gen_arithmetic(rng, body);
      break;
    case 1:
      gen_sort(rng, body);
      break;
    case 2:
      gen_copy(rng, /*reverse=*/false, body);
      break;
    case 3:
      gen_copy(rng, /*reverse=*/true, body);
      break;
    default:
      generate_markov(chains_[doc.language - kNumTaskLanguages], rng.next(), body);
  }
  doc.tokens.reserve(body.size() + 2);
  doc.tokens.push_back(ByteTokenizer::kBos);
  for (unsigned char c : body) doc.tokens.push_back(c);
  doc.tokens.push_back(ByteTokenizer::kEos);
  return doc;
}

}  // namespace condensa::data
