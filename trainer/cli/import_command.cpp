// `condensa import`: a Hugging Face DeepseekV3 directory as a step-0 checkpoint.
#include <cstdio>
#include <filesystem>

#include "common/args.h"
#include "common/error.h"
#include "trainer/checkpoint/directory.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/checkpoint/state.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/inference.h"
#include "trainer/interop/hf.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

namespace {

const char* kImportHelp = R"(usage: condensa import --hf HF_DIR --out RUN_DIR [--set key=value ...]

Makes a step-0 checkpoint in RUN_DIR/checkpoints from a Hugging Face DeepseekV3 directory, so
that `condensa train` with run.dir=RUN_DIR (checkpoint.resume: auto) continues from it with a
fresh optimizer. The overrides set the rest of the run config stored with it.
)";

}  // namespace

int import_command(const Args& args) {
  auto a = parse_args(args, {"--hf", "--out", "--set"});
  if (a.help) return std::fputs(kImportHelp, stdout), 0;
  CONDENSA_CHECK(a.has("--hf") && a.has("--out"), ConfigError,
                 "import needs --hf and --out (see --help)");
  auto [m, tensors] = read_hf_directory(a.get("--hf"));
  Config cfg = parse_config_text("{}", a.flags["--set"]);
  cfg.model = m;
  cfg.run.dir = a.get("--out");
  cfg.validate();
  const auto root = (fs::path(a.get("--out")) / "checkpoints").string();
  const auto tmp = prepare_checkpoint_dir(root, 0);
  save_safetensors((fs::path(tmp) / rank_file_name("model", 0)).string(), tensors,
                   {{"format", "pt"}});
  write_rank_manifest(tmp, 0, {rank_file_name("model", 0)});
  nlohmann::json meta = {{"step", 0},
                         {"optimizer_steps", 0},
                         {"tokens_seen", 0},
                         {"config", config_to_yaml(cfg)},
                         {"imported_from", a.get("--hf")}};
  auto dir = commit_checkpoint(root, tmp, 0, meta, 1, 0);
  std::printf("imported %s into %s\n", a.get("--hf").c_str(), dir.c_str());
  return 0;
}

}  // namespace condensa::trainer
