#include "trainer/cli/signals.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

namespace condensa::trainer {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_phase{static_cast<int>(StopPhase::kSetup)};

void say(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_stop_signal(int sig) {
  const auto phase = static_cast<StopPhase>(g_phase.load());
  if (phase == StopPhase::kSteps) {
    if (!g_stop.exchange(true)) return;  // the trainer saves after the current step
    say("condensa train: second stop signal: exiting now; the current step is lost, the last "
        "checkpoint stays\n");
  } else if (phase == StopPhase::kFinalValidation) {
    say("condensa train: stop signal during the final validation: exiting now; the final "
        "checkpoint is saved\n");
  } else {
    say("condensa train: stop signal before the first step: exiting now; nothing was trained\n");
  }
  ::_exit(128 + sig);
}

}  // namespace

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

void set_stop_phase(StopPhase phase) { g_phase.store(static_cast<int>(phase)); }

const std::atomic<bool>* stop_flag() { return &g_stop; }

}  // namespace condensa::trainer
