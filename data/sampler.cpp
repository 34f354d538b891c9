// Global sampler: the DataSource base owns argument checks and tensor layout, and asks the
// source for one row at a time, so a source cannot accidentally make a row depend on which
// other rows were requested in the same call (the property dp-independence rests on).
#include "data/sampler.h"

#include "common/error.h"
#include "common/hash.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"

namespace condensa::data {

namespace {

// Bump when the mapping (options, split, step, row) -> tokens changes, so that resuming a run
// with a different mapping is caught by the fingerprint comparison.
constexpr int kSamplerVersion = 1;

uint64_t row_seed(
    const SamplerOptions& o, const char* source, Split split, int64_t step, int64_t row) {
  return hash_combine(o.seed, hash_string(source), hash_string(split_name(split)),
                      static_cast<uint64_t>(step), static_cast<uint64_t>(row));
}

class SyntheticSource : public DataSource {
 public:
  explicit SyntheticSource(const SamplerOptions& options)
      : DataSource(options), mixture_(options.seed) {}

  std::vector<std::string> language_names() const override { return mixture_.language_names(); }
  std::string tokenizer_name() const override { return "byte"; }
  int64_t vocab_size() const override { return ByteTokenizer::kVocabSize; }
  nlohmann::json fingerprint() const override {
    return {{"source", "synthetic"},
            {"seed", options_.seed},
            {"seq_len", options_.seq_len},
            {"languages", mixture_.language_names()},
            {"sampler_version", kSamplerVersion}};
  }

 protected:
  void fill_row(
      Split split, int64_t step, int64_t row, int64_t* tokens, int64_t* language) const override {
    Rng docs(row_seed(options_, "synthetic", split, step, row));
    const int64_t length = options_.seq_len + 1;
    int64_t pos = 0;
    while (pos < length) {
      Document doc = mixture_.generate(docs.next());
      int64_t n = std::min<int64_t>(length - pos, static_cast<int64_t>(doc.tokens.size()));
      for (int64_t i = 0; i < n; ++i) {
        tokens[pos + i] = doc.tokens[i];
        language[pos + i] = doc.language;
      }
      pos += n;
    }
  }

 private:
  SyntheticMixture mixture_;
};

class TokenSource : public DataSource {
 public:
  explicit TokenSource(const SamplerOptions& options)
      : DataSource(options), data_(TokenDataset::open(options.path)) {
    const int64_t n = data_.num_tokens();
    const int64_t window = options.seq_len + 1;
    num_val_ = static_cast<int64_t>(static_cast<double>(n) * options.val_fraction);
    num_train_ = n - num_val_;
    CONDENSA_CHECK(num_train_ >= window, DataError, "token data ", options.path, " has ", n,
                   " tokens; its train split (", num_train_, " tokens after holding out ", num_val_,
                   " for val_fraction ", options.val_fraction,
                   ") is shorter than one window of seq_len+1 = ", window, " tokens");
    CONDENSA_CHECK(options.val_fraction == 0 || num_val_ >= window, DataError, "token data ",
                   options.path, " has ", n, " tokens; its val split (last ", num_val_,
                   " tokens, val_fraction ", options.val_fraction,
                   ") is shorter than one window of seq_len+1 = ", window,
                   " tokens; raise val_fraction, lower seq_len, or set val_fraction to 0");
  }

  std::vector<std::string> language_names() const override { return {}; }
  std::string tokenizer_name() const override { return data_.tokenizer(); }
  int64_t vocab_size() const override { return data_.vocab_size(); }
  nlohmann::json fingerprint() const override {
    return {{"source", "tokens"},
            {"path", options_.path},
            {"checksum", format_checksum(data_.checksum())},
            {"num_tokens", data_.num_tokens()},
            {"seed", options_.seed},
            {"seq_len", options_.seq_len},
            {"val_fraction", options_.val_fraction},
            {"sampler_version", kSamplerVersion}};
  }

 protected:
  void fill_row(
      Split split, int64_t step, int64_t row, int64_t* tokens, int64_t* language) const override {
    CONDENSA_CHECK(split == Split::kTrain || num_val_ > 0, ConfigError, "token data ",
                   options_.path, " has no val split: val_fraction is 0");
    const int64_t window = options_.seq_len + 1;
    const int64_t lo = split == Split::kTrain ? 0 : num_train_;
    const int64_t size = split == Split::kTrain ? num_train_ : num_val_;
    Rng rng(row_seed(options_, "tokens", split, step, row));
    int64_t start =
        lo + static_cast<int64_t>(rng.uniform(static_cast<uint64_t>(size - window + 1)));
    data_.copy(start, window, tokens);
    std::fill(language, language + window, int64_t{-1});
  }

 private:
  TokenDataset data_;
  int64_t num_train_ = 0;
  int64_t num_val_ = 0;
};

}  // namespace

void SamplerOptions::validate() const {
  CONDENSA_CHECK(source == "synthetic" || source == "tokens", ConfigError, "data source '", source,
                 "' is not one of: synthetic, tokens");
  CONDENSA_CHECK(source != "tokens" || !path.empty(), ConfigError,
                 "data source 'tokens' needs a path (a shard directory or a directory of shards)");
  CONDENSA_CHECK(seq_len >= 1, ConfigError, "seq_len (", seq_len, ") must be >= 1");
  CONDENSA_CHECK(global_batch_size >= 1, ConfigError, "global_batch_size (", global_batch_size,
                 ") must be >= 1");
  CONDENSA_CHECK(val_fraction >= 0 && val_fraction < 1, ConfigError, "val_fraction (", val_fraction,
                 ") must be in [0, 1)");
}

const char* split_name(Split split) { return split == Split::kTrain ? "train" : "val"; }

RowSlice dp_row_slice(int64_t global_batch_size, int64_t dp_rank, int64_t dp_size) {
  CONDENSA_CHECK(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size, ConfigError,
                 "data-parallel rank (", dp_rank, ") must be in [0, data-parallel size (", dp_size,
                 "))");
  CONDENSA_CHECK(global_batch_size % dp_size == 0, ConfigError, "data-parallel size (", dp_size,
                 ") must divide global_batch_size (", global_batch_size, ")");
  const int64_t rows = global_batch_size / dp_size;
  return RowSlice{dp_rank * rows, rows};
}

DataSource::DataSource(SamplerOptions options) : options_(std::move(options)) {
  options_.validate();
}

Batch DataSource::batch(Split split, int64_t step, int64_t first_row, int64_t num_rows) const {
  CONDENSA_CHECK(step >= 0, Error, "batch step (", step, ") must be >= 0");
  CONDENSA_CHECK(
      first_row >= 0 && num_rows >= 0 && first_row + num_rows <= options_.global_batch_size, Error,
      "batch rows [", first_row, ", ", first_row + num_rows, ") are outside the global batch of ",
      options_.global_batch_size, " rows");
  const int64_t length = options_.seq_len + 1;
  Batch b;
  b.tokens = torch::empty({num_rows, length}, torch::kInt64);
  b.language = torch::empty({num_rows, length}, torch::kInt64);
  int64_t* tokens = b.tokens.data_ptr<int64_t>();
  int64_t* language = b.language.data_ptr<int64_t>();
  for (int64_t r = 0; r < num_rows; ++r) {
    fill_row(split, step, first_row + r, tokens + r * length, language + r * length);
  }
  return b;
}

std::unique_ptr<DataSource> make_data_source(const SamplerOptions& options) {
  options.validate();
  if (options.source == "tokens") return std::make_unique<TokenSource>(options);
  return std::make_unique<SyntheticSource>(options);
}

}  // namespace condensa::data
