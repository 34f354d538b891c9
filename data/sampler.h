// The deterministic global sampler: which tokens make up batch `step`.
//
// Key design choice: a batch row is a pure function of (options, split, step, row). The global
// batch of a step therefore does not depend on how many data-parallel ranks read it, nor on
// what was read before, and the sampler has no state to save beyond the step itself: the
// trainer stores `step` (and fingerprint(), to detect changed data on resume) in its
// checkpoint, and on resume simply asks for batch(split, step + 1, ...). Rank r of dp reads
// rows dp_row_slice(B, r, dp) of that global batch and may split them further into micro
// batches; concatenating all slices gives exactly the single-process batch.
//
//   synthetic  each row packs whole documents (BOS ... EOS) from SyntheticMixture(seed), taken
//              from a document stream keyed by (seed, split, step, row); the last document is
//              cut at the row end. Val uses a different split key, so it never repeats train.
//   tokens     each row is a window of seq_len+1 consecutive tokens at a start drawn from
//              (seed, split, step, row). Train windows lie in the first (1 - val_fraction) of
//              the dataset's tokens, val windows in the held-out last val_fraction.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace condensa::data {

struct SamplerOptions {
  std::string source = "synthetic";  // "synthetic" or "tokens"
  std::string path;                  // tokens: a shard directory or a directory of shards
  uint64_t seed = 1234;
  int64_t seq_len = 128;
  int64_t global_batch_size = 8;
  double val_fraction = 0.05;  // tokens: held-out tail of the data; unused for synthetic

  // Throws ConfigError naming the field and value.
  void validate() const;
};

enum class Split { kTrain, kVal };
const char* split_name(Split split);  // "train" / "val"

struct Batch {
  torch::Tensor tokens;    // [rows, seq_len+1] int64: inputs are [:, :-1], targets [:, 1:]
  torch::Tensor language;  // [rows, seq_len+1] int64 language index per token, -1 if unknown
};

// Rows [first_row, first_row + num_rows) that data-parallel rank `dp_rank` of `dp_size` reads.
struct RowSlice {
  int64_t first_row = 0;
  int64_t num_rows = 0;
};
// Throws ConfigError unless dp_size divides global_batch_size and 0 <= dp_rank < dp_size.
RowSlice dp_row_slice(int64_t global_batch_size, int64_t dp_rank, int64_t dp_size);

class DataSource {
 public:
  explicit DataSource(SamplerOptions options);
  virtual ~DataSource() = default;

  // Rows [first_row, first_row + num_rows) of the global batch of `step` (step >= 0).
  Batch batch(Split split, int64_t step, int64_t first_row, int64_t num_rows) const;
  // Names of the language indices in Batch::language; empty for token data.
  virtual std::vector<std::string> language_names() const = 0;
  // Identifies the data stream: source, path, checksum or seed, seq_len, sampler version. The
  // trainer stores it in checkpoints and compares it on resume.
  virtual nlohmann::json fingerprint() const = 0;
  virtual std::string tokenizer_name() const = 0;
  virtual int64_t vocab_size() const = 0;
  const SamplerOptions& options() const { return options_; }

 protected:
  // Writes one row: seq_len+1 tokens and their languages. Must depend only on the options and
  // (split, step, row); batch() relies on this for layout independence.
  virtual void fill_row(
      Split split, int64_t step, int64_t row, int64_t* tokens, int64_t* language) const = 0;

  SamplerOptions options_;
};

// Validates the options and opens the source (for "tokens", the shards at options.path, with
// checksums verified). Throws ConfigError for bad options, DataError for bad or too-short data.
std::unique_ptr<DataSource> make_data_source(const SamplerOptions& options);

}  // namespace condensa::data
