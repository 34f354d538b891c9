// Checksums: one FNV-1a 64 and one XXH64 for the whole code base.
//
// Key design choice: two hashes, each for what it is good at, and no third. FNV-1a 64 is tiny
// and byte-at-a-time, so it is defined inline here and serves both the seed keys of
// common/hash.h (hash_string) and the token-shard payload checksum, whose values are on disk
// and in every seed: it must never change. XXH64 (Yann Collet's xxHash, the same value
// `xxhsum -H1` prints) is fast over gigabytes and streams, so it checksums checkpoint files.
// Both are the reference algorithms, pinned by published test vectors in
// tests/unit/common/checksum_test.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace condensa {

// ---- FNV-1a 64 -------------------------------------------------------------------------------

inline constexpr uint64_t kFnv1a64Offset = 0xcbf29ce484222325ULL;
inline constexpr uint64_t kFnv1a64Prime = 0x100000001b3ULL;

// FNV-1a 64 of `size` bytes, continued from `h` (start with kFnv1a64Offset), so that a stream
// can be hashed piece by piece.
inline uint64_t fnv1a64(const void* data, size_t size, uint64_t h = kFnv1a64Offset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= kFnv1a64Prime;
  }
  return h;
}

inline uint64_t fnv1a64(std::string_view s, uint64_t h = kFnv1a64Offset) {
  return fnv1a64(s.data(), s.size(), h);
}

// ---- XXH64 -----------------------------------------------------------------------------------

// XXH64, streaming: update() any number of times with pieces of any size, then digest().
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t num_bytes);
  uint64_t digest() const;

 private:
  uint64_t acc_[4];
  uint64_t seed_;
  uint64_t total_len_ = 0;
  unsigned char buffer_[32];
  size_t buffered_ = 0;
};

// XXH64 (seed 0) of a whole file, read in chunks; throws IoError naming it.
uint64_t file_xxh64(const std::string& path);

// ---- formatting ------------------------------------------------------------------------------

// 16 lower-case hex digits, zero-padded: "00000000deadbeef".
std::string hex64(uint64_t v);

}  // namespace condensa
