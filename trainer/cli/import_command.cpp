// `condensa import`: a Hugging Face DeepseekV3 directory as a step-0 checkpoint.
#include <cstdio>
#include <filesystem>

#include "common/args.h"
#include "common/error.h"
#include "data/tokenizer.h"
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

const char* kImportHelp =
    R"(usage: condensa import --hf HF_DIR --out RUN_DIR [--set key=value ...] [--force]

Makes a step-0 checkpoint in RUN_DIR/checkpoints from a Hugging Face DeepseekV3 (or V2)
directory, so that `condensa train` with run.dir=RUN_DIR (checkpoint.resume: auto) continues
from it with a fresh optimizer. The overrides set the rest of the run config stored with it.
RUN_DIR must be new or empty; --force replaces it completely (its checkpoints included).

Routing follows topk_method: noaux_tc selects with e_score_correction_bias (router_bias: true);
greedy and group_limited_greedy import as router_bias: false with a zero bias that is never
trained. The model's vocab_size may exceed the tokenizer's (data.tokenizer) only for a model
that condensa exported with that tokenizer (config.json condensa_tokenizer).
)";

// A vocabulary larger than the tokenizer's has ids without text; accept it only for a model
// trained here with that tokenizer (a padded vocabulary), never for a foreign one.
void check_vocabulary(const HfModel& hf, const Config& cfg, const std::string& hf_dir) {
  const auto tok = data::make_tokenizer(cfg.data.tokenizer);
  if (hf.config.vocab_size <= tok->vocab_size() || hf.tokenizer == tok->name()) return;
  throw CheckpointError(str(hf_dir, "/config.json: vocab_size ", hf.config.vocab_size,
                            " is larger than the vocabulary of data.tokenizer '", tok->name(),
                            "' (", tok->vocab_size(), "): ids ", tok->vocab_size(), "..",
                            hf.config.vocab_size - 1,
                            " would have no text; import a model made for this tokenizer"));
}

}  // namespace

int import_command(const Args& args) {
  auto a = parse_args(args, {"--hf", "--out"}, {"--force"}, {"--set"});
  if (a.help) return std::fputs(kImportHelp, stdout), 0;
  CONDENSA_CHECK(a.has("--hf") && a.has("--out"), ConfigError,
                 "import needs --hf and --out (see --help)");
  auto hf = read_hf_directory(a.get("--hf"));
  Config cfg = parse_config_text("{}", a.flags["--set"]);
  cfg.model = hf.config;
  cfg.run.dir = a.get("--out");
  cfg.validate();
  check_vocabulary(hf, cfg, a.get("--hf"));
  OutputDirectory out(a.get("--out"), a.has("--force"), "--out",
                      {a.get("--hf"), fs::current_path().string()});
  const auto root = (fs::path(out.staging()) / "checkpoints").string();
  const auto tmp = prepare_checkpoint_dir(root, 0);
  save_safetensors((fs::path(tmp) / rank_file_name("model", 0)).string(), hf.tensors,
                   {{"format", "pt"}});
  write_rank_manifest(tmp, 0, {rank_file_name("model", 0)});
  nlohmann::json meta = {{"step", 0},
                         {"optimizer_steps", 0},
                         {"tokens_seen", 0},
                         {"config", config_to_yaml(cfg)},
                         {"imported_from", a.get("--hf")}};
  commit_checkpoint(root, tmp, 0, meta, 1, 0);
  out.commit();
  const auto dir = fs::path(a.get("--out")) / "checkpoints" / step_dir_name(0);
  std::printf("imported %s into %s\n", a.get("--hf").c_str(), dir.string().c_str());
  return 0;
}

}  // namespace condensa::trainer
