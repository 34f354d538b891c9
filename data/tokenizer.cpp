// Tokenizers. The byte tokenizer is the identity on bytes plus three special ids; the factory is
// the one place that maps a tokenizer name (from a config or a shard's index.json) to a class.
#include "data/tokenizer.h"

#include "common/error.h"

namespace condensa::data {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(static_cast<int32_t>(c));
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids, bool show_special) const {
  std::string text;
  text.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    CONDENSA_CHECK(id >= 0 && id < kVocabSize, DataError, "byte tokenizer: token id ", id,
                   " at position ", i, " is outside the vocabulary [0, ", kVocabSize, ")");
    if (id < 256) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    } else if (show_special) {
      text += id == kBos ? "<bos>" : id == kEos ? "<eos>" : "<pad>";
    }
  }
  return text;
}

std::vector<std::string> tokenizer_names() { return {"byte"}; }

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  std::string known;
  for (const auto& n : tokenizer_names()) known += (known.empty() ? "" : ", ") + n;
  throw ConfigError(str("unknown tokenizer '", name, "' (known: ", known, ")"));
}

}  // namespace condensa::data
