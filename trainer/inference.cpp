#include "trainer/inference.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "trainer/checkpoint/directory.h"
#include "trainer/checkpoint/state.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

std::string resolve_checkpoint_dir(const std::string& path) {
  CONDENSA_CHECK(fs::exists(path), CheckpointError, "checkpoint path '", path, "' does not exist");
  if (fs::exists(fs::path(path) / "meta.json")) return path;
  for (auto root : {fs::path(path) / "checkpoints", fs::path(path)}) {
    if (!fs::is_directory(root)) continue;
    std::vector<std::string> warnings;
    auto found = find_latest_checkpoint(root.string(), &warnings);
    for (auto& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (found) return *found;
  }
  throw CheckpointError(str("no complete checkpoint under '", path,
                            "' (expected a step directory with meta.json, ",
                            "or a run directory with checkpoints/)"));
}

LoadedModel load_model_for_inference(const std::string& path) {
  LoadedModel out;
  out.dir = resolve_checkpoint_dir(path);
  auto meta = read_checkpoint_meta(out.dir);
  out.config = parse_config_text(meta.at("config").get<std::string>(), {}, out.dir + "/meta.json");
  out.step = meta.value("step", int64_t(0));
  out.model = model::Transformer(out.config.model);
  std::map<std::string, torch::Tensor> tensors;
  for (auto& kv : load_global_model_tensors(out.dir)) tensors[kv.first] = kv.second;
  assign_global_tensors(*out.model, [&](const std::string& name) {
    auto it = tensors.find(name);
    CONDENSA_CHECK(it != tensors.end(), CheckpointError, out.dir, ": tensor '", name,
                   "' is missing");
    return it->second;
  });
  out.model->eval();
  return out;
}

EvalResult evaluate_tokens(model::TransformerImpl& model,
                           const std::vector<int64_t>& tokens,
                           int64_t seq_len,
                           int64_t max_windows,
                           std::vector<double>* nll) {
  torch::NoGradGuard no_grad;
  if (nll) nll->clear();
  EvalResult r;
  double sum = 0;
  for (int64_t start = 0; start + 1 < static_cast<int64_t>(tokens.size()); start += seq_len) {
    if (max_windows > 0 && r.windows >= max_windows) break;
    const int64_t n = std::min<int64_t>(seq_len + 1, static_cast<int64_t>(tokens.size()) - start);
    if (n < 2) break;
    auto t = torch::tensor(std::vector<int64_t>(tokens.begin() + start, tokens.begin() + start + n))
                 .unsqueeze(0);
    auto out = model.forward(t.narrow(1, 0, n - 1));
    auto loss_S = torch::nn::functional::cross_entropy(
        out.logits_BSV.reshape({-1, out.logits_BSV.size(-1)}), t.narrow(1, 1, n - 1).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    sum += loss_S.sum().item<double>();
    if (nll) {
      auto l = loss_S.to(torch::kFloat64).contiguous();
      nll->insert(nll->end(), l.data_ptr<double>(), l.data_ptr<double>() + l.numel());
    }
    r.tokens += n - 1;
    ++r.windows;
  }
  CONDENSA_CHECK(r.tokens > 0, DataError, "no tokens to evaluate (need at least 2)");
  r.loss = sum / r.tokens;
  r.perplexity = std::exp(r.loss);
  model::reset_routing_stats(model);
  return r;
}

std::vector<int64_t> generate(model::TransformerImpl& model,
                              const std::vector<int64_t>& prompt,
                              const GenerateOptions& opt,
                              std::vector<torch::Tensor>* step_logits) {
  torch::NoGradGuard no_grad;
  CONDENSA_CHECK(!prompt.empty(), ConfigError, "the prompt must contain at least one token");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(opt.seed);
  std::vector<int64_t> all = prompt, out;
  std::vector<model::MLACache> caches(model.cfg.num_layers);
  const int64_t limit = model.cfg.max_seq_len;
  for (int64_t i = 0; i < opt.max_new_tokens && static_cast<int64_t>(all.size()) < limit; ++i) {
    torch::Tensor logits;
    if (opt.use_cache) {
      // Prefill the prompt once, then feed one token at a time.
      const int64_t start = i == 0 ? 0 : static_cast<int64_t>(all.size()) - 1;
      auto chunk = torch::tensor(std::vector<int64_t>(all.begin() + start, all.end())).unsqueeze(0);
      model::ForwardOptions fo;
      fo.start_pos = start;
      fo.caches = &caches;
      logits = model.forward(chunk, fo).logits_BSV[0][-1];
    } else {
      logits = model.forward(torch::tensor(all).unsqueeze(0)).logits_BSV[0][-1];
    }
    if (step_logits) step_logits->push_back(logits.clone());
    if (opt.num_sampled_ids > 0 && opt.num_sampled_ids < logits.size(0)) {
      logits = logits.narrow(0, 0, opt.num_sampled_ids);
    }
    int64_t next;
    if (opt.temperature <= 0) {
      next = logits.argmax().item<int64_t>();
    } else {
      auto l = logits / opt.temperature;
      if (opt.top_k > 0 && opt.top_k < l.size(0)) {
        auto kth = std::get<0>(l.topk(opt.top_k)).min();
        l = l.masked_fill(l < kth, -std::numeric_limits<float>::infinity());
      }
      next = torch::multinomial(torch::softmax(l, -1), 1, false, gen).item<int64_t>();
    }
    all.push_back(next);
    out.push_back(next);
    if (next == opt.stop_token) break;
  }
  model::reset_routing_stats(model);
  return out;
}

std::vector<int64_t> read_eval_tokens(const std::string& path, const data::Tokenizer& tok) {
  std::vector<int64_t> tokens;
  CONDENSA_CHECK(fs::exists(path), DataError, "--data '", path, "' does not exist");
  auto add_shard = [&](const fs::path& dir) {
    auto shard = data::TokenShard::open(dir);
    std::vector<int64_t> buf(shard.num_tokens());
    shard.copy(0, shard.num_tokens(), buf.data());
    tokens.insert(tokens.end(), buf.begin(), buf.end());
  };
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / "index.json")) {
      add_shard(path);
    } else {
      std::vector<fs::path> dirs;
      for (auto& e : fs::directory_iterator(path)) {
        if (fs::exists(e.path() / "index.json")) dirs.push_back(e.path());
      }
      std::sort(dirs.begin(), dirs.end());
      CONDENSA_CHECK(!dirs.empty(), DataError, "--data '", path,
                     "' is a directory without token shards (index.json)");
      for (auto& d : dirs) add_shard(d);
    }
  } else {
    std::ifstream in(path, std::ios::binary);
    CONDENSA_CHECK(in.good(), DataError, "cannot read --data '", path, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    tokens.push_back(tok.bos_id());
    for (auto id : tok.encode(ss.str())) tokens.push_back(id);
    tokens.push_back(tok.eos_id());
  }
  return tokens;
}

}  // namespace condensa::trainer
