// Tests for data/tokenizer.h.
#include "data/tokenizer.h"

#include <gtest/gtest.h>

#include <random>

#include "common/error.h"

namespace condensa::data {
namespace {

TEST(Tokenizer, ByteRoundTripRandomBytes) {
  std::mt19937 gen(42);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string text(4096, '\0');
  for (char& c : text) c = static_cast<char>(byte(gen));
  text[0] = '\0';
  text[1] = static_cast<char>(255);
  text.back() = '\0';

  ByteTokenizer tok;
  std::vector<int32_t> ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    ASSERT_EQ(ids[i], static_cast<int32_t>(static_cast<unsigned char>(text[i]))) << "at " << i;
  }
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 255);
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(Tokenizer, ByteVocabularyLayout) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.name(), "byte");
  EXPECT_EQ(tok.vocab_size(), 259);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  EXPECT_EQ(tok.pad_id(), 258);
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(Tokenizer, SpecialsDroppedOrShown) {
  ByteTokenizer tok;
  std::vector<int32_t> ids = {256, 'h', 'i', 257, 258, 0};
  EXPECT_EQ(tok.decode(ids), std::string("hi\0", 3));
  EXPECT_EQ(tok.decode(ids, /*show_special=*/true), std::string("<bos>hi<eos><pad>\0", 18));
}

TEST(Tokenizer, DecodeRejectsIdsOutsideVocabulary) {
  ByteTokenizer tok;
  EXPECT_THROW(tok.decode({'a', 259}), DataError);
  try {
    tok.decode({'a', -1});
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("-1"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, FactoryKnowsByteAndNamesUnknownValue) {
  auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->name(), "byte");
  EXPECT_EQ(tok->vocab_size(), 259);
  try {
    make_tokenizer("gpt9");
    FAIL() << "no exception";
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("gpt9"), std::string::npos) << msg;
    EXPECT_NE(msg.find("byte"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace condensa::data
