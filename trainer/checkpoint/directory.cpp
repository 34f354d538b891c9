// Checkpoint directory mechanics. See directory.h for the protocol; docs/checkpoint.md for the
// on-disk layout and what a crash at each point leaves behind.
#include "trainer/checkpoint/directory.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/checksum.h"
#include "common/durable_file.h"
#include "common/error.h"

namespace condensa::trainer {
namespace fs = std::filesystem;

namespace {

constexpr const char* kMetaFile = "meta.json";
constexpr const char* kMetaChecksumFile = "meta.xxh64";  // "<xxh64>  meta.json", as xxhsum -H1
constexpr const char* kLatestFile = "latest";
constexpr const char* kTmpPrefix = ".tmp-";  // being written by the ranks
constexpr const char* kOldPrefix = ".old-";  // a same-step checkpoint being replaced
constexpr const char* kDelPrefix = ".del-";  // a pruned checkpoint being removed

std::string errno_text() { return std::strerror(errno); }

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::string join(const fs::path& dir, const std::string& name) { return (dir / name).string(); }

void remove_all_or_throw(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  CONDENSA_CHECK(!ec, CheckpointError, "cannot remove ", p.string(), ": ", ec.message());
}

// The XXH64 of a checkpoint file as recorded in manifests and meta.json ("0123456789abcdef").
// An unreadable file is a bad checkpoint: CheckpointError naming it.
std::string checkpoint_checksum(const std::string& path) {
  try {
    return hex64(file_xxh64(path));
  } catch (const IoError& e) {
    throw CheckpointError(e.what());
  }
}

uint64_t file_size_or_throw(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw CheckpointError(str("cannot stat ", path, ": ", errno_text()));
  return static_cast<uint64_t>(st.st_size);
}

// A manifest or meta.json; unreadable or invalid JSON is a bad checkpoint: CheckpointError.
nlohmann::json parse_json_file(const std::string& path) {
  std::string text;
  try {
    text = read_file(path);
  } catch (const IoError& e) {
    throw CheckpointError(e.what());
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(str("invalid JSON in ", path, ": ", e.what()));
  }
}

// A file name a rank may list in its manifest: a plain name that cannot clash with ours.
void check_rank_file_name(const std::string& tmp_dir, int rank, const std::string& name) {
  const bool ok = !name.empty() && name != "." && name != ".." &&
                  name.find('/') == std::string::npos && name != kMetaFile &&
                  name != kMetaChecksumFile && !starts_with(name, "manifest-");
  CONDENSA_CHECK(ok, CheckpointError, "rank ", rank, " cannot list '", name,
                 "' in its manifest in ", tmp_dir,
                 ": files must be plain names other than meta.json, meta.xxh64 and manifest-*");
}

// Reads rank r's manifest and adds its files (with "rank": r) to *files.
void merge_manifest(const fs::path& tmp, int rank, int world_size, nlohmann::json* files) {
  const std::string path = join(tmp, manifest_file_name(rank));
  std::error_code ec;
  CONDENSA_CHECK(fs::exists(path, ec), CheckpointError, "cannot commit checkpoint ", tmp.string(),
                 ": rank ", rank, " of world_size ", world_size, " left no manifest ", path,
                 " (did every rank finish writing its files?)");
  const nlohmann::json manifest = parse_json_file(path);
  CONDENSA_CHECK(manifest.is_object() && manifest.contains("rank") && manifest["rank"] == rank &&
                     manifest.contains("files") && manifest["files"].is_object(),
                 CheckpointError, "manifest ", path, " is malformed or is not rank ", rank, "'s");
  for (const auto& [name, entry] : manifest["files"].items()) {
    check_rank_file_name(tmp.string(), rank, name);
    if (files->contains(name)) {
      throw CheckpointError(str("cannot commit checkpoint ", tmp.string(), ": file ", name,
                                " is listed by rank ", (*files)[name]["rank"].get<int>(),
                                " and by rank ", rank));
    }
    const std::string file_path = join(tmp, name);
    CONDENSA_CHECK(
        entry.is_object() && entry.contains("bytes") && entry["bytes"].is_number_unsigned() &&
            entry.contains("xxh64") && entry["xxh64"].is_string(),
        CheckpointError, "manifest ", path, ": entry for ", name, " is malformed: ", entry.dump());
    const uint64_t expected = entry["bytes"].get<uint64_t>();
    const uint64_t actual = file_size_or_throw(file_path);
    CONDENSA_CHECK(actual == expected, CheckpointError, "cannot commit checkpoint: ", file_path,
                   " is ", actual, " bytes but rank ", rank, "'s manifest records ", expected);
    nlohmann::json merged = entry;
    merged["rank"] = rank;
    (*files)[name] = std::move(merged);
  }
}

// Ranks >= world_size must not have left manifests: that means the ranks disagree on the world.
void check_no_extra_manifests(const fs::path& tmp, int world_size) {
  for (const auto& e : fs::directory_iterator(tmp)) {
    const std::string name = e.path().filename().string();
    int rank = -1;
    if (std::sscanf(name.c_str(), "manifest-rank%d.json", &rank) == 1 && rank >= world_size) {
      throw CheckpointError(str("cannot commit checkpoint ", tmp.string(), ": found ", name,
                                " but world_size is ", world_size));
    }
  }
}

// Complete step directories (name parses, meta.json present), oldest first.
std::vector<std::pair<int64_t, fs::path>> list_step_dirs(const fs::path& root, bool require_meta) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    auto step = parse_step_dir_name(e.path().filename().string());
    if (!step || !e.is_directory()) continue;
    if (require_meta && !fs::exists(e.path() / kMetaFile)) continue;
    out.emplace_back(*step, e.path());
  }
  CONDENSA_CHECK(!ec, CheckpointError, "cannot list checkpoint directory ", root.string(), ": ",
                 ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

// Removes the oldest complete checkpoints (never `current_step`) so that `keep` remain, and
// leftovers of interrupted replacements and prunes. Each victim is first renamed to a hidden
// name, so a crash mid-removal leaves nothing that looks like a checkpoint.
void prune_checkpoints(const fs::path& root, int keep, int64_t current_step) {
  auto dirs = list_step_dirs(root, /*require_meta=*/true);
  if (keep > 0 && dirs.size() > static_cast<size_t>(keep)) {
    size_t excess = dirs.size() - static_cast<size_t>(keep);
    for (const auto& [step, path] : dirs) {
      if (excess == 0) break;
      if (step == current_step) continue;
      const fs::path hidden = root / (kDelPrefix + path.filename().string());
      remove_all_or_throw(hidden);
      rename_path(path.string(), hidden.string());
      --excess;
    }
    fsync_directory(root.string());
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (starts_with(name, kDelPrefix) || starts_with(name, kOldPrefix))
      remove_all_or_throw(e.path());
  }
}

// meta.json must hash to the value in meta.xxh64 (written with it at commit): an edited or
// damaged meta.json would otherwise vouch for the files it lists.
void verify_meta_checksum(const std::string& step_dir) {
  const std::string sum_path = join(step_dir, kMetaChecksumFile);
  std::error_code ec;
  CONDENSA_CHECK(fs::is_regular_file(sum_path, ec), CheckpointError, "checkpoint ", step_dir,
                 " has no ", kMetaChecksumFile, " (the checksum of meta.json)");
  std::string recorded = read_file(sum_path);
  recorded = recorded.substr(0, recorded.find_first_of(" \t\r\n"));
  const std::string actual = checkpoint_checksum(join(step_dir, kMetaFile));
  CONDENSA_CHECK(actual == recorded, CheckpointError, "checkpoint file ", join(step_dir, kMetaFile),
                 " has xxh64 ", actual, ", expected ", recorded, " from ", kMetaChecksumFile,
                 " (meta.json edited or corrupted?)");
}

// meta.json's "step" must be an integer equal to the step in the directory's name.
void check_meta_step(const std::string& step_dir, const nlohmann::json& meta) {
  const std::string meta_path = join(step_dir, kMetaFile);
  const auto step = meta.value("step", nlohmann::json());
  CONDENSA_CHECK(step.is_number_integer(), CheckpointError, meta_path,
                 " has no integer step: ", step.dump());
  const auto named = parse_step_dir_name(fs::path(step_dir).filename().string());
  CONDENSA_CHECK(!named || *named == step.get<int64_t>(), CheckpointError, meta_path, " says step ",
                 step.get<int64_t>(), " but its directory is step ", named.value_or(0));
}

// The tensor files of a checkpoint must be exactly those meta.json lists, and for a trainer
// checkpoint (meta.json has "layout") the listed set must be what that layout writes: rank 0 writes
// the dense model tensors and (once the optimizer has stepped) optimizer state; with ZeRO-1 every
// rank writes its optimizer shard.
void check_expected_files(const std::string& step_dir, const nlohmann::json& meta) {
  const std::string meta_path = join(step_dir, kMetaFile);
  const auto& files = meta["files"];
  for (const auto& e : fs::directory_iterator(step_dir)) {
    const std::string name = e.path().filename().string();
    CONDENSA_CHECK(e.path().extension() != ".safetensors" || files.contains(name), CheckpointError,
                   "checkpoint file ", e.path().string(), " is not listed in ", meta_path,
                   " (meta.json edited, or a stray file?)");
  }
  if (!meta.contains("layout")) return;  // not written by the trainer (e.g. condensa import)
  auto require = [&](const std::string& name, const std::string& why) {
    CONDENSA_CHECK(files.contains(name), CheckpointError, meta_path, " does not list ", name,
                   ", which ", why, " writes");
  };
  require(rank_file_name("model", 0), "rank 0");
  const auto& layout = meta["layout"];
  CONDENSA_CHECK(layout.is_object(), CheckpointError, meta_path,
                 ": \"layout\" is not an object: ", layout.dump());
  const int64_t world = layout.value("world", int64_t(1));
  for (const auto& [name, entry] : files.items()) {
    const int64_t rank = entry.value("rank", int64_t(0));
    CONDENSA_CHECK(rank >= 0 && rank < world, CheckpointError, meta_path, ": file ", name,
                   " is from rank ", rank, " but the layout has world ", world);
  }
  if (meta.value("optimizer_steps", int64_t(0)) <= 0) return;
  const bool zero1 = layout.value("zero_stage", int64_t(0)) == 1;
  for (int64_t r = 0; r < (zero1 ? world : 1); ++r) {
    require(rank_file_name("optim", static_cast<int>(r)),
            str("rank ", r, " (optimizer_steps ", meta["optimizer_steps"].dump(),
                zero1 ? ", ZeRO-1" : "", ")"));
  }
}
}  // namespace

// ---- names -----------------------------------------------------------------------------------

std::string step_dir_name(int64_t step) {
  CONDENSA_CHECK(step >= 0, CheckpointError, "checkpoint step must be non-negative, got ", step);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08" PRId64, step);
  return buf;
}

std::optional<int64_t> parse_step_dir_name(const std::string& name) {
  const std::string prefix = "step_";
  if (!starts_with(name, prefix) || name.size() < prefix.size() + 8 ||
      name.size() > prefix.size() + 18) {
    return std::nullopt;
  }
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  if (step_dir_name(step) != name) return std::nullopt;  // e.g. "step_000000001": not canonical
  return step;
}

std::string rank_file_name(const std::string& kind, int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "-rank%05d.safetensors", rank);
  return kind + buf;
}

std::string manifest_file_name(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "manifest-rank%05d.json", rank);
  return buf;
}

// ---- the three phases ------------------------------------------------------------------------

std::string prepare_checkpoint_dir(const std::string& root, int64_t step) {
  const fs::path tmp = fs::path(root) / (kTmpPrefix + step_dir_name(step));
  std::error_code ec;
  fs::create_directories(root, ec);
  CONDENSA_CHECK(!ec, CheckpointError, "cannot create checkpoint directory ", root, ": ",
                 ec.message());
  remove_all_or_throw(tmp);
  fs::create_directory(tmp, ec);
  CONDENSA_CHECK(!ec, CheckpointError, "cannot create ", tmp.string(), ": ", ec.message());
  return tmp.string();
}

void write_rank_manifest(const std::string& tmp_dir,
                         int rank,
                         const std::vector<std::string>& files) {
  CONDENSA_CHECK(rank >= 0, CheckpointError, "rank must be non-negative, got ", rank);
  std::error_code ec;
  CONDENSA_CHECK(fs::is_directory(tmp_dir, ec), CheckpointError, "rank ", rank,
                 ": checkpoint temp directory ", tmp_dir, " does not exist");
  nlohmann::json listed = nlohmann::json::object();
  for (const auto& name : files) {
    check_rank_file_name(tmp_dir, rank, name);
    CONDENSA_CHECK(!listed.contains(name), CheckpointError, "rank ", rank, " lists '", name,
                   "' twice in its manifest");
    const std::string path = join(tmp_dir, name);
    listed[name] = {{"bytes", file_size_or_throw(path)}, {"xxh64", checkpoint_checksum(path)}};
  }
  const nlohmann::json manifest = {
      {"format_version", kCheckpointFormatVersion}, {"rank", rank}, {"files", listed}};
  atomic_write_file(join(tmp_dir, manifest_file_name(rank)), manifest.dump(2) + "\n");
}

std::string commit_checkpoint(const std::string& root,
                              const std::string& tmp_dir,
                              int64_t step,
                              const nlohmann::json& meta,
                              int world_size,
                              int keep) {
  // ---- checks ----
  const std::string name = step_dir_name(step);
  const fs::path tmp(tmp_dir);
  CONDENSA_CHECK(world_size >= 1, CheckpointError, "world_size must be at least 1, got ",
                 world_size);
  CONDENSA_CHECK(fs::is_directory(tmp), CheckpointError, "cannot commit checkpoint step ", step,
                 ": temp directory ", tmp_dir, " does not exist");
  CONDENSA_CHECK(meta.is_object() || meta.is_null(), CheckpointError,
                 "checkpoint meta must be a JSON object, got ", meta.type_name());
  for (const char* reserved : {"files", "format_version"}) {
    CONDENSA_CHECK(!meta.contains(reserved), CheckpointError, "checkpoint meta must not set '",
                   reserved, "': commit_checkpoint writes it");
  }
  CONDENSA_CHECK(!meta.contains("step") || meta["step"] == step, CheckpointError,
                 "checkpoint meta says step ", meta.value("step", nlohmann::json()).dump(),
                 " but it is being committed as step ", step);

  // ---- merge the rank manifests into meta.json ----
  nlohmann::json files = nlohmann::json::object();
  for (int r = 0; r < world_size; ++r) merge_manifest(tmp, r, world_size, &files);
  check_no_extra_manifests(tmp, world_size);
  nlohmann::json full = meta.is_null() ? nlohmann::json::object() : meta;
  full["format_version"] = kCheckpointFormatVersion;
  full["step"] = step;
  full["files"] = std::move(files);
  for (int r = 0; r < world_size; ++r) remove_all_or_throw(tmp / manifest_file_name(r));
  // NOTE: this also fsyncs tmp_dir, so every rank's files and their names are durable.
  const std::string meta_text = full.dump(2) + "\n";
  atomic_write_file(join(tmp, kMetaFile), meta_text);
  Xxh64 meta_sum;
  meta_sum.update(meta_text.data(), meta_text.size());
  atomic_write_file(join(tmp, kMetaChecksumFile),
                    hex64(meta_sum.digest()) + "  " + kMetaFile + "\n");

  // ---- publish: one rename makes the checkpoint visible ----
  const fs::path final_dir = fs::path(root) / name;
  if (fs::exists(final_dir)) {  // re-saving a step (resumed from an older checkpoint)
    const fs::path old = fs::path(root) / (kOldPrefix + name);
    remove_all_or_throw(old);
    rename_path(final_dir.string(), old.string());
  }
  rename_path(tmp.string(), final_dir.string());
  fsync_directory(root);
  atomic_write_file(join(root, kLatestFile), name);

  // ---- retention ----
  prune_checkpoints(root, keep, step);
  return final_dir.string();
}

// ---- reading ---------------------------------------------------------------------------------

nlohmann::json read_checkpoint_meta(const std::string& step_dir) {
  const std::string path = join(step_dir, kMetaFile);
  nlohmann::json meta = parse_json_file(path);
  CONDENSA_CHECK(meta.is_object(), CheckpointError, path, " must hold a JSON object");
  return meta;
}

void verify_checkpoint(const std::string& step_dir) {
  const nlohmann::json meta = read_checkpoint_meta(step_dir);
  const std::string meta_path = join(step_dir, kMetaFile);
  const auto version = meta.value("format_version", nlohmann::json());
  CONDENSA_CHECK(version.is_number_integer(), CheckpointError, meta_path,
                 " has no integer format_version");
  CONDENSA_CHECK(version.get<int>() <= kCheckpointFormatVersion, CheckpointError, meta_path,
                 " has format_version ", version.get<int>(), " but this build reads up to ",
                 kCheckpointFormatVersion);
  if (version.get<int>() >= 2) verify_meta_checksum(step_dir);
  check_meta_step(step_dir, meta);
  CONDENSA_CHECK(meta.contains("files") && meta["files"].is_object(), CheckpointError, meta_path,
                 " has no \"files\" object");
  for (const auto& [name, entry] : meta["files"].items()) {
    const std::string path = join(step_dir, name);
    CONDENSA_CHECK(name.find('/') == std::string::npos && entry.is_object() &&
                       entry.contains("bytes") && entry["bytes"].is_number_unsigned() &&
                       entry.contains("xxh64") && entry["xxh64"].is_string(),
                   CheckpointError, meta_path, ": entry for file '", name,
                   "' is malformed: ", entry.dump());
    std::error_code ec;
    CONDENSA_CHECK(fs::is_regular_file(path, ec), CheckpointError, "checkpoint file ", path,
                   " is missing (listed in ", meta_path, ")");
    const uint64_t expected_bytes = entry["bytes"].get<uint64_t>();
    const uint64_t actual_bytes = file_size_or_throw(path);
    CONDENSA_CHECK(actual_bytes == expected_bytes, CheckpointError, "checkpoint file ", path,
                   " is ", actual_bytes, " bytes, expected ", expected_bytes,
                   " (truncated or overwritten?)");
    const std::string expected_sum = entry["xxh64"].get<std::string>();
    const std::string actual_sum = checkpoint_checksum(path);
    CONDENSA_CHECK(actual_sum == expected_sum, CheckpointError, "checkpoint file ", path,
                   " has xxh64 ", actual_sum, ", expected ", expected_sum, " (corrupted?)");
  }
  check_expected_files(step_dir, meta);
}

std::vector<std::string> list_checkpoint_dirs(const std::string& root) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& [step, path] : list_step_dirs(root, /*require_meta=*/false))
    out.push_back(path.string());
  return out;
}

std::optional<std::string> find_latest_checkpoint(const std::string& root,
                                                  std::vector<std::string>* warnings) {
  auto warn = [&](const std::string& w) {
    if (warnings) warnings->push_back(w);
  };
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  auto dirs = list_step_dirs(root, /*require_meta=*/false);
  std::optional<std::string> found;
  std::string problems;  // what is wrong with each rejected checkpoint
  for (auto it = dirs.rbegin(); it != dirs.rend() && !found; ++it) {
    try {
      verify_checkpoint(it->second.string());
      found = it->second.string();
    } catch (const std::exception& e) {  // CheckpointError, or a malformed meta.json entry
      warn(str("skipping checkpoint ", it->second.string(), ": ", e.what()));
      problems += str(problems.empty() ? "" : "; ", it->second.filename().string(), ": ", e.what());
    }
  }
  // Starting over would silently discard the run: refuse, naming every problem.
  CONDENSA_CHECK(found || dirs.empty(), CheckpointError, "none of the ", dirs.size(),
                 " checkpoints in ", root, " is valid (", problems,
                 "); repair or remove them, or resume from a copy with checkpoint.resume=PATH");
  const std::string latest_path = join(root, kLatestFile);
  if (fs::exists(latest_path, ec)) {
    std::string hint = read_file(latest_path);
    hint.erase(hint.find_last_not_of(" \t\r\n") + 1);
    const std::string chosen = found ? fs::path(*found).filename().string() : "(none)";
    if (hint != chosen) {
      warn(str(latest_path, " names ", hint, " but the newest valid checkpoint is ", chosen));
    }
  }
  return found;
}

}  // namespace condensa::trainer
