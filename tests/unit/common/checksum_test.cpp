// Tests for common/checksum.h against published test vectors: FNV-1a 64 (the FNV reference
// test suite) and XXH64 (xxHash's own sanity check, cli/xsum_sanity_check.c).
#include "common/checksum.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "tests/support/test_util.h"

namespace condensa {
namespace {

using condensa::testing::TempDir;

// The sanity buffer of xxHash's test suite: bytes of a multiplicative generator.
std::vector<unsigned char> xxhash_sanity_buffer(size_t n) {
  std::vector<unsigned char> buf(n);
  uint64_t gen = 2654435761ULL;
  for (size_t i = 0; i < n; ++i) {
    buf[i] = static_cast<unsigned char>(gen >> 56);
    gen *= 11400714785074694797ULL;
  }
  return buf;
}

uint64_t xxh64_of(const void* data, size_t n, uint64_t seed = 0) {
  Xxh64 h(seed);
  h.update(data, n);
  return h.digest();
}

uint64_t xxh64_of(const std::string& s) { return xxh64_of(s.data(), s.size()); }

TEST(Fnv1a64, PublishedVectors) {
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ULL);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ULL);
  EXPECT_EQ(fnv1a64(std::string_view("foobar")), 0x85944171f73967e8ULL);
  EXPECT_EQ(kFnv1a64Offset, 0xcbf29ce484222325ULL);
}

TEST(Fnv1a64, ContinuingEqualsOneShotForEverySplit) {
  std::mt19937 gen(7);
  std::string bytes(300, '\0');
  for (auto& c : bytes) c = static_cast<char>(gen());
  const uint64_t whole = fnv1a64(bytes);
  for (size_t cut = 0; cut <= bytes.size(); cut += 37) {
    const uint64_t first = fnv1a64(bytes.data(), cut);
    EXPECT_EQ(fnv1a64(bytes.data() + cut, bytes.size() - cut, first), whole) << "cut " << cut;
  }
}

TEST(Xxh64, PublishedVectors) {
  EXPECT_EQ(xxh64_of(""), 0xef46db3751d8e999ULL);
  EXPECT_EQ(xxh64_of("a"), 0xd24ec4f1a98c6e5bULL);
  EXPECT_EQ(xxh64_of("abc"), 0x44bc2cf5ad770999ULL);

  const auto buf = xxhash_sanity_buffer(222);
  const uint64_t prime = 2654435761ULL;
  EXPECT_EQ(xxh64_of(nullptr, 0, 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(xxh64_of(nullptr, 0, prime), 0xAC75FDA2929B17EFULL);
  EXPECT_EQ(xxh64_of(buf.data(), 1, 0), 0xE934A84ADB052768ULL);
  EXPECT_EQ(xxh64_of(buf.data(), 1, prime), 0x5014607643A9B4C3ULL);
  EXPECT_EQ(xxh64_of(buf.data(), 4, 0), 0x9136A0DCA57457EEULL);
  EXPECT_EQ(xxh64_of(buf.data(), 14, 0), 0x8282DCC4994E35C8ULL);
  EXPECT_EQ(xxh64_of(buf.data(), 14, prime), 0xC3BD6BF63DEB6DF0ULL);
  EXPECT_EQ(xxh64_of(buf.data(), 222, 0), 0xB641AE8CB691C174ULL);
  EXPECT_EQ(xxh64_of(buf.data(), 222, prime), 0x20CB8AB7AE10C14AULL);
}

TEST(Xxh64, StreamingEqualsOneShotForEveryChunking) {
  const auto buf = xxhash_sanity_buffer(222);
  for (size_t chunk : {1, 3, 7, 31, 32, 33, 100, 221}) {
    Xxh64 h;
    for (size_t i = 0; i < buf.size(); i += chunk)
      h.update(buf.data() + i, std::min(chunk, buf.size() - i));
    EXPECT_EQ(h.digest(), 0xB641AE8CB691C174ULL) << "chunk " << chunk;
  }
  // Random lengths and random cut points, including empty pieces.
  std::mt19937 gen(11);
  std::vector<unsigned char> data(5000);
  for (auto& c : data) c = static_cast<unsigned char>(gen());
  for (int trial = 0; trial < 20; ++trial) {
    const size_t n = gen() % data.size();
    const uint64_t expected = xxh64_of(data.data(), n, trial);
    Xxh64 h(trial);
    size_t i = 0;
    while (i < n) {
      const size_t piece = std::min<size_t>(gen() % 80, n - i);
      h.update(data.data() + i, piece);
      i += piece;
    }
    EXPECT_EQ(h.digest(), expected) << "n " << n;
    EXPECT_EQ(h.digest(), expected) << "digest() must not change the state";
  }
}

TEST(Xxh64, FileChecksumReadsTheWholeFileAndNamesAMissingOne) {
  TempDir dir("checksum");
  const auto buf = xxhash_sanity_buffer(222);
  const std::string path = (dir.path() / "f").string();
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  EXPECT_EQ(file_xxh64(path), 0xB641AE8CB691C174ULL);

  // Larger than the 1 MiB read chunk, so the file is hashed in several reads.
  std::mt19937 gen(3);
  std::string big((3 << 20) + 17, '\0');
  for (auto& c : big) c = static_cast<char>(gen());
  const std::string big_path = (dir.path() / "big").string();
  std::ofstream(big_path, std::ios::binary)
      .write(big.data(), static_cast<std::streamsize>(big.size()));
  EXPECT_EQ(file_xxh64(big_path), xxh64_of(big));

  const std::string absent = (dir.path() / "absent").string();
  try {
    file_xxh64(absent);
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(absent), std::string::npos) << e.what();
  }
}

TEST(Hex64, SixteenLowerCaseDigits) {
  EXPECT_EQ(hex64(0), "0000000000000000");
  EXPECT_EQ(hex64(0xdeadbeefULL), "00000000deadbeef");
  EXPECT_EQ(hex64(0xEF46DB3751D8E999ULL), "ef46db3751d8e999");
}

}  // namespace
}  // namespace condensa
