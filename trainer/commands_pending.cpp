// Subcommands whose implementation has not landed yet.
#include "common/error.h"
#include "trainer/commands.h"

namespace condensa::trainer {
#define PENDING(fn, name) \
  int fn(const Args&) { throw Error("condensa " name " is not implemented in this build"); }
PENDING(train_command, "train")
PENDING(eval_command, "eval")
PENDING(generate_command, "generate")
PENDING(export_command, "export")
PENDING(import_command, "import")
PENDING(plan_command, "plan")
PENDING(bench_command, "bench")
}  // namespace condensa::trainer
