// `condensa eval`: mean loss and perplexity of a checkpoint on token shards or text.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/args.h"
#include "common/error.h"
#include "data/tokenizer.h"
#include "trainer/cli/commands.h"
#include "trainer/inference.h"

namespace condensa::trainer {

namespace {

const char* kEvalHelp =
    R"(usage: condensa eval --checkpoint DIR --data PATH [--seq-len N] [--max-windows N] [--json]
                     [--per-token FILE]

Mean next-token loss and perplexity of a checkpoint on token shards (a shard directory or a
directory of shards, from condensa data prepare) or a raw text file, which is encoded with the
checkpoint's tokenizer and wrapped in BOS ... EOS (so the first target is the text's first
token, the last one EOS). DIR is a step directory or a run directory (its newest complete
checkpoint). The tokens are cut into windows of --seq-len inputs (default train.seq_len) that
start every --seq-len tokens, so each token after the first is a target exactly once.

--per-token FILE writes one line per target, tab-separated, after a header line naming the
columns: position (in the token stream; the first token is 0, so targets start at 1), token
(its id) and nll (its loss: negative log-likelihood, nats).
)";

void write_per_token(const std::string& path,
                     const std::vector<int64_t>& tokens,
                     const std::vector<double>& nll) {
  std::string text = "position\ttoken\tnll\n";
  char line[96];
  for (size_t i = 0; i < nll.size(); ++i) {
    std::snprintf(line, sizeof line, "%zu\t%ld\t%.9g\n", i + 1, static_cast<long>(tokens[i + 1]),
                  nll[i]);
    text += line;
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  CONDENSA_CHECK(out.good(), IoError, "--per-token: cannot write '", path, "'");
}

}  // namespace

int eval_command(const Args& args) {
  auto a = parse_args(args, {"--checkpoint", "--data", "--seq-len", "--max-windows", "--per-token"},
                      {"--json"});
  if (a.help) return std::fputs(kEvalHelp, stdout), 0;
  CONDENSA_CHECK(a.has("--checkpoint") && a.has("--data"), ConfigError,
                 "eval needs --checkpoint and --data (see --help)");
  auto loaded = load_model_for_inference(a.get("--checkpoint"));
  auto tok = data::make_tokenizer(loaded.config.data.tokenizer);
  auto tokens = read_eval_tokens(a.get("--data"), *tok);
  const int64_t seq_len = a.get_int("--seq-len", loaded.config.train.seq_len);
  CONDENSA_CHECK(seq_len >= 1 && seq_len < loaded.config.model.max_seq_len, ConfigError,
                 "--seq-len ", seq_len, " must be in [1, model.max_seq_len (",
                 loaded.config.model.max_seq_len, "))");
  std::vector<double> nll;
  auto r = evaluate_tokens(*loaded.model, tokens, seq_len, a.get_int("--max-windows", 0),
                           a.has("--per-token") ? &nll : nullptr);
  if (a.has("--per-token")) write_per_token(a.get("--per-token"), tokens, nll);
  nlohmann::json j = {{"checkpoint", loaded.dir},   {"step", loaded.step},
                      {"data", a.get("--data")},    {"loss", r.loss},
                      {"perplexity", r.perplexity}, {"tokens", r.tokens},
                      {"windows", r.windows}};
  if (a.has("--json")) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf(
        "checkpoint %s (step %ld)\ndata %s: %ld tokens in %ld windows\nloss %.4f  perplexity "
        "%.3f\n",
        loaded.dir.c_str(), static_cast<long>(loaded.step), a.get("--data").c_str(),
        static_cast<long>(r.tokens), static_cast<long>(r.windows), r.loss, r.perplexity);
  }
  return 0;
}

}  // namespace condensa::trainer
