// `condensa export`: a checkpoint as a Hugging Face DeepseekV3 directory.
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

const char* kExportHelp =
    R"(usage: condensa export --checkpoint DIR --out HF_DIR [--dtype fp32|bf16] [--max-shard-size BYTES]

Writes a Hugging Face DeepseekV3 directory: config.json and model.safetensors (sharded with
model.safetensors.index.json above --max-shard-size, default 5000000000 bytes).
DIR is a step directory or a run directory (its newest complete checkpoint).
)";

}  // namespace

int export_command(const Args& args) {
  auto a = parse_args(args, {"--checkpoint", "--out", "--dtype", "--max-shard-size"});
  if (a.help) return std::fputs(kExportHelp, stdout), 0;
  CONDENSA_CHECK(a.has("--checkpoint") && a.has("--out"), ConfigError,
                 "export needs --checkpoint and --out (see --help)");
  const auto dir = resolve_checkpoint_dir(a.get("--checkpoint"));
  auto meta = read_checkpoint_meta(dir);
  auto cfg = parse_config_text(meta.at("config").get<std::string>(), {}, dir + "/meta.json");
  const std::string dtype = a.get("--dtype", "fp32");
  CONDENSA_CHECK(dtype == "fp32" || dtype == "bf16", ConfigError,
                 "--dtype: expected fp32 or bf16, got '", dtype, "'");
  const int64_t max_shard = a.get_int("--max-shard-size", 5000000000LL);
  CONDENSA_CHECK(max_shard > 0, ConfigError, "--max-shard-size ", max_shard, " must be > 0");
  write_hf_directory(a.get("--out"), cfg.model, load_global_model_tensors(dir), max_shard,
                     dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
  std::printf("exported %s (step %ld) to %s\n", dir.c_str(),
              static_cast<long>(meta.value("step", int64_t(0))), a.get("--out").c_str());
  return 0;
}

}  // namespace condensa::trainer
