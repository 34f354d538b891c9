#include "model/transformer.h"

#include "model/cpu_fused.h"
#include "model/moe/balance.h"
#include "model/recompute.h"

namespace condensa::model {

BlockImpl::BlockImpl(const ModelConfig& cfg,
                     int64_t layer,
                     const DispatcherFactory& make_dispatcher) {
  recompute_attention = cfg.recompute == "full";
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.norm_eps));
  self_attn = register_module("self_attn", MLA(cfg));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(cfg.hidden_size, cfg.norm_eps));
  if (cfg.is_moe_layer(layer)) {
    moe = register_module("mlp", MoELayer(cfg, make_dispatcher(layer)));
  } else {
    dense_mlp = register_module("mlp", MLP(cfg.hidden_size, cfg.intermediate_size));
  }
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x,
                                 const RopeTables& rope,
                                 MLACache* cache,
                                 int64_t start_pos,
                                 torch::Tensor* aux_loss) {
  torch::Tensor h;
  if (recompute_attention && !cache && x.requires_grad()) {
    h = x + recompute([this, &rope](
                          const torch::Tensor& t) { return self_attn(input_layernorm(t), rope); },
                      x);
  } else {
    h = x + self_attn(input_layernorm(x), rope, cache, start_pos);
  }
  if (moe) return h + moe(post_attention_layernorm(h), aux_loss);
  if (recompute_attention && h.requires_grad()) {
    return h +
           recompute(
               [this](const torch::Tensor& t) { return dense_mlp(post_attention_layernorm(t)); },
               h);
  }
  return h + dense_mlp(post_attention_layernorm(h));
}

MTPModuleImpl::MTPModuleImpl(const ModelConfig& cfg,
                             int64_t layer,
                             const DispatcherFactory& make_dispatcher) {
  enorm = register_module("enorm", RMSNorm(cfg.hidden_size, cfg.norm_eps));
  hnorm = register_module("hnorm", RMSNorm(cfg.hidden_size, cfg.norm_eps));
  eh_proj = register_module(
      "eh_proj", torch::nn::Linear(
                     torch::nn::LinearOptions(2 * cfg.hidden_size, cfg.hidden_size).bias(false)));
  block = register_module("block", Block(cfg, layer, make_dispatcher));
  shared_head_norm = register_module("shared_head_norm", RMSNorm(cfg.hidden_size, cfg.norm_eps));
}

ModelPart ModelPart::whole(const ModelConfig& cfg) {
  ModelPart p;
  for (int64_t l = 0; l < cfg.num_layers; ++l) p.layers.push_back(l);
  return p;
}

TransformerImpl::TransformerImpl(const ModelConfig& c,
                                 DispatcherFactory make_dispatcher,
                                 const ModelPart* part)
    : cfg(c), part_(part ? *part : ModelPart::whole(c)) {
  if (!make_dispatcher) {
    const int64_t E = cfg.num_routed_experts;
    make_dispatcher = [E](int64_t) { return std::make_shared<LocalDispatcher>(E); };
  }
  set_cpu_bf16_products(parse_cpu_bf16_products(cfg.cpu_bf16_products));
  rope = make_rope_tables(cfg);
  if (part_.embedding) {
    embed_tokens =
        register_module("embed_tokens", torch::nn::Embedding(cfg.vocab_size, cfg.hidden_size));
  }
  layers = register_module("layers", std::make_shared<torch::nn::Module>());
  for (int64_t l : part_.layers) {
    TORCH_CHECK(l >= 0 && l < cfg.num_layers && (blocks_.empty() || blocks_.back().first < l),
                "ModelPart: layers must be ascending indices below ", cfg.num_layers);
    blocks_.emplace_back(
        l, layers->register_module(std::to_string(l), Block(cfg, l, make_dispatcher)));
  }
  if (part_.head) {
    norm = register_module("norm", RMSNorm(cfg.hidden_size, cfg.norm_eps));
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(torch::nn::LinearOptions(cfg.hidden_size, cfg.vocab_size).bias(false)));
    mtp = register_module("mtp", torch::nn::ModuleList());
    for (int64_t k = 0; k < cfg.mtp_depth; ++k)
      mtp->push_back(MTPModule(cfg, cfg.num_layers + k, make_dispatcher));
  }
}

bool TransformerImpl::holds_layer(int64_t l) const {
  for (const auto& b : blocks_) {
    if (b.first == l) return true;
  }
  return false;
}

BlockImpl& TransformerImpl::layer(int64_t l) {
  for (auto& b : blocks_) {
    if (b.first == l) return *b.second;
  }
  TORCH_CHECK(false, "this model part does not hold layer ", l);
}

torch::Tensor TransformerImpl::embed(const torch::Tensor& tokens) {
  TORCH_CHECK(embed_tokens, "this model part does not hold the embedding");
  return embed_tokens(tokens);
}

torch::Tensor TransformerImpl::run_layers(torch::Tensor h,
                                          int64_t first,
                                          int64_t count,
                                          torch::Tensor* aux_loss,
                                          const ForwardOptions& opt) {
  for (int64_t l = first; l < first + count; ++l) {
    torch::Tensor aux;
    MLACache* cache = opt.caches ? &(*opt.caches)[l] : nullptr;
    h = layer(l).forward(h, rope, cache, opt.start_pos, &aux);
    if (aux.defined()) *aux_loss = aux_loss->defined() ? *aux_loss + aux : aux;
  }
  return h;
}

ModelOutput TransformerImpl::head_forward(const torch::Tensor& h,
                                          const torch::Tensor& emb,
                                          bool with_mtp) {
  TORCH_CHECK(lm_head, "this model part does not hold the head");
  ModelOutput out;
  out.aux_loss = torch::zeros(
      {}, torch::TensorOptions().dtype(upcast(lm_head->weight).scalar_type()).device(h.device()));
  out.logits_BSV = upcast(linear(lm_head, norm(h)));
  if (with_mtp && !mtp->is_empty()) {
    // Module k (1-based depth d = k+1) at position i combines the previous depth's hidden
    // state at i with the embedding of token i+d, and predicts token i+d+1.
    auto prev = h;
    const int64_t S = h.size(1);
    for (size_t k = 0; k < mtp->size(); ++k) {
      const int64_t d = static_cast<int64_t>(k) + 1;
      if (S - d < 1) break;
      auto* m = mtp[k]->as<MTPModuleImpl>();
      auto e = m->enorm(emb.narrow(1, d, S - d));
      auto p = m->hnorm(prev.narrow(1, 0, S - d));
      auto x = linear(m->eh_proj, torch::cat({e, p}, -1));
      torch::Tensor aux;
      x = m->block->forward(x, rope, nullptr, 0, &aux);
      if (aux.defined()) out.aux_loss = out.aux_loss + aux;
      out.mtp_logits.push_back(upcast(linear(lm_head, m->shared_head_norm(x))));
      prev = x;
    }
  }
  return out;
}

ModelOutput TransformerImpl::forward(const torch::Tensor& tokens, const ForwardOptions& opt) {
  TORCH_CHECK(embed_tokens && lm_head && static_cast<int64_t>(blocks_.size()) == cfg.num_layers,
              "forward() needs the whole model; a pipeline stage runs embed, run_layers and "
              "head_forward");
  auto emb = embed(tokens);
  torch::Tensor aux;
  auto h = run_layers(emb, 0, cfg.num_layers, &aux, opt);
  auto out = head_forward(h, emb, opt.with_mtp);
  if (aux.defined()) out.aux_loss = aux + out.aux_loss;
  return out;
}

std::vector<MoELayer> TransformerImpl::moe_layers() const {
  std::vector<MoELayer> out;
  for (const auto& l : blocks_) {
    if (l.second->moe) out.push_back(l.second->moe);
  }
  if (!mtp) return out;
  for (const auto& m : *mtp) {
    auto* b = m->as<MTPModuleImpl>()->block.get();
    if (b->moe) out.push_back(b->moe);
  }
  return out;
}

int64_t TransformerImpl::first_expert_of(const torch::Tensor& p) const {
  for (auto& moe : moe_layers()) {
    for (auto& ep : moe->experts->named_parameters(false)) {
      if (ep.value().is_same(p)) return moe->experts->first_expert;
    }
  }
  throw std::invalid_argument("first_expert_of: not an expert parameter of this model");
}

torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              targets.reshape({-1}));
}

std::pair<torch::Tensor, torch::Tensor> head_losses(const ModelOutput& out,
                                                    const torch::Tensor& tokens,
                                                    double mtp_scale) {
  const int64_t S = tokens.size(1) - 1;
  auto ce = token_cross_entropy(out.logits_BSV, tokens.narrow(1, 1, S));
  auto mtp = torch::zeros({}, ce.options());
  for (size_t k = 0; k < out.mtp_logits.size(); ++k) {
    const int64_t d = static_cast<int64_t>(k) + 1;  // module k predicts token i + d + 1
    mtp = mtp + token_cross_entropy(out.mtp_logits[k], tokens.narrow(1, d + 1, S - d));
  }
  return {ce, out.mtp_logits.empty() ? mtp : mtp * mtp_scale};
}

torch::Tensor expert_load(const TransformerImpl& model) {
  std::vector<torch::Tensor> rows;
  for (auto& l : model.moe_layers()) rows.push_back(l->gate->stats.tokens_per_expert_E);
  if (rows.empty()) return torch::zeros({0, model.cfg.num_routed_experts}, torch::kInt64);
  return torch::stack(rows);
}

torch::Tensor dropped_assignments(const TransformerImpl& model) {
  std::vector<torch::Tensor> rows;
  for (auto& l : model.moe_layers()) rows.push_back(l->gate->stats.dropped);
  if (rows.empty()) return torch::zeros({0}, torch::kInt64);
  return torch::stack(rows);
}

void reset_routing_stats(TransformerImpl& model) {
  for (auto& l : model.moe_layers()) l->gate->reset_stats();
}

void apply_bias_update(TransformerImpl& model, const torch::Tensor& load_LE, double gamma) {
  auto layers = model.moe_layers();
  TORCH_CHECK(load_LE.dim() == 2 && load_LE.size(0) == static_cast<int64_t>(layers.size()),
              "apply_bias_update: load has shape ", load_LE.sizes(), " for ", layers.size(),
              " MoE layers");
  for (size_t i = 0; i < layers.size(); ++i)
    update_balance_bias(layers[i]->gate->e_score_correction_bias, load_LE[i], gamma);
}

torch::Tensor balance_biases(const TransformerImpl& model) {
  std::vector<torch::Tensor> rows;
  for (auto& l : model.moe_layers()) rows.push_back(l->gate->e_score_correction_bias);
  if (rows.empty()) return torch::zeros({0, model.cfg.num_routed_experts});
  return torch::stack(rows);
}

void keep_routing_assignments(TransformerImpl& model, bool keep) {
  for (auto& l : model.moe_layers()) {
    l->gate->stats.keep_assignments = keep;
    if (!keep) l->gate->stats.last_topk_idx_TK = torch::Tensor();
  }
}

std::vector<torch::Tensor> routing_assignments(const TransformerImpl& model) {
  std::vector<torch::Tensor> out;
  for (auto& l : model.moe_layers()) out.push_back(l->gate->stats.last_topk_idx_TK);
  return out;
}

}  // namespace condensa::model
