// Durable files: the one way condensa publishes a file so that a crash leaves either the old or
// the new content, never a torn one.
//
// Key design choice: one protocol for every writer (checkpoints, data shards, configs, metrics):
// write the bytes to a temporary name, fsync them, rename over the final name, fsync the parent
// directory. The rename is atomic on POSIX file systems, and the two fsyncs order it after the
// data and make it survive a power loss. Errors are IoError naming the path and the operating
// system's reason; callers that own a stronger contract (a checkpoint is complete or invisible)
// add their context on top.
#pragma once

#include <cstddef>
#include <string>

namespace condensa {

// Replaces `path` with `bytes`: writes `<path>.tmp`, fsyncs it, renames it over `path`, fsyncs
// the parent directory.
void atomic_write_file(const std::string& path, const std::string& bytes);

// The whole file as bytes; throws IoError naming it.
std::string read_file(const std::string& path);

// rename(2) of `from` to `to` (replacing a file `to`, or an empty directory); throws IoError
// naming both. Not durable by itself: fsync_directory() the parent afterwards.
void rename_path(const std::string& from, const std::string& to);

// fsyncs a directory, making renames and creations inside it durable.
void fsync_directory(const std::string& dir);

// fsyncs an existing file written by someone else (e.g. through a std::ofstream), so that its
// bytes are on disk before a rename publishes it.
void fsync_file(const std::string& path);

// Writes a new file sequentially; finish() fsyncs and closes it. Errors name the file.
class SyncedFileWriter {
 public:
  explicit SyncedFileWriter(const std::string& path);  // creates or truncates
  ~SyncedFileWriter();                                 // closes without syncing if unfinished
  SyncedFileWriter(const SyncedFileWriter&) = delete;
  SyncedFileWriter& operator=(const SyncedFileWriter&) = delete;

  void write(const void* data, size_t num_bytes);
  void finish();

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace condensa
