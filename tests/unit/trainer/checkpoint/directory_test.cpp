// Checkpoint directory mechanics: commit, retention, verification, fallback on corruption.
#include "trainer/checkpoint/directory.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "common/checksum.h"
#include "common/durable_file.h"
#include "common/error.h"
#include "tests/support/test_util.h"
#include "trainer/checkpoint/safetensors.h"

namespace condensa::trainer {
namespace {

namespace fs = std::filesystem;
using condensa::testing::TempDir;

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void overwrite(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

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

// Phase 2 for one rank: a model and an optimizer file with random contents, then the manifest.
void write_rank(const std::string& tmp, int rank, int64_t step) {
  torch::manual_seed(static_cast<uint64_t>(step * 100 + rank));
  save_safetensors(tmp + "/" + rank_file_name("model", rank),
                   {{"layers.0.w", torch::randn({8, 4})}, {"embed", torch::randn({16, 4})}});
  save_safetensors(tmp + "/" + rank_file_name("optim", rank),
                   {{"layers.0.w.exp_avg", torch::randn({8, 4})}});
  write_rank_manifest(tmp, rank, {rank_file_name("model", rank), rank_file_name("optim", rank)});
}

// All three phases, as the trainer runs them (with barriers) for `world_size` ranks.
std::string save_checkpoint(const std::string& root, int64_t step, int world_size, int keep) {
  const std::string tmp = prepare_checkpoint_dir(root, step);
  for (int r = 0; r < world_size; ++r) write_rank(tmp, r, step);
  return commit_checkpoint(root, tmp, step, {{"tokens_seen", step * 4096}}, world_size, keep);
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(CheckpointNames, StepDirNames) {
  EXPECT_EQ(step_dir_name(1000), "step_00001000");
  EXPECT_EQ(step_dir_name(0), "step_00000000");
  EXPECT_EQ(step_dir_name(123456789), "step_123456789");
  EXPECT_EQ(parse_step_dir_name("step_00001000"), std::optional<int64_t>(1000));
  EXPECT_EQ(parse_step_dir_name("step_123456789"), std::optional<int64_t>(123456789));
  for (const char* bad :
       {".tmp-step_00001000", "step_1000", "step_0000100x", "step_000001000", "latest"}) {
    EXPECT_EQ(parse_step_dir_name(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(rank_file_name("model", 3), "model-rank00003.safetensors");
  EXPECT_EQ(manifest_file_name(12), "manifest-rank00012.json");
  EXPECT_THROW(step_dir_name(-1), CheckpointError);
}

TEST(Checkpoint, CommitMakesACompleteDirectoryAndLatest) {
  TempDir dir("ck");
  const std::string root = (dir.path() / "checkpoints").string();
  const std::string step_dir = save_checkpoint(root, 1000, /*world_size=*/2, /*keep=*/0);

  EXPECT_EQ(step_dir, root + "/step_00001000");
  EXPECT_EQ(entries(root), (std::vector<std::string>{"latest", "step_00001000"}));
  EXPECT_EQ(slurp(fs::path(root) / "latest"), "step_00001000");
  EXPECT_EQ(entries(step_dir),
            (std::vector<std::string>{"meta.json", "meta.xxh64", "model-rank00000.safetensors",
                                      "model-rank00001.safetensors", "optim-rank00000.safetensors",
                                      "optim-rank00001.safetensors"}));
  // meta.xxh64 is what `xxhsum -H1 meta.json` prints.
  char meta_hex[17];
  std::snprintf(meta_hex, sizeof(meta_hex), "%016llx",
                static_cast<unsigned long long>(file_xxh64(step_dir + "/meta.json")));
  EXPECT_EQ(slurp(fs::path(step_dir) / "meta.xxh64"), std::string(meta_hex) + "  meta.json\n");

  const nlohmann::json meta = read_checkpoint_meta(step_dir);
  EXPECT_EQ(meta["format_version"], kCheckpointFormatVersion);
  EXPECT_EQ(meta["step"], 1000);
  EXPECT_EQ(meta["tokens_seen"], 1000 * 4096);
  ASSERT_EQ(meta["files"].size(), 4u);
  const auto& entry = meta["files"]["optim-rank00001.safetensors"];
  EXPECT_EQ(entry["rank"], 1);
  EXPECT_EQ(entry["bytes"].get<uint64_t>(),
            fs::file_size(fs::path(step_dir) / "optim-rank00001.safetensors"));
  char hex[17];
  std::snprintf(
      hex, sizeof(hex), "%016llx",
      static_cast<unsigned long long>(file_xxh64(step_dir + "/optim-rank00001.safetensors")));
  EXPECT_EQ(entry["xxh64"], hex);

  EXPECT_NO_THROW(verify_checkpoint(step_dir));
  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_checkpoint(root, &warnings), std::optional<std::string>(step_dir));
  EXPECT_TRUE(warnings.empty());
  // The data survives the trip.
  torch::manual_seed(1000 * 100 + 1);
  EXPECT_TRUE(
      torch::equal(load_safetensors(step_dir + "/model-rank00001.safetensors").get("layers.0.w"),
                   torch::randn({8, 4})));
}

TEST(Checkpoint, MissingRankManifestRefusesToCommit) {
  TempDir dir("ck");
  const std::string root = dir.str();
  const std::string tmp = prepare_checkpoint_dir(root, 5);
  write_rank(tmp, 0, 5);
  save_safetensors(tmp + "/" + rank_file_name("model", 1),
                   {{"x", torch::ones({2})}});  // no manifest
  expect_checkpoint_error([&] { commit_checkpoint(root, tmp, 5, nlohmann::json::object(), 2, 0); },
                          {"rank 1", "world_size 2", "manifest-rank00001.json"});
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000005"));
  EXPECT_FALSE(fs::exists(fs::path(root) / "latest"));
  EXPECT_EQ(find_latest_checkpoint(root), std::nullopt);
}

TEST(Checkpoint, ManifestFromARankBeyondWorldSizeRefusesToCommit) {
  TempDir dir("ck");
  const std::string tmp = prepare_checkpoint_dir(dir.str(), 5);
  write_rank(tmp, 0, 5);
  write_rank(tmp, 1, 5);
  expect_checkpoint_error([&] { commit_checkpoint(dir.str(), tmp, 5, nullptr, 1, 0); },
                          {"manifest-rank00001.json", "world_size is 1"});
  EXPECT_FALSE(fs::exists(dir.path() / "step_00000005"));
}

TEST(Checkpoint, FileChangedAfterItsManifestRefusesToCommit) {
  TempDir dir("ck");
  const std::string tmp = prepare_checkpoint_dir(dir.str(), 5);
  write_rank(tmp, 0, 5);
  const fs::path model = fs::path(tmp) / rank_file_name("model", 0);
  fs::resize_file(model, fs::file_size(model) - 1);
  expect_checkpoint_error([&] { commit_checkpoint(dir.str(), tmp, 5, nullptr, 1, 0); },
                          {model.string(), "rank 0's manifest records"});
}

TEST(Checkpoint, MetaMustNotSetReservedKeysOrAnotherStep) {
  TempDir dir("ck");
  const std::string tmp = prepare_checkpoint_dir(dir.str(), 5);
  write_rank(tmp, 0, 5);
  expect_checkpoint_error(
      [&] {
        commit_checkpoint(dir.str(), tmp, 5, {{"files", 1}}, 1, 0);
      },
      {"'files'"});
  expect_checkpoint_error(
      [&] {
        commit_checkpoint(dir.str(), tmp, 5, {{"step", 4}}, 1, 0);
      },
      {"step 4", "step 5"});
  EXPECT_NO_THROW(commit_checkpoint(dir.str(), tmp, 5, {{"step", 5}}, 1, 0));
}

TEST(Checkpoint, ManifestRejectsNamesOutsideTheDirectory) {
  TempDir dir("ck");
  const std::string tmp = prepare_checkpoint_dir(dir.str(), 1);
  expect_checkpoint_error([&] { write_rank_manifest(tmp, 0, {"../escape"}); }, {"'../escape'"});
  expect_checkpoint_error([&] { write_rank_manifest(tmp, 0, {"meta.json"}); }, {"'meta.json'"});
  expect_checkpoint_error([&] { write_rank_manifest(tmp, 0, {"absent.safetensors"}); },
                          {"absent.safetensors"});
}

TEST(Checkpoint, KeepPrunesTheOldest) {
  TempDir dir("ck");
  const std::string root = dir.str();
  for (int64_t step : {100, 200, 300, 400}) save_checkpoint(root, step, 1, /*keep=*/2);
  EXPECT_EQ(entries(root), (std::vector<std::string>{"latest", "step_00000300", "step_00000400"}));
  EXPECT_EQ(slurp(fs::path(root) / "latest"), "step_00000400");
}

TEST(Checkpoint, KeepZeroKeepsAll) {
  TempDir dir("ck");
  for (int64_t step : {1, 2, 3}) save_checkpoint(dir.str(), step, 1, /*keep=*/0);
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"latest", "step_00000001",
                                                           "step_00000002", "step_00000003"}));
}

TEST(Checkpoint, RecommittingAStepReplacesIt) {
  TempDir dir("ck");
  save_checkpoint(dir.str(), 7, 1, 0);
  const std::string tmp = prepare_checkpoint_dir(dir.str(), 7);
  write_rank(tmp, 0, 8);  // different contents
  commit_checkpoint(dir.str(), tmp, 7, {{"second", true}}, 1, 0);
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"latest", "step_00000007"}));
  EXPECT_EQ(read_checkpoint_meta(dir.str() + "/step_00000007")["second"], true);
  EXPECT_NO_THROW(verify_checkpoint(dir.str() + "/step_00000007"));
}

// A crash before the rename leaves only hidden directories; they are never picked up.
TEST(Checkpoint, TempDirectoriesAreIgnored) {
  TempDir dir("ck");
  const std::string root = dir.str();
  const std::string good = save_checkpoint(root, 2, 1, 0);
  const std::string tmp = prepare_checkpoint_dir(root, 3);
  write_rank(tmp, 0, 3);
  overwrite(fs::path(tmp) / "meta.json",
            R"({"format_version":1,"files":{}})");  // even a plausible one
  EXPECT_EQ(find_latest_checkpoint(root), std::optional<std::string>(good));

  // A stale temp dir for the same step is cleared by the next prepare.
  const std::string again = prepare_checkpoint_dir(root, 3);
  EXPECT_EQ(again, tmp);
  EXPECT_TRUE(fs::is_empty(again));
}

TEST(Checkpoint, StepDirectoryWithoutMetaIsSkippedWithAWarning) {
  TempDir dir("ck");
  const std::string good = save_checkpoint(dir.str(), 2, 1, 0);
  fs::create_directory(dir.path() / "step_00000009");
  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_checkpoint(dir.str(), &warnings), std::optional<std::string>(good));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("step_00000009/meta.json"), std::string::npos) << warnings[0];
}

TEST(CheckpointVerify, TruncatedFileIsNamedWithSizes) {
  TempDir dir("ck");
  const std::string step_dir = save_checkpoint(dir.str(), 10, 2, 0);
  const fs::path victim = fs::path(step_dir) / "model-rank00001.safetensors";
  const uint64_t size = fs::file_size(victim);
  fs::resize_file(victim, size - 5);
  expect_checkpoint_error(
      [&] { verify_checkpoint(step_dir); },
      {victim.string(), std::to_string(size - 5) + " bytes", "expected " + std::to_string(size)});
}

TEST(CheckpointVerify, FlippedByteIsNamedWithChecksums) {
  TempDir dir("ck");
  const std::string step_dir = save_checkpoint(dir.str(), 10, 2, 0);
  const fs::path victim = fs::path(step_dir) / "optim-rank00000.safetensors";
  std::string bytes = slurp(victim);
  bytes[bytes.size() - 3] ^= 0x10;
  overwrite(victim, bytes);
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); },
                          {victim.string(), "xxh64", "expected"});
}

TEST(CheckpointVerify, MissingFileAndMissingMetaAreNamed) {
  TempDir dir("ck");
  const std::string step_dir = save_checkpoint(dir.str(), 10, 1, 0);
  fs::remove(fs::path(step_dir) / "optim-rank00000.safetensors");
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); },
                          {"optim-rank00000.safetensors", "missing"});
  fs::remove(fs::path(step_dir) / "meta.json");
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); }, {step_dir + "/meta.json"});
  expect_checkpoint_error([&] { read_checkpoint_meta(step_dir); }, {step_dir + "/meta.json"});
}

TEST(CheckpointVerify, MetaFromANewerFormatIsRefused) {
  TempDir dir("ck");
  const std::string step_dir = save_checkpoint(dir.str(), 10, 1, 0);
  nlohmann::json meta = read_checkpoint_meta(step_dir);
  meta["format_version"] = kCheckpointFormatVersion + 1;
  overwrite(fs::path(step_dir) / "meta.json", meta.dump());
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); }, {"meta.json", "format_version"});
  overwrite(fs::path(step_dir) / "meta.json", "{not json");
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); }, {"invalid JSON", "meta.json"});
}

// Rewrites meta.json and (when `reseal`) its checksum, as a consistent edit would.
void edit_meta(const std::string& step_dir,
               const std::function<void(nlohmann::json&)>& edit,
               bool reseal) {
  nlohmann::json meta = read_checkpoint_meta(step_dir);
  edit(meta);
  const std::string text = meta.dump(2) + "\n";
  overwrite(fs::path(step_dir) / "meta.json", text);
  if (reseal) {
    overwrite(fs::path(step_dir) / "meta.xxh64",
              hex64(file_xxh64(step_dir + "/meta.json")) + "  meta.json\n");
  }
}

// A trainer checkpoint: meta.json records the layout and optimizer steps.
std::string save_trainer_checkpoint(const std::string& root, int64_t step, int world_size) {
  const std::string tmp = prepare_checkpoint_dir(root, step);
  for (int r = 0; r < world_size; ++r) write_rank(tmp, r, step);
  const nlohmann::json meta = {{"optimizer_steps", step},
                               {"layout", {{"world", world_size}, {"zero_stage", 1}}}};
  return commit_checkpoint(root, tmp, step, meta, world_size, 0);
}

TEST(CheckpointVerify, EditedMetaFailsItsChecksum) {
  TempDir dir("ck");
  const std::string step_dir = save_trainer_checkpoint(dir.str(), 10, 2);
  ASSERT_NO_THROW(verify_checkpoint(step_dir));
  const std::vector<std::function<void(nlohmann::json&)>> edits = {
      [](nlohmann::json& m) { m["step"] = 11; },
      [](nlohmann::json& m) { m["files"] = nlohmann::json::object(); },
      [](nlohmann::json& m) { m["files"].erase("optim-rank00001.safetensors"); },
  };
  const std::string good = slurp(fs::path(step_dir) / "meta.json");
  for (const auto& edit : edits) {
    edit_meta(step_dir, edit, /*reseal=*/false);
    expect_checkpoint_error([&] { verify_checkpoint(step_dir); },
                            {step_dir + "/meta.json", "xxh64", "meta.xxh64"});
    overwrite(fs::path(step_dir) / "meta.json", good);
  }
  fs::remove(fs::path(step_dir) / "meta.xxh64");
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); }, {step_dir, "no meta.xxh64"});
}

// Even with a matching checksum, meta.json must agree with the directory and the layout.
TEST(CheckpointVerify, MetaMustMatchTheDirectoryAndTheLayout) {
  TempDir dir("ck");
  const std::string step_dir = save_trainer_checkpoint(dir.str(), 10, 2);
  const std::string good = slurp(fs::path(step_dir) / "meta.json");
  const std::string good_sum = slurp(fs::path(step_dir) / "meta.xxh64");
  auto restore = [&] {
    overwrite(fs::path(step_dir) / "meta.json", good);
    overwrite(fs::path(step_dir) / "meta.xxh64", good_sum);
    ASSERT_NO_THROW(verify_checkpoint(step_dir));
  };
  edit_meta(
      step_dir, [](nlohmann::json& m) { m["step"] = 11; }, true);
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); },
                          {"says step 11", "directory is step 10"});
  restore();
  edit_meta(
      step_dir, [](nlohmann::json& m) { m["files"] = nlohmann::json::object(); }, true);
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); }, {"is not listed in"});
  restore();
  // The optimizer file dropped from meta.json: still on disk, unlisted.
  edit_meta(
      step_dir, [](nlohmann::json& m) { m["files"].erase("optim-rank00001.safetensors"); }, true);
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); },
                          {"optim-rank00001.safetensors", "is not listed in"});
  // ... and removed from disk too: ZeRO-1 with world 2 writes one optimizer file per rank.
  fs::remove(fs::path(step_dir) / "optim-rank00001.safetensors");
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); },
                          {"does not list optim-rank00001.safetensors", "rank 1", "ZeRO-1"});
  // A file from a rank outside the saved world.
  edit_meta(
      step_dir, [](nlohmann::json& m) { m["layout"]["world"] = 1; }, true);
  expect_checkpoint_error([&] { verify_checkpoint(step_dir); }, {"from rank 1", "world 1"});
}

TEST(CheckpointFindLatest, AllCheckpointsInvalidIsAnErrorListingEach) {
  TempDir dir("ck");
  const std::string a = save_checkpoint(dir.str(), 10, 1, 0);
  const std::string b = save_checkpoint(dir.str(), 20, 1, 0);
  fs::resize_file(fs::path(a) / "model-rank00000.safetensors", 10);
  overwrite(fs::path(b) / "meta.json", "{}");
  std::vector<std::string> warnings;
  expect_checkpoint_error(
      [&] { find_latest_checkpoint(dir.str(), &warnings); },
      {"none of the 2 checkpoints", "step_00000010: ", "model-rank00000.safetensors is 10 bytes",
       "step_00000020: ", "step_00000020/meta.json"});
}

TEST(CheckpointFindLatest, FallsBackToThePreviousCompleteCheckpoint) {
  TempDir dir("ck");
  const std::string root = dir.str();
  const std::string older = save_checkpoint(root, 100, 2, 0);
  const std::string newer = save_checkpoint(root, 200, 2, 0);
  const fs::path victim = fs::path(newer) / "model-rank00000.safetensors";
  std::string bytes = slurp(victim);
  bytes[10] ^= 0x01;
  overwrite(victim, bytes);

  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_checkpoint(root, &warnings), std::optional<std::string>(older));
  ASSERT_EQ(warnings.size(), 2u);  // the bad file, and `latest` pointing at the bad checkpoint
  EXPECT_NE(warnings[0].find(victim.string()), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find("step_00000200"), std::string::npos) << warnings[1];
  EXPECT_NE(warnings[1].find("step_00000100"), std::string::npos) << warnings[1];
  EXPECT_EQ(find_latest_checkpoint(root, nullptr), std::optional<std::string>(older));
}

TEST(CheckpointFindLatest, NoneWhenRootIsMissingOrEmpty) {
  TempDir dir("ck");
  EXPECT_EQ(find_latest_checkpoint((dir.path() / "absent").string()), std::nullopt);
  EXPECT_EQ(find_latest_checkpoint(dir.str()), std::nullopt);
}

TEST(CheckpointFindLatest, ScanWinsOverAStaleLatestFile) {
  TempDir dir("ck");
  save_checkpoint(dir.str(), 1, 1, 0);
  const std::string newest = save_checkpoint(dir.str(), 2, 1, 0);
  atomic_write_file(dir.str() + "/latest", "step_00000001");  // as if we crashed before updating it
  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_checkpoint(dir.str(), &warnings), std::optional<std::string>(newest));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("names step_00000001"), std::string::npos) << warnings[0];
}

}  // namespace
}  // namespace condensa::trainer
