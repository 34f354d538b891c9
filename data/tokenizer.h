// Tokenizers: text <-> token ids.
//
// Key design choice: the tokenizer is a small interface with one built-in implementation, the
// byte tokenizer (ids 0..255 are the bytes themselves, then BOS, EOS, PAD). It needs no
// vocabulary file, round-trips any byte string exactly, and is what the synthetic mixture emits,
// so a freshly cloned repo can train end to end with nothing downloaded. Special tokens are
// never produced by encode(); decode() drops them by default (so decode(encode(s)) == s and
// generated text is clean) and renders them as <bos>/<eos>/<pad> when asked to show them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace condensa::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t pad_id() const = 0;
  // Text to ids, no special tokens added.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids to text. Special tokens are dropped, or rendered as "<bos>" etc. if show_special.
  // Throws DataError for an id outside [0, vocab_size).
  virtual std::string decode(const std::vector<int32_t>& ids, bool show_special = false) const = 0;
};

class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kPad = 258;
  static constexpr int64_t kVocabSize = 259;

  std::string name() const override { return "byte"; }
  int64_t vocab_size() const override { return kVocabSize; }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  int32_t pad_id() const override { return kPad; }
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids, bool show_special = false) const override;
};

// Names accepted by make_tokenizer, e.g. {"byte"}.
std::vector<std::string> tokenizer_names();

// Throws ConfigError naming the unknown value and the known names.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

}  // namespace condensa::data
