// `condensa report RUN_DIR [--out FILE]`: the run's curves, expert load heatmaps, config and
// layout as one self-contained HTML page (trainer/report.h).
#include <cstdio>
#include <filesystem>

#include "common/args.h"
#include "common/durable_file.h"
#include "common/error.h"
#include "trainer/cli/commands.h"
#include "trainer/report.h"

namespace condensa::trainer {

namespace {

const char* kReportHelp =
    R"(usage: condensa report RUN_DIR [--out FILE.html]

Writes one self-contained HTML page (inline SVG, nothing loaded from the network) from the
run directory's metrics.jsonl, config.yaml and layout.json: loss and validation curves,
learning rate, gradient norm, tokens/s, expert load per MoE layer, a heatmap of tokens per
expert per step for each MoE layer, the configuration and the layout. Works on a running job.
FILE defaults to RUN_DIR/report.html. Details: docs/observe.md.
)";

}  // namespace

int report_command(const Args& args) {
  auto a = parse_args(args, {"--out"});
  if (a.help) return std::fputs(kReportHelp, stdout), 0;
  CONDENSA_CHECK(a.positional.size() == 1, ConfigError,
                 "expected exactly one RUN_DIR (see condensa report --help), got ",
                 a.positional.size());
  const std::string run_dir = a.positional[0];
  CONDENSA_CHECK(std::filesystem::is_directory(run_dir), ConfigError, "RUN_DIR ", run_dir,
                 " is not a directory");
  const std::string out = a.get("--out", (std::filesystem::path(run_dir) / "report.html").string());
  atomic_write_file(out, render_report(run_dir));
  std::printf("report: %s\n", out.c_str());
  return 0;
}

}  // namespace condensa::trainer
