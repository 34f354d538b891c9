// The DeepSeek-V3 decoder: embedding -> blocks (MLA + dense MLP for the first k, MoE after)
// -> final RMSNorm -> LM head, plus depth-D multi-token-prediction modules that share the
// embedding and the output head.
//
// Parameter names mirror Hugging Face DeepseekV3 without the "model." prefix
// ("layers.3.mlp.experts.gate_proj" holds this rank's experts stacked [E_local, F, D]; the
// checkpoint and export split it into global per-expert tensors). MTP modules live under
// "mtp.k." and export after the last layer.
//
// Shape legend: B batch, S sequence, D hidden, V vocabulary.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "model/layers.h"
#include "model/moe/layer.h"

namespace condensa::model {

using DispatcherFactory = std::function<std::shared_ptr<TokenDispatcher>(int64_t layer)>;

struct BlockImpl : torch::nn::Module {
  BlockImpl(const ModelConfig& cfg, int64_t layer, const DispatcherFactory& make_dispatcher);
  torch::Tensor forward(const torch::Tensor& x_BSD,
                        const RopeTables& rope,
                        MLACache* cache,
                        int64_t start_pos,
                        torch::Tensor* aux_loss);

  bool recompute_attention = false;
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  MLA self_attn{nullptr};
  MLP dense_mlp{nullptr};  // registered as "mlp" when dense
  MoELayer moe{nullptr};   // registered as "mlp" when MoE
};
TORCH_MODULE(Block);

struct MTPModuleImpl : torch::nn::Module {
  MTPModuleImpl(const ModelConfig& cfg, int64_t layer, const DispatcherFactory& make_dispatcher);
  RMSNorm enorm{nullptr}, hnorm{nullptr}, shared_head_norm{nullptr};
  torch::nn::Linear eh_proj{nullptr};
  Block block{nullptr};
};
TORCH_MODULE(MTPModule);

struct ForwardOptions {
  int64_t start_pos = 0;
  std::vector<MLACache>* caches = nullptr;  // one per layer (generation)
  bool with_mtp = false;
};

struct ModelOutput {
  torch::Tensor logits_BSV;               // fp32
  std::vector<torch::Tensor> mtp_logits;  // module k: [B, S-k-1, V], predicts token i+k+2
  torch::Tensor aux_loss;                 // sum of the MoE layers' balance/z losses
};

struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const ModelConfig& cfg, DispatcherFactory make_dispatcher = nullptr);
  ModelOutput forward(const torch::Tensor& tokens_BS, const ForwardOptions& opt = {});

  // MoE layers in order (main layers, then MTP blocks), for statistics and bias updates.
  std::vector<MoELayer> moe_layers() const;
  // Global index of slice 0 of a stacked expert parameter of this model (throws otherwise).
  int64_t first_expert_of(const torch::Tensor& expert_param) const;
  // Routing language ids per token [B, S] for the next forward (or undefined to stop).
  void set_token_languages(const torch::Tensor& language_BS);

  ModelConfig cfg;
  RopeTables rope;
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};
  torch::nn::ModuleList mtp{nullptr};
};
TORCH_MODULE(Transformer);

}  // namespace condensa::model
