// Deterministic hashing for seeds.
//
// Every random stream in condensa (weight init, synthetic data, sampling) is derived from the
// run seed and a stable key (a parameter's global name, a step index, a sample index), never
// from the rank. These helpers are the only way keys become seeds.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/checksum.h"

namespace condensa {

// SplitMix64 finaliser: a good 64-bit mixer.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// FNV-1a 64 over the bytes (common/checksum.h), then mixed. Seeds depend on these values.
inline uint64_t hash_string(std::string_view s) { return mix64(fnv1a64(s)); }

inline uint64_t hash_combine(uint64_t a, uint64_t b) {
  return mix64(a ^ (mix64(b) + 0x632be59bd9b4e019ULL));
}

template <class... Rest>
uint64_t hash_combine(uint64_t a, uint64_t b, Rest... rest) {
  return hash_combine(hash_combine(a, b), static_cast<uint64_t>(rest)...);
}

// A small, fast, deterministic PRNG (xoshiro-like quality is not needed: SplitMix64 stream).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // mix64 adds the golden-ratio increment itself, so this is SplitMix64's next().
  uint64_t next() {
    const uint64_t z = mix64(state_);
    state_ += 0x9e3779b97f4a7c15ULL;
    return z;
  }
  // Uniform integer in [0, n).
  uint64_t uniform(uint64_t n) { return n == 0 ? 0 : next() % n; }
  // Uniform double in [0, 1).
  double uniform01() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

}  // namespace condensa
