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
                       [--target deepseek|transformers] [--force]

Writes a Hugging Face DeepseekV3 directory: config.json and model.safetensors (sharded with
model.safetensors.index.json above --max-shard-size, default 5000000000 bytes).
DIR is a step directory or a run directory (its newest complete checkpoint).
HF_DIR must be new or empty; --force replaces it completely (nothing old is kept).

config.json states the routing in DeepSeek's keys (scoring_func, topk_method) and again in
`condensa_routing`. HF transformers' DeepseekV3 ignores those keys: it always routes with
sigmoid scores plus e_score_correction_bias and top-2-sum group scores. For a model it would
compute differently (softmax scores, bias-less group-limited routing, expert capacity) the
default target (deepseek) warns, and --target transformers refuses.
)";

}  // namespace

int export_command(const Args& args) {
  auto a = parse_args(args, {"--checkpoint", "--out", "--dtype", "--max-shard-size", "--target"},
                      {"--force"});
  if (a.help) return std::fputs(kExportHelp, stdout), 0;
  CONDENSA_CHECK(a.has("--checkpoint") && a.has("--out"), ConfigError,
                 "export needs --checkpoint and --out (see --help)");
  const std::string dtype = a.get("--dtype", "fp32");
  CONDENSA_CHECK(dtype == "fp32" || dtype == "bf16", ConfigError,
                 "--dtype: expected fp32 or bf16, got '", dtype, "'");
  const std::string target = a.get("--target", "deepseek");
  CONDENSA_CHECK(target == "deepseek" || target == "transformers", ConfigError,
                 "--target: expected deepseek or transformers, got '", target, "'");
  HfExportOptions opt;
  opt.max_shard_bytes = a.get_int("--max-shard-size", 5000000000LL);
  CONDENSA_CHECK(opt.max_shard_bytes > 0, ConfigError, "--max-shard-size ", opt.max_shard_bytes,
                 " must be > 0");
  opt.dtype = dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;

  const auto dir = resolve_checkpoint_dir(a.get("--checkpoint"));
  auto meta = read_checkpoint_meta(dir);
  auto cfg = parse_config_text(meta.at("config").get<std::string>(), {}, dir + "/meta.json");
  opt.tokenizer = cfg.data.tokenizer;
  const auto differences = transformers_routing_differences(cfg.model);
  if (!differences.empty()) {
    std::string why;
    for (const auto& d : differences) why += (why.empty() ? "" : "; ") + d;
    CONDENSA_CHECK(target != "transformers", ConfigError,
                   "--target transformers: HF transformers' DeepseekV3 would load this model and "
                   "silently compute a different one (",
                   why, ")");
    std::fprintf(stderr,
                 "warning: HF transformers' DeepseekV3 would compute a different model from this "
                 "export (%s); config.json condensa_routing says so\n",
                 why.c_str());
  }
  OutputDirectory out(a.get("--out"), a.has("--force"), "--out",
                      {dir, a.get("--checkpoint"), fs::current_path().string()});
  write_hf_directory(out.staging(), cfg.model, load_global_model_tensors(dir), opt);
  out.commit();
  std::printf("exported %s (step %ld) to %s\n", dir.c_str(),
              static_cast<long>(meta.value("step", int64_t(0))), a.get("--out").c_str());
  return 0;
}

}  // namespace condensa::trainer
