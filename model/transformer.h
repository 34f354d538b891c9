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
#include <utility>
#include <vector>

#include "model/layers.h"
#include "model/moe/layer.h"

namespace condensa::model {

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

// Which parts of the model this process holds (pipeline parallelism: a rank holds one or more
// stages). Parameter names stay global ("layers.7...." on whichever rank holds layer 7), so
// initialisation, checkpoints and optimizer state are keyed the same for every layout.
struct ModelPart {
  std::vector<int64_t> layers;  // global indices of the decoder layers held, ascending
  bool embedding = true;        // token embedding (first stage; last stage too with MTP)
  bool head = true;             // final norm, LM head and MTP modules (last stage)
  // Every layer, the embedding and the head.
  static ModelPart whole(const ModelConfig& cfg);
};

struct ModelOutput {
  torch::Tensor logits_BSV;               // fp32
  std::vector<torch::Tensor> mtp_logits;  // module k: [B, S-k-1, V], predicts token i+k+2
  torch::Tensor aux_loss;                 // sum of the MoE layers' balance/z losses
};

struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const ModelConfig& cfg,
                           DispatcherFactory make_dispatcher = nullptr,
                           const ModelPart* part = nullptr);  // nullptr: the whole model
  // The whole model (every part held).
  ModelOutput forward(const torch::Tensor& tokens_BS, const ForwardOptions& opt = {});

  // The pieces forward() is made of, for pipeline stages:
  // token embedding [B, S] -> [B, S, D] (needs the embedding).
  torch::Tensor embed(const torch::Tensor& tokens_BS);
  // Decoder layers [first, first + count) on h; their MoE losses are added to *aux_loss (a
  // scalar, created when undefined). Every layer must be held.
  torch::Tensor run_layers(torch::Tensor h_BSD,
                           int64_t first,
                           int64_t count,
                           torch::Tensor* aux_loss,
                           const ForwardOptions& opt = {});
  // Final norm + LM head on the last layer's output, and (with_mtp) the MTP modules, which
  // also need the token embedding `emb_BSD` of the same batch. Needs the head. out.aux_loss
  // holds the MTP blocks' MoE losses.
  ModelOutput head_forward(const torch::Tensor& h_BSD, const torch::Tensor& emb_BSD, bool with_mtp);

  bool holds_layer(int64_t layer) const;
  BlockImpl& layer(int64_t layer);
  const ModelPart& part() const { return part_; }

  // MoE layers in order (main layers, then MTP blocks), for statistics and bias updates.
  std::vector<MoELayer> moe_layers() const;
  // Global index of slice 0 of a stacked expert parameter of this model (throws otherwise).
  int64_t first_expert_of(const torch::Tensor& expert_param) const;

  ModelConfig cfg;
  RopeTables rope;
  torch::nn::Embedding embed_tokens{nullptr};  // when part().embedding
  std::shared_ptr<torch::nn::Module> layers;   // children named by global layer index
  RMSNorm norm{nullptr};                       // these three when part().head
  torch::nn::Linear lm_head{nullptr};
  torch::nn::ModuleList mtp{nullptr};

 private:
  ModelPart part_;
  std::vector<std::pair<int64_t, Block>> blocks_;  // held layers, ascending
};
TORCH_MODULE(Transformer);

// Mean cross-entropy of logits [B, S, V] against targets [B, S] over every position.
torch::Tensor token_cross_entropy(const torch::Tensor& logits_BSV, const torch::Tensor& targets_BS);

// The training losses of a forward over tokens[:, :-1] (tokens [B, S + 1]): the main head's
// cross-entropy against tokens[:, 1:], and mtp_scale x the sum of the MTP modules' (module k
// predicts token i + k + 2).
std::pair<torch::Tensor, torch::Tensor> head_losses(const ModelOutput& out,
                                                    const torch::Tensor& tokens_BS1,
                                                    double mtp_scale);

// Routing statistics and load balancing of a model's MoE layers, so that callers never name
// router internals. Row l is moe_layers()[l]; tensors stay on the model's device (no host
// sync), E = cfg.num_routed_experts.
//
// Tokens per expert [L, E] int64 routed since the last reset, before capacity dropping.
torch::Tensor expert_load(const TransformerImpl& model);
// Assignments dropped by capacity since the last reset, [L] int64.
torch::Tensor dropped_assignments(const TransformerImpl& model);
// Zero every layer's routing statistics.
void reset_routing_stats(TransformerImpl& model);
// Auxiliary-loss-free bias update of every layer from the global load [L, E] of the step.
void apply_bias_update(TransformerImpl& model, const torch::Tensor& global_load_LE, double gamma);
// The routers' balancing biases [L, E] (selection only).
torch::Tensor balance_biases(const TransformerImpl& model);
// Keep (or stop keeping) each layer's last assignments; routing_assignments() returns them
// per layer: [T, K] global expert indices, -1 where capacity dropped the assignment.
void keep_routing_assignments(TransformerImpl& model, bool keep);
std::vector<torch::Tensor> routing_assignments(const TransformerImpl& model);

}  // namespace condensa::model
