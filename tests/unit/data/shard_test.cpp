// Tests for data/shard.h: round trips and one test per error a damaged shard must report.
#include "data/shard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "common/checksum.h"
#include "common/error.h"
#include "tests/support/test_util.h"

namespace condensa::data {
namespace {

namespace fs = std::filesystem;
using condensa::testing::TempDir;

std::vector<std::vector<int32_t>> random_docs(int num_docs, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int64_t> id(0, vocab - 1);
  std::uniform_int_distribution<int> len(0, 300);
  std::vector<std::vector<int32_t>> docs(num_docs);
  for (auto& d : docs) {
    d.resize(len(gen));
    for (auto& t : d) t = static_cast<int32_t>(id(gen));
  }
  docs[0].push_back(static_cast<int32_t>(vocab - 1));  // the largest id must survive
  docs[0].push_back(0);
  return docs;
}

void write_shard(const fs::path& dir,
                 const std::vector<std::vector<int32_t>>& docs,
                 const std::string& tokenizer,
                 int64_t vocab) {
  ShardWriter w(dir, tokenizer, vocab);
  for (const auto& d : docs) w.add_document(d);
  w.add_source("unit-test");
  w.finish();
}

void patch(const fs::path& file, int64_t offset, const std::string& bytes) {
  std::fstream f(file, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(offset);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_byte(const fs::path& file, int64_t offset) {
  std::ifstream f(file, std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  return std::string(1, c);
}

void edit_index(const fs::path& dir, const char* key, const nlohmann::json& value) {
  nlohmann::json j;
  std::ifstream(dir / "index.json") >> j;
  j[key] = value;
  std::ofstream(dir / "index.json") << j.dump(2);
}

// Runs TokenShard::open and returns the DataError message ("" if it did not throw).
std::string open_error(const fs::path& dir, bool verify = true) {
  try {
    TokenShard::open(dir, verify);
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(Shard, WriteReadRoundTripUint16) {
  TempDir tmp("shard");
  auto docs = random_docs(20, 259, 1);
  docs[5].clear();  // an empty document keeps its boundary
  write_shard(tmp.path() / "s", docs, "byte", 259);

  TokenShard shard = TokenShard::open(tmp.path() / "s");
  EXPECT_EQ(shard.info().dtype, "uint16");
  EXPECT_EQ(shard.info().tokenizer, "byte");
  EXPECT_EQ(shard.info().vocab_size, 259);
  EXPECT_EQ(shard.info().sources, std::vector<std::string>{"unit-test"});
  ASSERT_EQ(shard.num_documents(), 20);

  std::vector<int64_t> all;
  for (const auto& d : docs) all.insert(all.end(), d.begin(), d.end());
  ASSERT_EQ(shard.num_tokens(), static_cast<int64_t>(all.size()));
  EXPECT_EQ(fs::file_size(tmp.path() / "s" / "tokens.bin"), 32 + 2 * all.size());
  std::vector<int64_t> copied(all.size());
  shard.copy(0, shard.num_tokens(), copied.data());
  EXPECT_EQ(copied, all);
  int64_t pos = 0;
  for (int64_t i = 0; i < 20; ++i) {
    EXPECT_EQ(shard.document_start(i), pos) << "document " << i;
    pos += static_cast<int64_t>(docs[i].size());
    EXPECT_EQ(shard.document_end(i), pos) << "document " << i;
  }
  for (int64_t i = 0; i < shard.num_tokens(); i += 97) EXPECT_EQ(shard.token(i), all[i]);
  EXPECT_THROW(shard.token(shard.num_tokens()), Error);
  EXPECT_THROW(shard.document_start(20), Error);
}

TEST(Shard, WriteReadRoundTripUint32) {
  TempDir tmp("shard");
  auto docs = random_docs(5, 100000, 2);
  write_shard(tmp.path() / "s", docs, "custom", 100000);
  TokenShard shard = TokenShard::open(tmp.path() / "s");
  EXPECT_EQ(shard.info().dtype, "uint32");
  std::vector<int64_t> all;
  for (const auto& d : docs) all.insert(all.end(), d.begin(), d.end());
  EXPECT_EQ(fs::file_size(tmp.path() / "s" / "tokens.bin"), 32 + 4 * all.size());
  std::vector<int64_t> copied(all.size());
  shard.copy(0, shard.num_tokens(), copied.data());
  EXPECT_EQ(copied, all);
}

TEST(Shard, ChecksumIsFnv1a64OfPayload) {
  // fnv1a64 itself is pinned by published vectors in tests/unit/common/checksum_test.cpp.
  EXPECT_EQ(format_checksum(0xaf63dc4c8601ec8cULL), "fnv1a64:af63dc4c8601ec8c");
  EXPECT_EQ(format_checksum(0x1ULL), "fnv1a64:0000000000000001");

  TempDir tmp("shard");
  write_shard(tmp.path() / "s", {{'a', 0x100}}, "byte", 259);
  // Payload: little-endian uint16 0x0061, 0x0100.
  const char payload[] = {0x61, 0x00, 0x00, 0x01};
  EXPECT_EQ(TokenShard::open(tmp.path() / "s").info().checksum, fnv1a64(payload, 4));
}

TEST(Shard, IndexIsPublishedLastWithoutLeftovers) {
  TempDir tmp("shard");
  const fs::path dir = tmp.path() / "s";
  ShardWriter writer(dir, "byte", 259);
  writer.add_document({1, 2, 3});
  EXPECT_FALSE(fs::exists(dir / "index.json"));  // unfinished: invisible to open()
  const ShardInfo info = writer.finish();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"docs.bin", "index.json", "tokens.bin"}));
  std::ifstream in(dir / "index.json");
  EXPECT_EQ(nlohmann::json::parse(in), info.to_json());
}

TEST(Shard, WrongMagicNamesFile) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 3), "byte", 259);
  patch(tmp.path() / "s" / "tokens.bin", 0, "XXXX");
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "tokens.bin")) << msg;
  EXPECT_TRUE(contains(msg, "wrong magic 'XXXXTOK")) << msg;
}

TEST(Shard, UnsupportedVersionNamesFileAndValue) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 4), "byte", 259);
  patch(tmp.path() / "s" / "docs.bin", 8, std::string("\x63\0\0\0", 4));  // version 99
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "docs.bin")) << msg;
  EXPECT_TRUE(contains(msg, "unsupported format version 99")) << msg;

  write_shard(tmp.path() / "t", random_docs(3, 259, 4), "byte", 259);
  edit_index(tmp.path() / "t", "version", 7);
  msg = open_error(tmp.path() / "t");
  EXPECT_TRUE(contains(msg, "index.json")) << msg;
  EXPECT_TRUE(contains(msg, "version 7")) << msg;
}

TEST(Shard, TruncatedTokensNamesFileAndSizes) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 5), "byte", 259);
  const fs::path file = tmp.path() / "s" / "tokens.bin";
  const auto size = fs::file_size(file);
  fs::resize_file(file, size - 2);
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "tokens.bin")) << msg;
  EXPECT_TRUE(contains(msg, "truncated")) << msg;
  EXPECT_TRUE(contains(msg, std::to_string(size - 2))) << msg;
  EXPECT_TRUE(contains(msg, std::to_string(size))) << msg;

  fs::resize_file(file, 10);  // shorter than the header
  msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "tokens.bin")) << msg;
  EXPECT_TRUE(contains(msg, "truncated")) << msg;
}

TEST(Shard, FlippedPayloadByteFailsChecksum) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 6), "byte", 259);
  const fs::path file = tmp.path() / "s" / "tokens.bin";
  std::string b = read_byte(file, 40);
  patch(file, 40, std::string(1, static_cast<char>(b[0] ^ 0x01)));
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "tokens.bin")) << msg;
  EXPECT_TRUE(contains(msg, "checksum mismatch")) << msg;
  EXPECT_EQ(open_error(tmp.path() / "s", /*verify=*/false), "");
}

TEST(Shard, MissingFilesAreNamed) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 7), "byte", 259);
  fs::remove(tmp.path() / "s" / "docs.bin");
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "docs.bin: missing file")) << msg;

  EXPECT_TRUE(contains(open_error(tmp.path() / "nope"), "nope")) << open_error(tmp.path() / "nope");
}

TEST(Shard, UnfinishedShardIsRejected) {
  TempDir tmp("shard");
  {
    ShardWriter w(tmp.path() / "s", "byte", 259);
    w.add_document({1, 2, 3});
  }
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "index.json")) << msg;
  EXPECT_TRUE(contains(msg, "missing")) << msg;
}

TEST(Shard, TokenizerVocabMismatchWithIndex) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 8), "byte", 259);
  edit_index(tmp.path() / "s", "vocab_size", 300);
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "index.json")) << msg;
  EXPECT_TRUE(contains(msg, "tokenizer 'byte' has vocab_size 259")) << msg;
  EXPECT_TRUE(contains(msg, "300")) << msg;

  // A tokenizer this build does not know: tokens.bin's header still catches the mismatch.
  write_shard(tmp.path() / "t", random_docs(3, 1000, 8), "custom", 1000);
  edit_index(tmp.path() / "t", "vocab_size", 2000);
  msg = open_error(tmp.path() / "t");
  EXPECT_TRUE(contains(msg, "tokens.bin")) << msg;
  EXPECT_TRUE(contains(msg, "vocab_size 1000")) << msg;
  EXPECT_TRUE(contains(msg, "2000")) << msg;
}

TEST(Shard, CountMismatchWithIndex) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", random_docs(3, 259, 9), "byte", 259);
  edit_index(tmp.path() / "s", "num_tokens", 5);
  std::string msg = open_error(tmp.path() / "s");
  EXPECT_TRUE(contains(msg, "tokens.bin")) << msg;
  EXPECT_TRUE(contains(msg, "index.json says 5")) << msg;
}

TEST(Shard, WriterRejectsBadInput) {
  TempDir tmp("shard");
  ShardWriter w(tmp.path() / "s", "byte", 259);
  EXPECT_THROW(w.add_document({1, 259}), DataError);
  EXPECT_THROW(w.add_document({-1}), DataError);
  w.add_document({1, 2});
  EXPECT_EQ(w.finish().num_tokens, 2);
  EXPECT_THROW(ShardWriter(tmp.path() / "s", "byte", 259), DataError);  // already a shard
}

TEST(Shard, IndexRecordsTheLargestTokenId) {
  TempDir tmp("shard");
  write_shard(tmp.path() / "s", {{5, 17}, {3}, {}}, "byte", 259);
  nlohmann::json j;
  std::ifstream(tmp.path() / "s" / "index.json") >> j;
  EXPECT_EQ(j.at("max_token_id"), 17);
  EXPECT_EQ(TokenShard::open(tmp.path() / "s").info().max_token_id, 17);
}

TEST(Shard, IdOutsideVocabularyIsFoundEvenWithARecomputedChecksum) {
  // The edit of the issue: an id past the vocabulary written into tokens.bin, and the checksum
  // in index.json recomputed so that it matches.
  TempDir tmp("shard");
  const fs::path dir = tmp.path() / "s";
  write_shard(dir, {{'a', 'b', 'c', 'd'}}, "byte", 259);
  const char edited[] = {'a', 0, 'b', 0, 0x2c, 0x01, 'd', 0};  // token 2 = 300
  patch(dir / "tokens.bin", kShardHeaderBytes, std::string(edited, sizeof edited));
  edit_index(dir, "checksum", format_checksum(fnv1a64(edited, sizeof edited)));
  auto msg = open_error(dir);
  EXPECT_TRUE(contains(msg,
                       "tokens.bin: token id 300 at position 2 is outside the vocabulary "
                       "[0, 259)"))
      << msg;
  // Also with an index that claims the new largest id: it must still fit the vocabulary.
  edit_index(dir, "max_token_id", 300);
  msg = open_error(dir, /*verify=*/false);
  EXPECT_TRUE(contains(msg, "index.json: max_token_id 300 is outside the vocabulary [0, 259)"))
      << msg;
}

TEST(Shard, LargestIdDisagreeingWithIndexIsNamed) {
  TempDir tmp("shard");
  const fs::path dir = tmp.path() / "s";
  write_shard(dir, {{'a', 'b'}}, "byte", 259);
  edit_index(dir, "max_token_id", 'a');
  auto msg = open_error(dir);
  EXPECT_TRUE(contains(msg, "the largest token id is 98 but index.json says max_token_id 97"))
      << msg;
}

TEST(Shard, ShardWithoutMaxTokenIdStillOpens) {
  TempDir tmp("shard");
  const fs::path dir = tmp.path() / "s";
  write_shard(dir, {{'a', 'b'}}, "byte", 259);
  nlohmann::json j;
  std::ifstream(dir / "index.json") >> j;
  j.erase("max_token_id");
  std::ofstream(dir / "index.json") << j.dump(2);
  EXPECT_EQ(open_error(dir), "");
  EXPECT_EQ(TokenShard::open(dir).info().max_token_id, -1);
}

TEST(Shard, DirectoryInPlaceOfTokensBinIsNamed) {
  TempDir tmp("shard");
  const fs::path dir = tmp.path() / "s";
  write_shard(dir, {{'a', 'b'}}, "byte", 259);
  fs::remove(dir / "tokens.bin");
  fs::create_directory(dir / "tokens.bin");
  auto msg = open_error(dir);
  EXPECT_TRUE(contains(msg, (dir / "tokens.bin").string() + ": is a directory, expected a "
                                                            "regular file"))
      << msg;
}

TEST(Shard, ShardWithoutTokensIsNotWritten) {
  TempDir tmp("shard");
  ShardWriter w(tmp.path() / "s", "byte", 259);
  w.add_document({});
  try {
    w.finish();
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_TRUE(contains(e.what(), "no tokens (1 documents)")) << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "s" / "index.json"));
}

TEST(Shard, DatasetConcatenatesShardDirsInNameOrder) {
  TempDir tmp("shard");
  auto a = random_docs(4, 259, 10);
  auto b = random_docs(6, 259, 11);
  write_shard(tmp.path() / "b", b, "byte", 259);  // written first, read second
  write_shard(tmp.path() / "a", a, "byte", 259);
  fs::create_directories(tmp.path() / "unrelated");

  TokenDataset ds = TokenDataset::open(tmp.path());
  ASSERT_EQ(ds.shards().size(), 2u);
  std::vector<int64_t> all;
  for (const auto* docs : {&a, &b}) {
    for (const auto& d : *docs) all.insert(all.end(), d.begin(), d.end());
  }
  ASSERT_EQ(ds.num_tokens(), static_cast<int64_t>(all.size()));
  EXPECT_EQ(ds.num_documents(), 10);
  // A range across the shard boundary.
  const int64_t boundary = ds.shards()[0].num_tokens();
  std::vector<int64_t> got(50);
  ds.copy(boundary - 25, 50, got.data());
  EXPECT_EQ(got, std::vector<int64_t>(all.begin() + boundary - 25, all.begin() + boundary + 25));
  EXPECT_NE(ds.checksum(), ds.shards()[0].info().checksum);

  // A single shard directory is a dataset too.
  EXPECT_EQ(TokenDataset::open(tmp.path() / "a").num_tokens(), boundary);
}

TEST(Shard, DatasetErrors) {
  TempDir tmp("shard");
  try {
    TokenDataset::open(tmp.path());
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_TRUE(contains(e.what(), tmp.str())) << e.what();
    EXPECT_TRUE(contains(e.what(), "no token shard found")) << e.what();
  }
  write_shard(tmp.path() / "a", random_docs(2, 259, 12), "byte", 259);
  write_shard(tmp.path() / "b", random_docs(2, 1000, 12), "custom", 1000);
  try {
    TokenDataset::open(tmp.path());
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_TRUE(contains(e.what(), "custom (vocab_size 1000)")) << e.what();
    EXPECT_TRUE(contains(e.what(), "byte (vocab_size 259)")) << e.what();
  }
}

}  // namespace
}  // namespace condensa::data
