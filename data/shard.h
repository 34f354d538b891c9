// Token shards: pre-tokenized datasets on disk, read back through mmap.
//
// Key design choice: a shard is a directory of three files whose headers repeat the facts in
// index.json (dtype, vocab size, token and document counts), and open() cross-checks all of
// them plus the file sizes before any token is read, so that a truncated copy, a shard written
// by another version, or a shard made with another tokenizer fails at start-up with one message
// naming the file and both values, instead of training on garbage. Tokens are stored at the
// narrowest width that holds the vocabulary (uint16 up to 65536 ids, else uint32) and read by
// mmap, so opening a multi-GB shard costs nothing until pages are touched. index.json is
// written last, after tokens.bin and docs.bin are fsynced, and published atomically
// (common/durable_file.h): a directory without it is an unfinished shard and is never read.
//
// Layout (all integers little-endian; the full byte map is in docs/data.md):
//   tokens.bin  32-byte header {magic "CDNSTOK\0", u32 version, u32 dtype width in bytes,
//               u64 num_tokens, u32 vocab_size, u32 zero}, then num_tokens tokens.
//   docs.bin    32-byte header {magic "CDNSDOC\0", u32 version, u32 zero, u64 num_documents,
//               u64 num_tokens}, then num_documents u64 start offsets (first 0, ascending).
//   index.json  format, version, tokenizer, vocab_size, dtype, num_tokens, num_documents,
//               max_token_id (the largest id in tokens.bin, -1 for none; absent in shards
//               written before it existed), checksum ("fnv1a64:<16 hex>" of the tokens.bin
//               payload), sources.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace condensa::data {

constexpr int kShardFormatVersion = 1;
constexpr const char* kShardFormatName = "condensa-tokens";
constexpr int64_t kShardHeaderBytes = 32;

// The contents of index.json.
struct ShardInfo {
  std::string format = kShardFormatName;
  int version = kShardFormatVersion;
  std::string tokenizer;
  int64_t vocab_size = 0;
  std::string dtype;  // "uint16" or "uint32"
  int64_t num_tokens = 0;
  int64_t num_documents = 0;
  int64_t max_token_id = -1;  // -1: no tokens, or not recorded (older shards)
  uint64_t checksum = 0;      // condensa::fnv1a64 over the tokens.bin payload bytes
  std::vector<std::string> sources;

  nlohmann::json to_json() const;
  // Throws DataError naming `file` for a missing key or a value of the wrong type.
  static ShardInfo from_json(const nlohmann::json& j, const std::string& file);
};

// "uint16" when every id fits in 16 bits, else "uint32".
std::string shard_dtype_for_vocab(int64_t vocab_size);
// The index.json form of a payload checksum (condensa::fnv1a64 of common/checksum.h):
// "fnv1a64:0123456789abcdef".
std::string format_checksum(uint64_t checksum);

// Writes one shard directory. add_document() streams tokens to tokens.bin; finish() writes the
// header counts, docs.bin and finally index.json. Destroying an unfinished writer leaves a
// directory without index.json, which open() rejects.
class ShardWriter {
 public:
  // Throws DataError if `dir` already holds a shard (index.json) or cannot be written.
  ShardWriter(const std::filesystem::path& dir, const std::string& tokenizer, int64_t vocab_size);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Throws DataError for an id outside [0, vocab_size).
  void add_document(const std::vector<int32_t>& tokens);
  // Recorded in index.json "sources" (e.g. the input file of each document).
  void add_source(const std::string& source);
  ShardInfo finish();

 private:
  std::filesystem::path dir_;
  std::ofstream tokens_out_;
  ShardInfo info_;
  int width_;  // bytes per token
  std::vector<uint64_t> doc_starts_;
  std::vector<char> buffer_;
  bool finished_ = false;
};

// A read-only memory map of a whole file; unmapped on destruction.
class MappedFile {
 public:
  // Throws DataError naming the path if it is missing or cannot be mapped.
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const unsigned char* data() const { return data_; }
  int64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void release();
  std::filesystem::path path_;
  const unsigned char* data_ = nullptr;
  int64_t size_ = 0;
};

// One shard, validated and mapped.
class TokenShard {
 public:
  // Throws DataError naming the file and the offending value: missing file, wrong magic,
  // unsupported version, truncated file, header/index.json disagreement (dtype, vocab_size,
  // counts), tokenizer/vocab mismatch, and (if verify_checksum) a checksum mismatch.
  static TokenShard open(const std::filesystem::path& dir, bool verify_checksum = true);

  const ShardInfo& info() const { return info_; }
  const std::filesystem::path& dir() const { return dir_; }
  int64_t num_tokens() const { return info_.num_tokens; }
  int64_t num_documents() const { return info_.num_documents; }
  int64_t token(int64_t i) const;
  // Copies tokens [start, start + count) into out. Throws if the range is outside the shard.
  void copy(int64_t start, int64_t count, int64_t* out) const;
  // Document i is tokens [document_start(i), document_end(i)).
  int64_t document_start(int64_t i) const;
  int64_t document_end(int64_t i) const;
  // Recomputes the payload checksum and the largest token id; throws DataError naming
  // tokens.bin when either disagrees with index.json or an id is outside the vocabulary.
  void verify_checksum() const;

 private:
  TokenShard(std::filesystem::path dir, ShardInfo info, MappedFile tokens, MappedFile docs);
  std::filesystem::path dir_;
  ShardInfo info_;
  MappedFile tokens_;
  MappedFile docs_;
  int width_;
};

// One or more shards read as one token sequence, in directory-name order. `path` is either a
// shard directory (it has index.json) or a directory whose subdirectories are shards. All
// shards must share tokenizer and vocab_size.
class TokenDataset {
 public:
  static TokenDataset open(const std::filesystem::path& path, bool verify_checksum = true);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TokenShard>& shards() const { return shards_; }
  const std::string& tokenizer() const { return shards_.front().info().tokenizer; }
  int64_t vocab_size() const { return shards_.front().info().vocab_size; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_documents() const;
  // Combined checksum of all shards (in order); identifies the data for resume checks.
  uint64_t checksum() const;
  // Copies global tokens [start, start + count) into out, crossing shard boundaries.
  void copy(int64_t start, int64_t count, int64_t* out) const;

 private:
  std::filesystem::path path_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> offsets_;  // global index of each shard's first token
  int64_t num_tokens_ = 0;
};

}  // namespace condensa::data
