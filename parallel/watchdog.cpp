// Watchdog thread: see watchdog.h for the design.
#include "parallel/watchdog.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "common/error.h"
#include "parallel/mpi/mpi_include.h"

namespace condensa::parallel {

namespace {

constexpr int kAbortExitCode = 3;

void default_on_timeout(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, kAbortExitCode);
  std::_Exit(kAbortExitCode);  // MPI_Abort does not return; this covers runs without MPI.
}

std::string format_seconds(double s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

}  // namespace

std::string this_host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

std::string Watchdog::timeout_message(int rank,
                                      const std::string& host,
                                      const std::string& op,
                                      const std::string& comm,
                                      double timeout_s) {
  const bool p2p =
      op.rfind("recv", 0) == 0 || op.rfind("send", 0) == 0 || op.rfind("post_send", 0) == 0;
  return str("condensa: rank ", rank, " (host ", host,
             "): ", p2p ? "point-to-point " : "collective ", op, " on ", comm,
             " did not complete within ", format_seconds(timeout_s), " s; aborting the job");
}

Watchdog::Watchdog(WatchdogOptions options) : options_(std::move(options)) {
  CONDENSA_CHECK(options_.timeout_s >= 0, ConfigError, "parallel.timeout_s (", options_.timeout_s,
                 ") must be >= 0 (0 disables the watchdog)");
  if (options_.host.empty()) options_.host = this_host_name();
  if (!options_.on_timeout) options_.on_timeout = default_on_timeout;
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Watchdog::Guard::Guard(Guard&& other) noexcept : owner_(other.owner_), id_(other.id_) {
  other.owner_ = nullptr;
}

Watchdog::Guard& Watchdog::Guard::operator=(Guard&& other) noexcept {
  if (this != &other) {
    if (owner_) owner_->unregister(id_);
    owner_ = other.owner_;
    id_ = other.id_;
    other.owner_ = nullptr;
  }
  return *this;
}

Watchdog::Guard::~Guard() {
  if (owner_) owner_->unregister(id_);
}

Watchdog::Guard Watchdog::watch(std::string op, std::string comm) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  in_flight_.emplace(id,
                     InFlight{std::move(op), std::move(comm), std::chrono::steady_clock::now()});
  return Guard(this, id);
}

void Watchdog::unregister(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_.erase(id);
}

double Watchdog::timeout_s() const {
  std::lock_guard<std::mutex> lock(mu_);
  return options_.timeout_s;
}

void Watchdog::set_timeout_s(double timeout_s) {
  CONDENSA_CHECK(timeout_s >= 0, ConfigError, "parallel.timeout_s (", timeout_s,
                 ") must be >= 0 (0 disables the watchdog)");
  {
    std::lock_guard<std::mutex> lock(mu_);
    options_.timeout_s = timeout_s;
  }
  cv_.notify_all();
}

int Watchdog::num_in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(in_flight_.size());
}

bool Watchdog::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

void Watchdog::run() {
  // Signals go to the main thread, never here (see the header).
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);

  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && !fired_) {
    const double timeout = options_.timeout_s;
    // Wake often enough to fire within ~10% of the timeout (at most once a second).
    const double poll_s = timeout > 0 ? std::clamp(timeout / 10, 0.01, 1.0) : 1.0;
    cv_.wait_for(lock, std::chrono::duration<double>(poll_s));
    if (stop_ || options_.timeout_s <= 0) continue;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& [id, op] : in_flight_) {
      const double age = std::chrono::duration<double>(now - op.start).count();
      if (age < options_.timeout_s) continue;
      fired_ = true;
      const std::string message =
          timeout_message(options_.rank, options_.host, op.op, op.comm, options_.timeout_s);
      auto on_timeout = options_.on_timeout;
      lock.unlock();  // on_timeout may not return; never hold the lock across it
      on_timeout(message);
      return;
    }
  }
}

}  // namespace condensa::parallel
