// Watchdog: a hung collective must never hang the job.
//
// Key design choice: only operations that are *in flight* count. A backend wraps every
// collective in a Watchdog::Guard (registration is a mutex and a map insert); a background
// thread wakes a few times per timeout and, if some guard is older than parallel.timeout_s,
// prints one line naming the rank, host, op and communicator, then aborts every rank
// (MPI_Abort on MPI_COMM_WORLD). A rank that is merely computing, writing a checkpoint or
// handling SIGINT/SIGTERM holds no guard and is never aborted; its peers, waiting for it inside
// a collective, are, once they have waited longer than the timeout.
//
// A hang cannot be unwound by an exception (the thread is stuck inside the library), so this
// is the one place library code ends the process. The thread blocks every signal, so that
// SIGINT/SIGTERM keep going to the main thread and the trainer's graceful-stop handler.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace condensa::parallel {

constexpr double kDefaultTimeoutS = 600.0;

struct WatchdogOptions {
  double timeout_s = kDefaultTimeoutS;  // parallel.timeout_s; 0 disables the watchdog
  int rank = 0;                         // world rank named in the message
  std::string host;                     // host named in the message; empty = this host
  // Called once, from the watchdog thread, with the message line (no newline). Default: print
  // it to stderr and MPI_Abort the world (or _Exit(1) when MPI is not initialised).
  std::function<void(const std::string& message)> on_timeout;
};

class Watchdog {
 public:
  explicit Watchdog(WatchdogOptions options);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Registers an in-flight operation for its lifetime.
  class Guard {
   public:
    Guard() = default;
    Guard(Guard&& other) noexcept;
    Guard& operator=(Guard&& other) noexcept;
    ~Guard();

   private:
    friend class Watchdog;
    Guard(Watchdog* owner, uint64_t id) : owner_(owner), id_(id) {}
    Watchdog* owner_ = nullptr;
    uint64_t id_ = 0;
  };

  // `op` ("all_reduce") on communicator `comm` ("dp") starts now.
  Guard watch(std::string op, std::string comm);

  double timeout_s() const;
  // Takes effect for operations already in flight too. 0 disables.
  void set_timeout_s(double timeout_s);
  int num_in_flight() const;
  bool fired() const;

  // The line printed on timeout (exposed for tests).
  static std::string timeout_message(int rank,
                                     const std::string& host,
                                     const std::string& op,
                                     const std::string& comm,
                                     double timeout_s);

 private:
  struct InFlight {
    std::string op;
    std::string comm;
    std::chrono::steady_clock::time_point start;
  };
  void unregister(uint64_t id);
  void run();

  WatchdogOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, InFlight> in_flight_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  bool fired_ = false;
  std::thread thread_;
};

// Host name of this machine (gethostname).
std::string this_host_name();

}  // namespace condensa::parallel
