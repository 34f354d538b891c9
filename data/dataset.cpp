// TokenDataset: several shards read as one token sequence. Opening checks that the shards
// agree on tokenizer and vocabulary and names the first that does not.
#include <algorithm>
#include <filesystem>

#include "common/checksum.h"
#include "common/error.h"
#include "data/shard.h"

namespace condensa::data {

namespace fs = std::filesystem;

TokenDataset TokenDataset::open(const fs::path& path, bool verify_checksum) {
  CONDENSA_CHECK(fs::is_directory(path), DataError, "token data path ", path.string(),
                 " does not exist or is not a directory");
  std::vector<fs::path> dirs;
  if (fs::exists(path / "index.json") || fs::exists(path / "tokens.bin")) {
    dirs.push_back(path);
  } else {
    for (const auto& entry : fs::directory_iterator(path)) {
      if (!entry.is_directory()) continue;
      const fs::path& d = entry.path();
      if (fs::exists(d / "index.json") || fs::exists(d / "tokens.bin")) dirs.push_back(d);
    }
    std::sort(dirs.begin(), dirs.end());
  }
  CONDENSA_CHECK(!dirs.empty(), DataError, "token data path ", path.string(),
                 ": no token shard found (expected index.json, or subdirectories that each "
                 "contain one; make shards with `condensa data prepare`)");

  TokenDataset ds;
  ds.path_ = path;
  for (const auto& d : dirs) {
    TokenShard shard = TokenShard::open(d, verify_checksum);
    if (!ds.shards_.empty()) {
      const ShardInfo& a = ds.shards_.front().info();
      const ShardInfo& b = shard.info();
      CONDENSA_CHECK(a.tokenizer == b.tokenizer && a.vocab_size == b.vocab_size, DataError,
                     "shard ", d.string(), " has tokenizer ", b.tokenizer, " (vocab_size ",
                     b.vocab_size, ") but shard ", ds.shards_.front().dir().string(), " has ",
                     a.tokenizer, " (vocab_size ", a.vocab_size, ")");
    }
    ds.offsets_.push_back(ds.num_tokens_);
    ds.num_tokens_ += shard.num_tokens();
    ds.shards_.push_back(std::move(shard));
  }
  CONDENSA_CHECK(ds.num_tokens_ > 0, DataError, "token data path ", path.string(),
                 ": the shards hold no tokens");
  return ds;
}

int64_t TokenDataset::num_documents() const {
  int64_t n = 0;
  for (const auto& s : shards_) n += s.num_documents();
  return n;
}

uint64_t TokenDataset::checksum() const {
  if (shards_.size() == 1) return shards_.front().info().checksum;
  uint64_t h = kFnv1a64Offset;
  for (const auto& s : shards_) h = fnv1a64(&s.info().checksum, sizeof(uint64_t), h);
  return h;
}

void TokenDataset::copy(int64_t start, int64_t count, int64_t* out) const {
  CONDENSA_CHECK(start >= 0 && count >= 0 && start + count <= num_tokens_, Error, "token data ",
                 path_.string(), ": range [", start, ", ", start + count, ") is outside [0, ",
                 num_tokens_, ")");
  // The shard holding `start`: the last one whose first token is <= start.
  size_t s = std::upper_bound(offsets_.begin(), offsets_.end(), start) - offsets_.begin() - 1;
  while (count > 0) {
    int64_t local = start - offsets_[s];
    int64_t n = std::min(count, shards_[s].num_tokens() - local);
    shards_[s].copy(local, n, out);
    start += n;
    count -= n;
    out += n;
    ++s;
  }
}

}  // namespace condensa::data
