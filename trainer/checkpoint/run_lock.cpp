// Run-directory lock. See run_lock.h for why flock(2).
#include "trainer/checkpoint/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "common/error.h"

namespace fs = std::filesystem;

namespace condensa::trainer {
namespace {

std::string read_all(int fd) {
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(out.size()))) > 0)
    out.append(buf, static_cast<size_t>(n));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string holder_text() {
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  char when[32] = "?";
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  if (::gmtime_r(&now, &tm)) std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return str("host ", host, " pid ", ::getpid(), " since ", when);
}

}  // namespace

RunDirLock::RunDirLock(const std::string& run_dir) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  CONDENSA_CHECK(!ec, IoError, "cannot create run.dir ", run_dir, ": ", ec.message());
  path_ = (fs::path(run_dir) / ".lock").string();
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  CONDENSA_CHECK(fd_ >= 0, IoError, "cannot open the run-directory lock ", path_, ": ",
                 std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = read_all(fd_);
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK) {
      throw Error(str("run.dir ", run_dir, " is in use by another condensa train (",
                      holder.empty() ? std::string("holder not yet recorded") : holder,
                      "; lock file ", path_, "): wait for it to finish or use another run.dir"));
    }
    throw IoError(str("cannot lock ", path_, ": ", std::strerror(err)));
  }
  stale_holder_ = read_all(fd_);
  const std::string me = holder_text() + "\n";
  const bool ok = ::ftruncate(fd_, 0) == 0 &&
                  ::pwrite(fd_, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  CONDENSA_CHECK(ok, IoError, "cannot write the run-directory lock ", path_, ": ",
                 std::strerror(errno));
}

RunDirLock::~RunDirLock() {
  if (fd_ < 0) return;
  // Emptied before unlocking: a clean release leaves nothing that reads as a stale holder.
  [[maybe_unused]] const int rc = ::ftruncate(fd_, 0);
  ::close(fd_);  // releases the flock
}

}  // namespace condensa::trainer
