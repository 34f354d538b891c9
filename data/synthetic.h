// The built-in synthetic mixture: a stream of short documents from several toy "languages".
//
// Key design choice: every document is a pure function of (seed, key) computed on the fly, so
// training needs no download, any process can produce any document without coordination, and
// the sampler can address the stream by (step, row) alone. The languages are chosen so that an
// MoE router has something to specialise on: the four task languages (arithmetic, sorting,
// copy, reverse) use ASCII, and each Markov language lives on its own disjoint byte range
// 0x80-0xff with a sparse transition table drawn from the seed, so a token's language is
// visible from the token itself. Every part is learnable: a bigram model already gets far
// below the uniform loss ln(259) = 5.56, and the task answers reward attention.
//
// Languages (index: name, example body between BOS and EOS):
//   0 arithmetic  "37+58=95\n12-7=5\n..."         (3-8 lines; operands 0-99; no negatives)
//   1 sort        "sort 5 2 9 > 2 5 9\n..."        (2-5 lines of 3-8 digits)
//   2 copy        "copy kqz > kqz\n..."            (2-5 lines, 3-12 lowercase letters)
//   3 reverse     "reverse kqz > zqk\n..."         (2-5 lines, 3-12 lowercase letters)
//   4 markov_a    bytes 0x80-0x9f, 2 successors per symbol, 48-191 symbols
//   5 markov_b    bytes 0xa0-0xbf, 3 successors per symbol
//   6 markov_c    bytes 0xc0-0xdf, 4 successors per symbol
//   7 markov_d    bytes 0xe0-0xff, 2 successors per symbol
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace condensa::data {

// One document in byte-tokenizer ids: BOS, body bytes, EOS.
struct Document {
  std::vector<int32_t> tokens;
  int language = -1;  // index into SyntheticMixture::language_names()
};

class SyntheticMixture {
 public:
  static constexpr int kMarkovAlphabet = 32;  // symbols per Markov language

  explicit SyntheticMixture(uint64_t seed);

  // Pure function of (seed, key); the language is drawn uniformly from the key.
  Document generate(uint64_t key) const;
  int num_languages() const { return static_cast<int>(names_.size()); }
  const std::vector<std::string>& language_names() const { return names_; }
  uint64_t seed() const { return seed_; }

 private:
  struct MarkovChain {
    int first_byte = 0;                    // alphabet is [first_byte, first_byte + 32)
    std::vector<std::vector<int>> next;    // [symbol] -> successor symbols
    std::vector<std::vector<double>> cdf;  // [symbol] -> cumulative successor probabilities
  };
  static MarkovChain make_chain(uint64_t seed, int first_byte, int branching);
  void generate_markov(const MarkovChain& chain, uint64_t rng_seed, std::string& body) const;

  uint64_t seed_;
  std::vector<std::string> names_;
  std::vector<MarkovChain> chains_;  // one per Markov language, in language order
};

}  // namespace condensa::data
