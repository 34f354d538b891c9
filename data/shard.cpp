// Token shards: writer and mmap reader (the multi-shard TokenDataset is in dataset.cpp).
//
// Every check in TokenShard::open runs before the first token is read and names the file and
// both values that disagree; the checksum pass is the only one that touches the whole payload
// and can be skipped (verify_checksum=false) for very large shards that were verified once.
#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/checksum.h"
#include "common/durable_file.h"
#include "common/error.h"
#include "data/tokenizer.h"

namespace condensa::data {

namespace fs = std::filesystem;

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "shard files are little-endian and are read by mmap without byte swapping");

constexpr char kTokensMagic[8] = {'C', 'D', 'N', 'S', 'T', 'O', 'K', '\0'};
constexpr char kDocsMagic[8] = {'C', 'D', 'N', 'S', 'D', 'O', 'C', '\0'};

void put_u32(char* p, uint32_t v) { std::memcpy(p, &v, sizeof(v)); }
void put_u64(char* p, uint64_t v) { std::memcpy(p, &v, sizeof(v)); }
uint32_t get_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The first 8 bytes of a file, printable: "CDNSTOK\0" or with \xNN escapes.
std::string printable_magic(const unsigned char* p) {
  std::string s;
  for (int i = 0; i < 8; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f) {
      s.push_back(static_cast<char>(p[i]));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", p[i]);
      s += buf;
    }
  }
  return s;
}

int dtype_width(const std::string& dtype) { return dtype == "uint16" ? 2 : 4; }

// Checks size >= header, magic and version of a shard file; returns nothing, throws DataError.
void check_header(const MappedFile& f, const char (&magic)[8]) {
  const std::string file = f.path().string();
  CONDENSA_CHECK(f.size() >= kShardHeaderBytes, DataError, file, ": truncated: ", f.size(),
                 " bytes, smaller than the ", kShardHeaderBytes, "-byte header");
  CONDENSA_CHECK(std::memcmp(f.data(), magic, 8) == 0, DataError, file, ": wrong magic '",
                 printable_magic(f.data()), "' (expected '",
                 printable_magic(reinterpret_cast<const unsigned char*>(magic)),
                 "'; not a condensa token shard file)");
  uint32_t version = get_u32(f.data() + 8);
  CONDENSA_CHECK(version == kShardFormatVersion, DataError, file, ": unsupported format version ",
                 version, " (this build reads version ", kShardFormatVersion, ")");
}

void check_size(const MappedFile& f, int64_t count, int64_t width, const char* what) {
  int64_t expected = kShardHeaderBytes + count * width;
  CONDENSA_CHECK(f.size() == expected, DataError, f.path().string(), ": ",
                 f.size() < expected ? "truncated" : "trailing bytes", ": file has ", f.size(),
                 " bytes but the header says ", count, " ", what, " of ", width,
                 " bytes = ", expected, " bytes");
}

template <class T>
T json_field(const nlohmann::json& j, const char* key, const std::string& file) {
  auto it = j.find(key);
  CONDENSA_CHECK(it != j.end(), DataError, file, ": missing key '", key, "'");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw DataError(str(file, ": key '", key, "' has the wrong type (", it->dump(), ")"));
  }
}

uint64_t parse_checksum(const std::string& s, const std::string& file) {
  const std::string prefix = "fnv1a64:";
  bool ok = s.size() == prefix.size() + 16 && s.compare(0, prefix.size(), prefix) == 0 &&
            std::all_of(s.begin() + prefix.size(), s.end(),
                        [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
  CONDENSA_CHECK(ok, DataError, file, ": checksum '", s, "' is not of the form fnv1a64:<16 hex>");
  return std::stoull(s.substr(prefix.size()), nullptr, 16);
}

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  CONDENSA_CHECK(in.good(), DataError, path.string(),
                 ": missing file (not a token shard, or one whose writing did not finish)");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(str(path.string(), ": invalid JSON: ", e.what()));
  }
}

}  // namespace

// ---- ShardInfo -------------------------------------------------------------------------------

nlohmann::json ShardInfo::to_json() const {
  return nlohmann::json{{"format", format},
                        {"version", version},
                        {"tokenizer", tokenizer},
                        {"vocab_size", vocab_size},
                        {"dtype", dtype},
                        {"num_tokens", num_tokens},
                        {"num_documents", num_documents},
                        {"max_token_id", max_token_id},
                        {"checksum", format_checksum(checksum)},
                        {"sources", sources}};
}

ShardInfo ShardInfo::from_json(const nlohmann::json& j, const std::string& file) {
  CONDENSA_CHECK(j.is_object(), DataError, file, ": expected a JSON object");
  ShardInfo info;
  info.format = json_field<std::string>(j, "format", file);
  info.version = json_field<int>(j, "version", file);
  info.tokenizer = json_field<std::string>(j, "tokenizer", file);
  info.vocab_size = json_field<int64_t>(j, "vocab_size", file);
  info.dtype = json_field<std::string>(j, "dtype", file);
  info.num_tokens = json_field<int64_t>(j, "num_tokens", file);
  info.num_documents = json_field<int64_t>(j, "num_documents", file);
  if (j.contains("max_token_id")) {
    info.max_token_id = json_field<int64_t>(j, "max_token_id", file);
  }
  info.checksum = parse_checksum(json_field<std::string>(j, "checksum", file), file);
  info.sources = json_field<std::vector<std::string>>(j, "sources", file);
  return info;
}

std::string shard_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size <= 65536 ? "uint16" : "uint32";
}

std::string format_checksum(uint64_t checksum) { return "fnv1a64:" + hex64(checksum); }

// ---- ShardWriter -----------------------------------------------------------------------------

ShardWriter::ShardWriter(const fs::path& dir, const std::string& tokenizer, int64_t vocab_size)
    : dir_(dir) {
  CONDENSA_CHECK(vocab_size >= 1 && vocab_size < (int64_t{1} << 32), DataError, "shard ",
                 dir.string(), ": vocab_size ", vocab_size, " must be in [1, 2^32)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  CONDENSA_CHECK(!ec, DataError, "cannot create shard directory ", dir.string(), ": ",
                 ec.message());
  CONDENSA_CHECK(!fs::exists(dir / "index.json"), DataError, "shard directory ", dir.string(),
                 " already contains a shard (index.json); remove it or choose another directory");
  info_.tokenizer = tokenizer;
  info_.vocab_size = vocab_size;
  info_.dtype = shard_dtype_for_vocab(vocab_size);
  info_.checksum = kFnv1a64Offset;
  width_ = dtype_width(info_.dtype);

  const fs::path tokens_path = dir / "tokens.bin";
  tokens_out_.open(tokens_path, std::ios::binary | std::ios::trunc);
  CONDENSA_CHECK(tokens_out_.good(), DataError, "cannot write ", tokens_path.string());
  char header[kShardHeaderBytes] = {};
  std::memcpy(header, kTokensMagic, 8);
  put_u32(header + 8, kShardFormatVersion);
  put_u32(header + 12, static_cast<uint32_t>(width_));
  put_u64(header + 16, 0);  // num_tokens, patched by finish()
  put_u32(header + 24, static_cast<uint32_t>(vocab_size));
  tokens_out_.write(header, sizeof(header));
}

void ShardWriter::add_document(const std::vector<int32_t>& tokens) {
  CONDENSA_CHECK(!finished_, Error, "shard ", dir_.string(), ": add_document after finish");
  buffer_.resize(tokens.size() * width_);
  for (size_t i = 0; i < tokens.size(); ++i) {
    int64_t id = tokens[i];
    CONDENSA_CHECK(id >= 0 && id < info_.vocab_size, DataError, "shard ", dir_.string(),
                   ": document ", info_.num_documents, " has token id ", id, " at position ", i,
                   " outside the vocabulary [0, ", info_.vocab_size, ")");
    info_.max_token_id = std::max(info_.max_token_id, id);
    if (width_ == 2) {
      uint16_t v = static_cast<uint16_t>(id);
      std::memcpy(buffer_.data() + i * 2, &v, 2);
    } else {
      uint32_t v = static_cast<uint32_t>(id);
      std::memcpy(buffer_.data() + i * 4, &v, 4);
    }
  }
  doc_starts_.push_back(static_cast<uint64_t>(info_.num_tokens));
  info_.checksum = fnv1a64(buffer_.data(), buffer_.size(), info_.checksum);
  tokens_out_.write(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
  info_.num_tokens += static_cast<int64_t>(tokens.size());
  info_.num_documents += 1;
}

void ShardWriter::add_source(const std::string& source) { info_.sources.push_back(source); }

ShardInfo ShardWriter::finish() {
  CONDENSA_CHECK(!finished_, Error, "shard ", dir_.string(), ": finish called twice");
  finished_ = true;
  // A shard without tokens trains nothing: refuse it instead of publishing it.
  CONDENSA_CHECK(info_.num_tokens > 0, DataError, "shard ", dir_.string(), ": no tokens (",
                 info_.num_documents, " documents); nothing to write");
  char count[8];
  put_u64(count, static_cast<uint64_t>(info_.num_tokens));
  tokens_out_.seekp(16);
  tokens_out_.write(count, sizeof(count));
  tokens_out_.close();
  CONDENSA_CHECK(!tokens_out_.fail(), DataError, "writing ", (dir_ / "tokens.bin").string(),
                 " failed (disk full?)");

  const fs::path docs_path = dir_ / "docs.bin";
  std::ofstream docs(docs_path, std::ios::binary | std::ios::trunc);
  char header[kShardHeaderBytes] = {};
  std::memcpy(header, kDocsMagic, 8);
  put_u32(header + 8, kShardFormatVersion);
  put_u64(header + 16, static_cast<uint64_t>(info_.num_documents));
  put_u64(header + 24, static_cast<uint64_t>(info_.num_tokens));
  docs.write(header, sizeof(header));
  docs.write(reinterpret_cast<const char*>(doc_starts_.data()),
             static_cast<std::streamsize>(doc_starts_.size() * sizeof(uint64_t)));
  docs.close();
  CONDENSA_CHECK(!docs.fail(), DataError, "writing ", docs_path.string(), " failed");

  // index.json last, after the payload is on disk, published atomically: its presence means
  // the shard is complete.
  fsync_file((dir_ / "tokens.bin").string());
  fsync_file(docs_path.string());
  atomic_write_file((dir_ / "index.json").string(), info_.to_json().dump(2) + "\n");
  return info_;
}

// ---- MappedFile ------------------------------------------------------------------------------

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  CONDENSA_CHECK(fd >= 0, DataError, path.string(),
                 errno == ENOENT ? ": missing file" : ": cannot open: ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw DataError(str(path.string(), ": cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw DataError(str(path.string(), S_ISDIR(st.st_mode) ? ": is a directory" : ": is not",
                        ", expected a regular file"));
  }
  size_ = static_cast<int64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);
    CONDENSA_CHECK(p != MAP_FAILED, DataError, path.string(),
                   ": mmap failed: ", std::strerror(err));
    data_ = static_cast<const unsigned char*>(p);
  } else {
    ::close(fd);
  }
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), static_cast<size_t>(size_));
  data_ = nullptr;
  size_ = 0;
}

// ---- TokenShard ------------------------------------------------------------------------------

TokenShard::TokenShard(fs::path dir, ShardInfo info, MappedFile tokens, MappedFile docs)
    : dir_(std::move(dir)),
      info_(std::move(info)),
      tokens_(std::move(tokens)),
      docs_(std::move(docs)),
      width_(dtype_width(info_.dtype)) {}

TokenShard TokenShard::open(const fs::path& dir, bool verify_checksum) {
  CONDENSA_CHECK(fs::is_directory(dir), DataError, "token shard directory ", dir.string(),
                 " does not exist");
  const fs::path index_path = dir / "index.json";
  const std::string index_file = index_path.string();
  ShardInfo info = ShardInfo::from_json(read_json_file(index_path), index_file);

  // ---- index.json on its own
  CONDENSA_CHECK(info.format == kShardFormatName, DataError, index_file, ": format '", info.format,
                 "' is not '", kShardFormatName, "'");
  CONDENSA_CHECK(info.version == kShardFormatVersion, DataError, index_file,
                 ": unsupported format version ", info.version, " (this build reads version ",
                 kShardFormatVersion, ")");
  CONDENSA_CHECK(info.dtype == "uint16" || info.dtype == "uint32", DataError, index_file,
                 ": dtype '", info.dtype, "' is not uint16 or uint32");
  CONDENSA_CHECK(info.vocab_size >= 1 && (info.dtype == "uint32" || info.vocab_size <= 65536),
                 DataError, index_file, ": vocab_size ", info.vocab_size, " does not fit dtype ",
                 info.dtype);
  CONDENSA_CHECK(info.num_tokens >= 0 && info.num_documents >= 0, DataError, index_file,
                 ": negative count (num_tokens ", info.num_tokens, ", num_documents ",
                 info.num_documents, ")");
  CONDENSA_CHECK(info.max_token_id >= -1 && info.max_token_id < info.vocab_size, DataError,
                 index_file, ": max_token_id ", info.max_token_id,
                 " is outside the vocabulary [0, ", info.vocab_size, ")");
  const auto known = tokenizer_names();
  if (std::find(known.begin(), known.end(), info.tokenizer) != known.end()) {
    int64_t expected = make_tokenizer(info.tokenizer)->vocab_size();
    CONDENSA_CHECK(info.vocab_size == expected, DataError, index_file, ": tokenizer '",
                   info.tokenizer, "' has vocab_size ", expected, " but index.json says ",
                   info.vocab_size);
  }

  // ---- tokens.bin header against index.json
  MappedFile tokens(dir / "tokens.bin");
  check_header(tokens, kTokensMagic);
  const std::string tokens_file = tokens.path().string();
  const int64_t width = get_u32(tokens.data() + 12);
  const int64_t count = static_cast<int64_t>(get_u64(tokens.data() + 16));
  const int64_t vocab = get_u32(tokens.data() + 24);
  CONDENSA_CHECK(width == dtype_width(info.dtype), DataError, tokens_file,
                 ": header says tokens of ", width, " bytes but index.json says dtype ",
                 info.dtype);
  CONDENSA_CHECK(vocab == info.vocab_size, DataError, tokens_file, ": header says vocab_size ",
                 vocab, " but index.json says ", info.vocab_size, " (tokenizer ", info.tokenizer,
                 ")");
  CONDENSA_CHECK(count == info.num_tokens, DataError, tokens_file, ": header says ", count,
                 " tokens but index.json says ", info.num_tokens);
  check_size(tokens, count, width, "tokens");

  // ---- docs.bin header and offsets
  MappedFile docs(dir / "docs.bin");
  check_header(docs, kDocsMagic);
  const std::string docs_file = docs.path().string();
  const int64_t num_docs = static_cast<int64_t>(get_u64(docs.data() + 16));
  const int64_t doc_tokens = static_cast<int64_t>(get_u64(docs.data() + 24));
  CONDENSA_CHECK(num_docs == info.num_documents, DataError, docs_file, ": header says ", num_docs,
                 " documents but index.json says ", info.num_documents);
  CONDENSA_CHECK(doc_tokens == info.num_tokens, DataError, docs_file, ": header says ", doc_tokens,
                 " tokens but index.json says ", info.num_tokens);
  check_size(docs, num_docs, 8, "document offsets");
  CONDENSA_CHECK(num_docs > 0 || info.num_tokens == 0, DataError, docs_file, ": no documents but ",
                 info.num_tokens, " tokens");
  uint64_t prev = 0;
  for (int64_t i = 0; i < num_docs; ++i) {
    uint64_t start = get_u64(docs.data() + kShardHeaderBytes + 8 * i);
    bool ok =
        (i == 0 ? start == 0 : start >= prev) && start <= static_cast<uint64_t>(info.num_tokens);
    CONDENSA_CHECK(ok, DataError, docs_file, ": document ", i, " starts at ", start,
                   " (previous start ", prev, ", num_tokens ", info.num_tokens, ")");
    prev = start;
  }

  TokenShard shard(dir, std::move(info), std::move(tokens), std::move(docs));
  if (verify_checksum) shard.verify_checksum();
  return shard;
}

void TokenShard::verify_checksum() const {
  uint64_t actual =
      fnv1a64(tokens_.data() + kShardHeaderBytes, static_cast<size_t>(num_tokens() * width_));
  CONDENSA_CHECK(actual == info_.checksum, DataError, tokens_.path().string(),
                 ": checksum mismatch: the token payload hashes to ", format_checksum(actual),
                 " but index.json says ", format_checksum(info_.checksum),
                 " (the file is corrupt or was modified)");
  // The ids themselves: a payload edited together with its checksum must still fit the
  // vocabulary, or the embedding lookup fails mid-training.
  int64_t max_id = -1, at = -1;
  std::vector<int64_t> chunk;
  for (int64_t start = 0; start < num_tokens(); start += 1 << 16) {
    chunk.resize(static_cast<size_t>(std::min<int64_t>(1 << 16, num_tokens() - start)));
    copy(start, static_cast<int64_t>(chunk.size()), chunk.data());
    for (size_t i = 0; i < chunk.size(); ++i) {
      if (chunk[i] > max_id) max_id = chunk[i], at = start + static_cast<int64_t>(i);
    }
  }
  CONDENSA_CHECK(max_id < info_.vocab_size, DataError, tokens_.path().string(), ": token id ",
                 max_id, " at position ", at, " is outside the vocabulary [0, ", info_.vocab_size,
                 ") of tokenizer '", info_.tokenizer, "'");
  CONDENSA_CHECK(info_.max_token_id == -1 || max_id == info_.max_token_id, DataError,
                 tokens_.path().string(), ": the largest token id is ", max_id,
                 " but index.json says max_token_id ", info_.max_token_id,
                 " (the file is corrupt or was modified)");
}

int64_t TokenShard::token(int64_t i) const {
  int64_t value;
  copy(i, 1, &value);
  return value;
}

void TokenShard::copy(int64_t start, int64_t count, int64_t* out) const {
  CONDENSA_CHECK(start >= 0 && count >= 0 && start + count <= num_tokens(), Error, "shard ",
                 dir_.string(), ": token range [", start, ", ", start + count, ") is outside [0, ",
                 num_tokens(), ")");
  const unsigned char* p = tokens_.data() + kShardHeaderBytes + start * width_;
  if (width_ == 2) {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      out[i] = v;
    }
  } else {
    for (int64_t i = 0; i < count; ++i) out[i] = get_u32(p + 4 * i);
  }
}

int64_t TokenShard::document_start(int64_t i) const {
  CONDENSA_CHECK(i >= 0 && i < num_documents(), Error, "shard ", dir_.string(), ": document ", i,
                 " is outside [0, ", num_documents(), ")");
  return static_cast<int64_t>(get_u64(docs_.data() + kShardHeaderBytes + 8 * i));
}

int64_t TokenShard::document_end(int64_t i) const {
  document_start(i);  // range check
  return i + 1 < num_documents() ? document_start(i + 1) : num_tokens();
}

}  // namespace condensa::data
