// `condensa train CONFIG.yaml [--set key=value ...]`.
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "common/args.h"
#include "common/error.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/preflight.h"
#include "trainer/cli/signals.h"
#include "trainer/cli/world.h"
#include "trainer/trainer.h"

namespace condensa::trainer {
namespace {

const char* kTrainHelp = R"(usage: condensa train CONFIG.yaml [--set section.key=value ...]

Trains the model described by CONFIG.yaml. Overrides are applied in order after the file;
every key is documented in docs/config.md. Run under mpirun for several ranks
(launch/train.sh does that). SIGINT/SIGTERM during the steps finish the current step, save a
checkpoint and exit 0; a second signal, or one before the first step or during the final
validation, exits at once with 128 + the signal number. Exit codes: 0 done, 1 runtime error,
2 configuration error.

One run per run.dir (a second one is refused). A run.dir with checkpoints is resumed
(checkpoint.resume: auto); keys that change the training trajectory must then match the
checkpoint's config unless checkpoint.allow_config_change=true, and starting over there needs
checkpoint.resume=none plus run.overwrite=true. Steps with a non-finite loss or gradient norm
are skipped; more than train.max_skipped_steps in a row abort. See docs/checkpoint.md.

options:
  --set section.key=value   override one config key (repeatable)
  --print-config            print the resolved config and exit
  --config-reference        print every key with its default and meaning (markdown)
)";

}  // namespace

int train_command(const Args& args) {
  install_stop_handlers();  // first: no early signal may get the default action
  auto a = parse_args(args, {}, {"--print-config", "--config-reference"}, {"--set"});
  if (a.help) {
    std::fputs(kTrainHelp, stdout);
    return 0;
  }
  if (a.has("--config-reference")) {
    std::fputs(config_reference_markdown().c_str(), stdout);
    return 0;
  }
  if (a.positional.size() != 1)
    throw ConfigError("expected exactly one CONFIG.yaml (see condensa train --help)");
  Config cfg = load_config(a.positional[0], a.flags["--set"]);
  if (a.has("--print-config")) {
    std::fputs(config_to_yaml(cfg).c_str(), stdout);
    return 0;
  }
  World world = make_world(cfg.parallel);
  install_stop_handlers();  // again, should MPI initialisation have replaced them
  auto& comm = world.comm();
  check_same_config_on_every_rank(*world.mpi, cfg);
  cfg.validate_for_world(comm.size());
  check_memory(cfg, comm.size());
  check_run_dir_writable(cfg);
  check_resume_path(cfg);
  if (comm.rank() == 0) {
    std::printf("resolved config (%s):\n%s\n", a.positional[0].c_str(),
                config_to_yaml(cfg).c_str());
    std::fflush(stdout);
  }
  Trainer trainer(cfg, comm, stop_flag());
  trainer.set_phase_listener([](Trainer::Phase phase) {
    set_stop_phase(phase == Trainer::Phase::kSteps ? StopPhase::kSteps
                                                   : StopPhase::kFinalValidation);
  });
  trainer.run();
  set_stop_phase(StopPhase::kSetup);
  return 0;
}

}  // namespace condensa::trainer
