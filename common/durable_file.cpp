// POSIX implementation of the durable-file protocol (see durable_file.h). Every failing system
// call becomes an IoError with the path and strerror(errno).
#include "common/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/error.h"

namespace condensa {

namespace {

std::string errno_text() { return std::strerror(errno); }

// fsync of an open descriptor, closed afterwards whatever happens; `what` is "" or "directory ".
void fsync_path(const std::string& path, int open_flags, const char* what) {
  const int fd = ::open(path.c_str(), open_flags | O_CLOEXEC);
  if (fd < 0) throw IoError(str("cannot open ", what, path, ": ", errno_text()));
  const int rc = ::fsync(fd);
  const std::string err = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) throw IoError(str("cannot fsync ", what, path, ": ", err));
}

}  // namespace

SyncedFileWriter::SyncedFileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError(str("cannot create ", path, ": ", errno_text()));
}

SyncedFileWriter::~SyncedFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void SyncedFileWriter::write(const void* data, size_t num_bytes) {
  CONDENSA_CHECK(fd_ >= 0, IoError, "write to ", path_, " after finish()");
  const char* p = static_cast<const char*>(data);
  while (num_bytes > 0) {
    ssize_t n = ::write(fd_, p, std::min<size_t>(num_bytes, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw IoError(str("cannot write ", path_, ": ", errno_text()));
    p += n;
    num_bytes -= static_cast<size_t>(n);
  }
}

void SyncedFileWriter::finish() {
  CONDENSA_CHECK(fd_ >= 0, IoError, "finish() called twice on ", path_);
  if (::fsync(fd_) != 0) throw IoError(str("cannot fsync ", path_, ": ", errno_text()));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw IoError(str("cannot close ", path_, ": ", errno_text()));
}

void fsync_directory(const std::string& dir) {
  fsync_path(dir, O_RDONLY | O_DIRECTORY, "directory ");
}

void fsync_file(const std::string& path) { fsync_path(path, O_RDONLY, ""); }

void rename_path(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw IoError(str("cannot rename ", from, " to ", to, ": ", errno_text()));
}

void atomic_write_file(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    SyncedFileWriter out(tmp);
    out.write(bytes.data(), bytes.size());
    out.finish();
  }
  rename_path(tmp, path);
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  fsync_directory(parent.empty() ? "." : parent.string());
}

std::string read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw IoError(str("cannot read ", path, ": ", errno_text()));
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f);
  std::fclose(f);
  CONDENSA_CHECK(!failed, IoError, "cannot read ", path, ": read error");
  return out;
}

}  // namespace condensa
