// Checkpoint directory mechanics: a checkpoint is either complete or invisible.
//
// Every rank writes its files into a hidden temporary directory and records their sizes and
// XXH64 checksums in a per-rank manifest; rank 0 then merges the manifests into meta.json and
// publishes the directory with one atomic rename. Nothing here communicates: the trainer runs
// the three phases with a barrier between each,
//
//   rank 0:     tmp = prepare_checkpoint_dir(root, step)           (phase 1)
//   every rank: save_safetensors(tmp + "/" + rank_file_name("model", rank), ...);
//               write_rank_manifest(tmp, rank, {files...})         (phase 2)
//   rank 0:     commit_checkpoint(root, tmp, step, meta, world, keep)  (phase 3)
//
// and on resume calls find_latest_checkpoint(root), which scans for step_* directories and
// verifies them; the `latest` file is only a hint for people and scripts. Files are published
// with common/durable_file.h and checksummed with XXH64 from common/checksum.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace condensa::trainer {

// Bumped when meta.json or the directory layout changes incompatibly. Version 2 added
// meta.xxh64 (the checksum of meta.json itself); version 1 checkpoints are still read.
inline constexpr int kCheckpointFormatVersion = 2;

// "step_00001000" for 1000; at least 8 digits, so names sort like steps.
std::string step_dir_name(int64_t step);
// 1000 for "step_00001000"; nullopt for anything that is not a step directory name.
std::optional<int64_t> parse_step_dir_name(const std::string& name);
// "model-rank00003.safetensors" for ("model", 3).
std::string rank_file_name(const std::string& kind, int rank);
// "manifest-rank00003.json" for 3.
std::string manifest_file_name(int rank);

// Phase 1 (rank 0): creates an empty `<root>/.tmp-step_XXXXXXXX` (removing a stale one left by
// a crash) and returns its path. Creates `root` if needed.
std::string prepare_checkpoint_dir(const std::string& root, int64_t step);

// Phase 2 (every rank, after writing its files into tmp_dir): records each file's size and
// checksum in tmp_dir/manifest-rankNNNNN.json, written atomically and fsynced. `files` are
// plain names inside tmp_dir.
void write_rank_manifest(const std::string& tmp_dir,
                         int rank,
                         const std::vector<std::string>& files);

// Phase 3 (rank 0, after every rank wrote its manifest): checks that ranks 0..world_size-1
// (and no others) left a manifest and that every listed file has its recorded size; writes
// meta.json (a copy of `meta` plus "format_version", "step" and "files"); renames the temp dir
// to `<root>/step_XXXXXXXX` (replacing an existing one for the same step); points
// `<root>/latest` at it; and removes the oldest complete checkpoints beyond `keep` (keep <= 0
// keeps all). Every step is fsynced before the next. Returns the step directory's path.
std::string commit_checkpoint(const std::string& root,
                              const std::string& tmp_dir,
                              int64_t step,
                              const nlohmann::json& meta,
                              int world_size,
                              int keep);

// Throws CheckpointError unless meta.json matches its checksum in meta.xxh64 (format 2), its
// "step" matches the directory name, every tensor file it lists exists with the recorded size
// and checksum, no tensor file in the directory is unlisted, and the listed set is what the
// saved layout writes (model-rank00000; with optimizer steps, optim-rank00000, and one optim
// file per rank with ZeRO-1). The message names the file and expected vs actual values.
void verify_checkpoint(const std::string& step_dir);

// Step directories under `root` (any named step_XXXXXXXX, complete or not), oldest first.
std::vector<std::string> list_checkpoint_dirs(const std::string& root);

// The newest step directory under `root` that passes verify_checkpoint. Newer ones that fail
// are skipped with a warning naming the bad file (appended to *warnings when not null), as is
// a `latest` file that disagrees with the result. nullopt when `root` holds no step directory;
// CheckpointError listing what is wrong with each when it holds some and none is valid.
std::optional<std::string> find_latest_checkpoint(const std::string& root,
                                                  std::vector<std::string>* warnings = nullptr);

// Parsed meta.json of a step directory; throws CheckpointError naming the file.
nlohmann::json read_checkpoint_meta(const std::string& step_dir);

}  // namespace condensa::trainer
