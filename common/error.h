// Errors condensa reports to users.
//
// Library code throws; only main() turns an exception into a message and an exit code.
// ConfigError (bad YAML, bad --set, inconsistent values) exits 2; every other condensa::Error
// (bad data file, bad checkpoint, failed collective) exits 1. Messages name the key, file or
// rank and the offending value, so that the user can fix the input without reading code.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace condensa {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad user configuration: exit code 2.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what) {}
};

// A file that cannot be read, written, synced or renamed (common/durable_file.h): the
// operating system refused, and the message carries its reason (errno text) and the path.
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what) {}
};

// Bad or unreadable data files (token shards, text input).
class DataError : public Error {
 public:
  explicit DataError(const std::string& what) : Error(what) {}
};

// Bad, truncated or missing checkpoint files.
class CheckpointError : public Error {
 public:
  explicit CheckpointError(const std::string& what) : Error(what) {}
};

// A failed or timed-out collective, or ranks that disagree.
class CommError : public Error {
 public:
  explicit CommError(const std::string& what) : Error(what) {}
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <class T, class... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}
}  // namespace detail

// str("a", 1, "b") -> "a1b"; for building error messages.
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append_all(os, args...);
  return os.str();
}

}  // namespace condensa

// CONDENSA_CHECK(cond, ErrorType, message parts...): throw ErrorType with the message.
#define CONDENSA_CHECK(cond, ErrorType, ...)                    \
  do {                                                          \
    if (!(cond)) throw ErrorType(::condensa::str(__VA_ARGS__)); \
  } while (0)
