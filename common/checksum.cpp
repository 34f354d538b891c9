// XXH64 written out from the reference algorithm (github.com/Cyan4973/xxHash, xxhash.h), for
// 64-bit words read in host order; FNV-1a 64 is inline in the header.
#include "common/checksum.h"

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the XXH64 implementation below reads words in host order and needs a little-endian host"
#endif

namespace condensa {

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian host (checked above)
  return v;
}
inline uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
  return rotl(acc + input * kP2, 31) * kP1;
}
inline uint64_t xxh_merge(uint64_t h, uint64_t acc) { return (h ^ xxh_round(0, acc)) * kP1 + kP4; }

}  // namespace

Xxh64::Xxh64(uint64_t seed) : acc_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1}, seed_(seed) {}

void Xxh64::update(const void* data, size_t num_bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* end = p + num_bytes;
  total_len_ += num_bytes;
  if (buffered_ + num_bytes < 32) {
    if (num_bytes > 0) std::memcpy(buffer_ + buffered_, p, num_bytes);
    buffered_ += num_bytes;
    return;
  }
  if (buffered_ > 0) {
    const size_t fill = 32 - buffered_;
    std::memcpy(buffer_ + buffered_, p, fill);
    for (int i = 0; i < 4; ++i) acc_[i] = xxh_round(acc_[i], read64(buffer_ + 8 * i));
    p += fill;
    buffered_ = 0;
  }
  for (; p + 32 <= end; p += 32) {
    for (int i = 0; i < 4; ++i) acc_[i] = xxh_round(acc_[i], read64(p + 8 * i));
  }
  buffered_ = static_cast<size_t>(end - p);
  std::memcpy(buffer_, p, buffered_);
}

uint64_t Xxh64::digest() const {
  uint64_t h;
  if (total_len_ >= 32) {
    h = rotl(acc_[0], 1) + rotl(acc_[1], 7) + rotl(acc_[2], 12) + rotl(acc_[3], 18);
    for (int i = 0; i < 4; ++i) h = xxh_merge(h, acc_[i]);
  } else {
    h = seed_ + kP5;
  }
  h += total_len_;
  const unsigned char* p = buffer_;
  const unsigned char* end = buffer_ + buffered_;
  for (; p + 8 <= end; p += 8) h = rotl(h ^ xxh_round(0, read64(p)), 27) * kP1 + kP4;
  if (p + 4 <= end) {
    h = rotl(h ^ (static_cast<uint64_t>(read32(p)) * kP1), 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) h = rotl(h ^ (*p * kP5), 11) * kP1;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t file_xxh64(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw IoError(str("cannot read ", path, ": ", std::strerror(errno)));
  Xxh64 h;
  std::vector<char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) h.update(buf.data(), n);
  const bool failed = std::ferror(f);
  std::fclose(f);
  CONDENSA_CHECK(!failed, IoError, "cannot read ", path, ": read error");
  return h.digest();
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

}  // namespace condensa
