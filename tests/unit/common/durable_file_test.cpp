// Tests for common/durable_file.h: round trips, no leftovers, and errors that name the path.
#include "common/durable_file.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "tests/support/test_util.h"

namespace condensa {
namespace {

namespace fs = std::filesystem;
using condensa::testing::TempDir;

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Reads a file with the standard library, independently of read_file.
std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen());
  return s;
}

// Runs `fn`, expects an IoError whose message contains every one of `parts`.
template <class Fn>
void expect_io_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

TEST(DurableFile, AtomicWriteReplacesContentAndLeavesNoTemp) {
  TempDir dir("durable");
  const std::string path = (dir.path() / "latest").string();
  atomic_write_file(path, "first");
  atomic_write_file(path, "second, longer");
  EXPECT_EQ(slurp(path), "second, longer");
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"latest"});
  // A longer temp file left behind by a crash must not leak its tail into the new content.
  std::ofstream(path + ".tmp") << "stale bytes of an interrupted write";
  atomic_write_file(path, "3rd");
  EXPECT_EQ(slurp(path), "3rd");
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"latest"});
}

TEST(DurableFile, ReadFileRoundTripsBinaryAcrossChunks) {
  TempDir dir("durable");
  // NUL bytes, and more than the 64 KiB read buffer so that it takes several reads.
  for (size_t n : {size_t{0}, size_t{1}, size_t{65536}, size_t{200001}}) {
    const std::string bytes = random_bytes(n, static_cast<uint32_t>(n));
    const std::string path = (dir.path() / ("f" + std::to_string(n))).string();
    atomic_write_file(path, bytes);
    EXPECT_EQ(slurp(path), bytes) << n;
    EXPECT_EQ(read_file(path), bytes) << n;
  }
}

TEST(DurableFile, SyncedFileWriterWritesPiecesInOrderAndRefusesUseAfterFinish) {
  TempDir dir("durable");
  const std::string path = (dir.path() / "w.bin").string();
  const std::string bytes = random_bytes(10000, 5);
  {
    SyncedFileWriter out(path);
    for (size_t i = 0; i < bytes.size(); i += 333)
      out.write(bytes.data() + i, std::min<size_t>(333, bytes.size() - i));
    out.finish();
    expect_io_error([&] { out.write("x", 1); }, {path, "after finish"});
    expect_io_error([&] { out.finish(); }, {path, "twice"});
  }
  EXPECT_EQ(slurp(path), bytes);
}

TEST(DurableFile, ErrorsNameThePath) {
  TempDir dir("durable");
  const std::string absent = (dir.path() / "absent").string();
  expect_io_error([&] { read_file(absent); }, {"cannot read", absent});
  expect_io_error([&] { atomic_write_file((dir.path() / "no/such/dir/f").string(), "x"); },
                  {"no/such/dir/f.tmp"});
  expect_io_error([&] { SyncedFileWriter w((dir.path() / "no/f").string()); }, {"no/f"});
  expect_io_error([&] { rename_path(absent, absent + "2"); }, {absent, absent + "2"});
  expect_io_error([&] { fsync_directory(absent); }, {"directory", absent});
  expect_io_error([&] { fsync_file(absent); }, {absent});
}

TEST(DurableFile, RenameReplacesAndFsyncsSucceedOnRealPaths) {
  TempDir dir("durable");
  const std::string a = (dir.path() / "a").string(), b = (dir.path() / "b").string();
  std::ofstream(a) << "new";
  std::ofstream(b) << "old";
  fsync_file(a);
  rename_path(a, b);
  fsync_directory(dir.str());
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"b"});
  EXPECT_EQ(slurp(b), "new");
}

}  // namespace
}  // namespace condensa
