// `condensa generate`: sample text from a checkpoint with the MLA KV cache.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/args.h"
#include "common/error.h"
#include "data/tokenizer.h"
#include "trainer/cli/commands.h"
#include "trainer/inference.h"

namespace condensa::trainer {

namespace {

const char* kGenerateHelp =
    R"(usage: condensa generate --checkpoint DIR --prompt TEXT [--max-new-tokens N]
                         [--temperature T] [--top-k K] [--seed S] [--no-cache] [--ids]

Samples a continuation of TEXT with the model's KV cache (the compressed MLA latent). The
model sees BOS followed by TEXT's tokens (the checkpoint's tokenizer). --temperature 0 is
greedy decoding. Generation stops at the end-of-document token (EOS), which is not printed.
Only ids of the tokenizer's vocabulary are sampled (a padded model vocabulary has more).
Prints TEXT and the continuation as raw bytes (any byte, NUL included) and a newline; --ids
prints the token ids instead, space-separated: BOS, TEXT's, then the generated ones (EOS
included when generated).
)";

}  // namespace

int generate_command(const Args& args) {
  auto a = parse_args(
      args, {"--checkpoint", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--seed"},
      {"--no-cache", "--ids"});
  if (a.help) return std::fputs(kGenerateHelp, stdout), 0;
  CONDENSA_CHECK(a.has("--checkpoint"), ConfigError, "generate needs --checkpoint (see --help)");
  auto loaded = load_model_for_inference(a.get("--checkpoint"));
  auto tok = data::make_tokenizer(loaded.config.data.tokenizer);
  GenerateOptions opt;
  opt.max_new_tokens = a.get_int("--max-new-tokens", 64);
  opt.temperature = a.get_double("--temperature", 1.0);
  opt.top_k = a.get_int("--top-k", 0);
  opt.seed = static_cast<uint64_t>(a.get_int("--seed", 0));
  opt.use_cache = !a.has("--no-cache");
  opt.stop_token = tok->eos_id();
  opt.num_sampled_ids = tok->vocab_size();
  CONDENSA_CHECK(opt.max_new_tokens >= 0, ConfigError, "--max-new-tokens ", opt.max_new_tokens,
                 " must be >= 0");
  CONDENSA_CHECK(opt.temperature >= 0, ConfigError, "--temperature ", opt.temperature,
                 " must be >= 0");
  std::vector<int64_t> prompt{tok->bos_id()};
  for (auto id : tok->encode(a.get("--prompt"))) prompt.push_back(id);
  auto ids = generate(*loaded.model, prompt, opt);
  std::string text;
  if (a.has("--ids")) {
    for (auto id : prompt) text += std::to_string(id) + " ";
    for (auto id : ids) text += std::to_string(id) + " ";
    text.back() = '\n';
  } else {
    std::vector<int32_t> out(ids.begin(), ids.end());
    if (!out.empty() && out.back() == tok->eos_id()) out.pop_back();
    // Raw bytes: the text may hold any byte, NUL included.
    text = a.get("--prompt") + tok->decode(out) + "\n";
  }
  CONDENSA_CHECK(std::fwrite(text.data(), 1, text.size(), stdout) == text.size(), IoError,
                 "generate: cannot write to stdout");
  return 0;
}

}  // namespace condensa::trainer
