// Tests for common/hash.h: the values every seed is derived from must never change.
#include "common/hash.h"

#include <gtest/gtest.h>

#include <string>

namespace condensa {
namespace {

// FNV-1a 64 then SplitMix64's finaliser, written out independently of common/.
uint64_t reference_hash_string(const std::string& s) {
  uint64_t h = 14695981039346656037ULL;                      // FNV offset basis
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;  // FNV prime
  h += 0x9e3779b97f4a7c15ULL;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

TEST(Hash, HashStringKeepsItsValues) {
  // Pinned: weight init, synthetic data and sampling seeds all depend on these.
  EXPECT_EQ(hash_string(""), 0xc3817c016ba4ff30ULL);
  EXPECT_EQ(hash_string("layers.0.w"), 0xe2db1ab2aa3c90e1ULL);
  EXPECT_EQ(hash_string("synthetic.document"), 0x970a0246c5f8e4b4ULL);
  EXPECT_EQ(hash_string("model.layers.3.mlp.experts.w1"), 0xa3a66d11c020b503ULL);
  for (const char* s : {"", "a", "embed", "layers.12.attn.wq", "\xff\x80"})
    EXPECT_EQ(hash_string(s), reference_hash_string(s)) << s;
}

TEST(Hash, RngIsSplitMix64) {
  // The reference output of splitmix64.c (prng.di.unimi.it) seeded with 1234567.
  Rng rng(1234567);
  for (uint64_t expected : {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL,
                            4593380528125082431ULL, 16408922859458223821ULL})
    EXPECT_EQ(rng.next(), expected);
  EXPECT_EQ(rng.state(), 1234567ULL + 5 * 0x9e3779b97f4a7c15ULL);
}

}  // namespace
}  // namespace condensa
