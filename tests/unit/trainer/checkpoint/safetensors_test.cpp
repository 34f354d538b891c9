// safetensors: round trips for every dtype, the exact byte layout, and every malformed-file error.
#include "trainer/checkpoint/safetensors.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "common/error.h"
#include "tests/support/test_util.h"

namespace condensa::trainer {
namespace {

using condensa::testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file with the given header text (length field = its exact size) followed by `data`.
std::string raw_file(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

// Random bit patterns of `dtype` (NaNs and denormals included); bools are 0 or 1.
torch::Tensor random_tensor(torch::ScalarType dtype, std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (dtype == torch::kBool) return torch::randint(0, 2, shape, torch::kByte).to(torch::kBool);
  const int64_t num_bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  return torch::randint(0, 256, {num_bytes}, torch::kByte).view(dtype).reshape(shape);
}

// The bytes of a tensor in row-major order: the ground truth for bitwise comparisons.
std::string tensor_bytes(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

void expect_bitwise_equal(const torch::Tensor& expected, const torch::Tensor& actual) {
  EXPECT_EQ(expected.scalar_type(), actual.scalar_type());
  EXPECT_EQ(expected.sizes(), actual.sizes());
  EXPECT_EQ(tensor_bytes(expected), tensor_bytes(actual));
}

// Runs `fn`, expects a CheckpointError whose message contains every one of `parts`.
template <class Fn>
void expect_checkpoint_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected CheckpointError";
  } catch (const CheckpointError& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

const std::vector<std::pair<std::string, torch::ScalarType>> kAllDtypes = {
    {"F64", torch::kDouble},    {"F32", torch::kFloat}, {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16}, {"I64", torch::kLong},  {"I32", torch::kInt},
    {"I16", torch::kShort},     {"I8", torch::kChar},   {"U8", torch::kByte},
    {"BOOL", torch::kBool},
};

TEST(Safetensors, DtypeNamesMatchTheFormat) {
  for (const auto& [name, dtype] : kAllDtypes) {
    EXPECT_EQ(safetensors_dtype_name(dtype), name);
    EXPECT_EQ(safetensors_scalar_type(name), dtype);
  }
  EXPECT_THROW(safetensors_dtype_name(torch::kComplexFloat), CheckpointError);
  EXPECT_THROW(safetensors_scalar_type("F8_E4M3"), CheckpointError);
}

TEST(Safetensors, RoundTripsEveryDtypeBitwise) {
  TempDir dir("st");
  NamedTensors tensors;
  uint64_t seed = 1;
  for (const auto& [name, dtype] : kAllDtypes) {
    tensors.emplace_back("w." + name, random_tensor(dtype, {3, 5, 2}, seed++));
    tensors.emplace_back("scalar." + name, random_tensor(dtype, {}, seed++));
    tensors.emplace_back("empty." + name, random_tensor(dtype, {4, 0}, seed++));
  }
  const std::string path = (dir.path() / "all.safetensors").string();
  save_safetensors(path, tensors);

  SafetensorsFile loaded = load_safetensors(path);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(loaded.tensors[i].first, tensors[i].first);  // the caller's order is kept
    expect_bitwise_equal(tensors[i].second, loaded.tensors[i].second);
    EXPECT_TRUE(loaded.tensors[i].second.device().is_cpu());
  }
  EXPECT_EQ(loaded.get("scalar.BF16").dim(), 0);
  EXPECT_EQ(loaded.get("empty.I16").numel(), 0);

  auto header = read_safetensors_header(path);
  ASSERT_EQ(header.size(), tensors.size());
  EXPECT_EQ(header.at("w.BF16").dtype, torch::kBFloat16);
  EXPECT_EQ(header.at("w.BF16").shape, (std::vector<int64_t>{3, 5, 2}));
  EXPECT_EQ(header.at("w.BF16").data_end - header.at("w.BF16").data_begin, 3u * 5u * 2u * 2u);
}

TEST(Safetensors, SavesNonContiguousTensorsAsTheirValues) {
  TempDir dir("st");
  torch::Tensor base = random_tensor(torch::kFloat, {4, 6}, 7);
  torch::Tensor transposed = base.t();             // strides (1, 6)
  torch::Tensor strided = base.slice(1, 0, 6, 2);  // every other column
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_FALSE(strided.is_contiguous());
  const std::string path = (dir.path() / "nc.safetensors").string();
  save_safetensors(path, {{"t", transposed}, {"s", strided}});
  SafetensorsFile loaded = load_safetensors(path);
  expect_bitwise_equal(transposed.contiguous(), loaded.get("t"));
  expect_bitwise_equal(strided.contiguous(), loaded.get("s"));
  EXPECT_EQ(loaded.get("t").sizes(), (std::vector<int64_t>{6, 4}));
}

TEST(Safetensors, LoadedTensorsOwnTheirMemory) {
  TempDir dir("st");
  const std::string path = (dir.path() / "own.safetensors").string();
  torch::Tensor x = random_tensor(torch::kFloat, {16}, 3);
  save_safetensors(path, {{"x", x}});
  torch::Tensor loaded = load_safetensors(path).get("x");
  std::filesystem::remove(path);
  torch::Tensor again = loaded.clone();  // still readable after the file is gone
  expect_bitwise_equal(x, again);
}

TEST(Safetensors, MetadataRoundTrips) {
  TempDir dir("st");
  const std::string path = (dir.path() / "meta.safetensors").string();
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"step", "1000"}, {"quote\"and\\slash", "ünïcode value"}, {"empty", ""}};
  save_safetensors(path, {{"x", random_tensor(torch::kHalf, {2, 3}, 5)}}, metadata);
  EXPECT_EQ(load_safetensors(path).metadata, metadata);

  const std::string bare = (dir.path() / "bare.safetensors").string();
  save_safetensors(bare, {{"x", random_tensor(torch::kHalf, {2}, 6)}});
  EXPECT_TRUE(load_safetensors(bare).metadata.empty());
  EXPECT_EQ(read_bytes(bare).find("__metadata__"), std::string::npos);
}

// The whole file, checked by hand: 1.0f = 0x3f800000, -2.0f = 0xc0000000, little-endian.
TEST(Safetensors, ExactByteLayoutOfATinyFile) {
  TempDir dir("st");
  const std::string path = (dir.path() / "tiny.safetensors").string();
  torch::Tensor a = torch::tensor({1.0f, -2.0f});
  torch::Tensor b = torch::tensor(7, torch::kChar);  // a scalar, shape []
  save_safetensors(path, {{"a", a}, {"b", b}}, {{"k", "v"}});

  const std::string json = R"({"__metadata__":{"k":"v"},)"
                           R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I8","shape":[],"data_offsets":[8,9]}})";
  ASSERT_EQ(json.size(), 130u);  // counted by hand; padded to 136 with six spaces
  const std::string header = json + "      ";
  const std::string data("\x00\x00\x80\x3f\x00\x00\x00\xc0\x07", 9);
  const std::string expected = std::string("\x88\0\0\0\0\0\0\0", 8) + header + data;
  EXPECT_EQ(read_bytes(path), expected);
  EXPECT_EQ(read_bytes(path).size(), 8u + 136u + 9u);
}

// Another writer's layout: keys alphabetical, metadata last, data order unlike key order.
TEST(Safetensors, ReadsFilesWithAnyKeyOrder) {
  TempDir dir("st");
  const std::string path = (dir.path() / "foreign.safetensors").string();
  const std::string header =
      R"({"alpha":{"dtype":"I16","shape":[2],"data_offsets":[4,8]},)"
      R"("beta":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{"format":"np"}})";
  write_bytes(path, raw_file(header, std::string("\x01\x02\x03\x04\x05\x00\xff\xff", 8)));
  SafetensorsFile f = load_safetensors(path);
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "beta");  // data-offset order
  EXPECT_EQ(f.metadata.at("format"), "np");
  EXPECT_TRUE(torch::equal(f.get("beta"), torch::tensor({1, 2, 3, 4}, torch::kByte)));
  EXPECT_TRUE(torch::equal(f.get("alpha"), torch::tensor({5, -1}, torch::kShort)));
  EXPECT_TRUE(f.contains("alpha"));
  EXPECT_FALSE(f.contains("gamma"));
}

TEST(Safetensors, GetOfAMissingNameNamesFileAndTensor) {
  TempDir dir("st");
  const std::string path = (dir.path() / "g.safetensors").string();
  save_safetensors(path, {{"present", torch::ones({2})}});
  SafetensorsFile f = load_safetensors(path);
  expect_checkpoint_error([&] { f.get("absent"); }, {path, "'absent'"});
}

TEST(Safetensors, SaveRejectsBadInputs) {
  TempDir dir("st");
  const std::string path = (dir.path() / "bad.safetensors").string();
  expect_checkpoint_error(
      [&] {
        save_safetensors(path, {{"x", torch::ones({1})}, {"x", torch::ones({1})}});
      },
      {path, "duplicate tensor name 'x'"});
  expect_checkpoint_error(
      [&] {
        save_safetensors(path, {{"__metadata__", torch::ones({1})}});
      },
      {path, "reserved"});
  expect_checkpoint_error(
      [&] {
        save_safetensors(path, {{"c", torch::ones({1}, torch::kComplexFloat)}});
      },
      {path, "'c'", "ComplexFloat"});
  expect_checkpoint_error(
      [&] {
        save_safetensors(path, {{"u", torch::Tensor()}});
      },
      {path, "undefined"});
}

// ---- malformed files: every error names the file ----

TEST(SafetensorsErrors, MissingFile) {
  TempDir dir("st");
  const std::string path = (dir.path() / "nope.safetensors").string();
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "cannot open"});
  expect_checkpoint_error([&] { read_safetensors_header(path); }, {path, "cannot open"});
}

TEST(SafetensorsErrors, ShorterThanTheLengthField) {
  TempDir dir("st");
  const std::string path = (dir.path() / "short.safetensors").string();
  write_bytes(path, std::string("\x05\x00\x00", 3));
  expect_checkpoint_error([&] { load_safetensors(path); },
                          {path, "3 bytes", "shorter than the 8-byte"});
}

TEST(SafetensorsErrors, HeaderLengthBeyondFileSize) {
  TempDir dir("st");
  const std::string path = (dir.path() / "len.safetensors").string();
  write_bytes(path, u64_le(1000) + "{}");
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "header length 1000", "exceeds"});
}

TEST(SafetensorsErrors, InvalidJson) {
  TempDir dir("st");
  const std::string path = (dir.path() / "json.safetensors").string();
  write_bytes(path, raw_file(R"({"a":{"dtype":"F32",)", ""));
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "invalid JSON header"});
  write_bytes(path, raw_file("[1, 2]  ", ""));
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "not a JSON object"});
}

TEST(SafetensorsErrors, UnknownDtype) {
  TempDir dir("st");
  const std::string path = (dir.path() / "dtype.safetensors").string();
  write_bytes(path,
              raw_file(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "xx"));
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "'a'", "dtype 'F8_E4M3'"});
}

TEST(SafetensorsErrors, OffsetsNotMatchingShapeTimesItemsize) {
  TempDir dir("st");
  const std::string path = (dir.path() / "size.safetensors").string();
  write_bytes(path,
              raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678"));
  expect_checkpoint_error([&] { load_safetensors(path); },
                          {path, "'a'", "span 8 bytes", "needs 12"});
}

TEST(SafetensorsErrors, OffsetsBeginPastEnd) {
  TempDir dir("st");
  const std::string path = (dir.path() / "range.safetensors").string();
  write_bytes(path, raw_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "1234"));
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "'a'", "out of range"});
}

TEST(SafetensorsErrors, OverlappingOffsets) {
  TempDir dir("st");
  const std::string path = (dir.path() / "overlap.safetensors").string();
  write_bytes(path, raw_file(R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})",
                             "12345678"));
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "'b'", "overlap tensor 'a'"});
}

TEST(SafetensorsErrors, GapBetweenTensors) {
  TempDir dir("st");
  const std::string path = (dir.path() / "gap.safetensors").string();
  write_bytes(path, raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                             R"("b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                             "12345"));
  expect_checkpoint_error([&] { load_safetensors(path); },
                          {path, "gap of 1 bytes before tensor 'b'"});
}

TEST(SafetensorsErrors, DataTruncated) {
  TempDir dir("st");
  const std::string path = (dir.path() / "trunc.safetensors").string();
  save_safetensors(path, {{"x", random_tensor(torch::kFloat, {10}, 9)}});
  const std::string full = read_bytes(path);
  write_bytes(path, full.substr(0, full.size() - 3));
  expect_checkpoint_error([&] { load_safetensors(path); },
                          {path, "data truncated", "40 bytes", "holds 37"});
  expect_checkpoint_error([&] { read_safetensors_header(path); }, {path, "data truncated"});
}

TEST(SafetensorsErrors, TrailingBytes) {
  TempDir dir("st");
  const std::string path = (dir.path() / "trail.safetensors").string();
  save_safetensors(path, {{"x", random_tensor(torch::kFloat, {2}, 10)}});
  write_bytes(path, read_bytes(path) + "junk");
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "4 trailing bytes"});
}

TEST(SafetensorsErrors, InvalidBoolByte) {
  TempDir dir("st");
  const std::string path = (dir.path() / "bool.safetensors").string();
  write_bytes(path,
              raw_file(R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", "\x01\x02"));
  expect_checkpoint_error([&] { load_safetensors(path); }, {path, "'m'", "other than 0 or 1"});
}

TEST(SafetensorsErrors, NonStringMetadata) {
  TempDir dir("st");
  const std::string path = (dir.path() / "md.safetensors").string();
  write_bytes(path, raw_file(R"({"__metadata__":{"step":1000}})", ""));
  expect_checkpoint_error([&] { load_safetensors(path); },
                          {path, "__metadata__[\"step\"]", "string"});
}

}  // namespace
}  // namespace condensa::trainer
