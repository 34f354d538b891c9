// Name rules (model/param_names.h) against the modules of an allocated model and against
// Hugging Face DeepseekV3 names written out by hand.
#include "model/param_names.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/error.h"
#include "model/layers.h"
#include "model/moe/experts.h"
#include "model/moe/router.h"
#include "model/transformer.h"

using namespace condensa::model;

namespace {

ModelConfig small() {
  ModelConfig c;
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.num_layers = 3;
  c.num_dense_layers = 1;
  c.intermediate_size = 24;
  c.num_heads = 2;
  c.q_lora_rank = 8;  // q_a_layernorm exists
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 4;
  c.num_routed_experts = 4;
  c.top_k = 2;
  c.moe_intermediate_size = 8;
  c.max_seq_len = 32;
  c.mtp_depth = 2;
  return c;
}

using TensorSet = std::set<const void*>;

// Tensors of every module of type M (found by type, not by name).
template <class M>
TensorSet tensors_of(torch::nn::Module& model, bool buffers) {
  TensorSet out;
  for (const auto& m : model.modules()) {
    if (m->as<M>() == nullptr) continue;
    for (const auto& t : buffers ? m->buffers() : m->parameters())
      out.insert(t.unsafeGetTensorImpl());
  }
  return out;
}

TEST(ParamNames, ExpertAndNormRulesMatchTheModuleTypes) {
  Transformer model(small());
  const TensorSet experts = tensors_of<GroupedExpertsImpl>(*model, false);
  const TensorSet norms = tensors_of<RMSNormImpl>(*model, false);
  TensorSet mtp;
  for (const auto& p : model->mtp->parameters()) mtp.insert(p.unsafeGetTensorImpl());
  int num_experts = 0, num_norms = 0, num_mtp = 0;
  for (const auto& item : model->named_parameters()) {
    const auto* t = item.value().unsafeGetTensorImpl();
    const std::string& name = item.key();
    EXPECT_EQ(is_expert_param(name), experts.count(t) > 0) << name;
    EXPECT_EQ(is_norm_weight(name), norms.count(t) > 0) << name;
    EXPECT_EQ(is_mtp_param(name), mtp.count(t) > 0) << name;
    EXPECT_FALSE(is_router_bias(name)) << name;
    // The optimizer's no-decay rule (1-D tensors) selects exactly the norm weights.
    EXPECT_EQ(is_norm_weight(name), item.value().dim() == 1) << name;
    num_experts += is_expert_param(name);
    num_norms += is_norm_weight(name);
    num_mtp += is_mtp_param(name);
  }
  EXPECT_EQ(num_experts, 3 * (2 + 2));  // gate/up/down x (2 main + 2 MTP MoE)
  EXPECT_EQ(num_norms,
            3 * 4 + 1 + 2 * (3 + 4));  // 4 per block (2 + q_a, kv_a), final, MTP 3 + block
  EXPECT_GT(num_mtp, 0);
}

TEST(ParamNames, RouterBiasIsTheRoutersBuffer) {
  Transformer model(small());
  const TensorSet biases = tensors_of<RouterImpl>(*model, true);
  int num_biases = 0;
  for (const auto& item : model->named_buffers()) {
    const bool bias = biases.count(item.value().unsafeGetTensorImpl()) > 0;
    EXPECT_EQ(is_router_bias(item.key()), bias) << item.key();
    num_biases += bias;
  }
  EXPECT_EQ(num_biases, 4);
  EXPECT_FALSE(is_router_bias("layers.1.mlp.gate.weight"));
}

TEST(ParamNames, ExpertGlobalNameInsertsTheIndexAfterExperts) {
  EXPECT_EQ(expert_global_name("layers.1.mlp.experts.gate_proj", 5),
            "layers.1.mlp.experts.5.gate_proj");
  EXPECT_EQ(expert_global_name("mtp.0.block.mlp.experts.down_proj", 12),
            "mtp.0.block.mlp.experts.12.down_proj");
  EXPECT_TRUE(is_expert_param("layers.1.mlp.experts.5.gate_proj"));
  EXPECT_FALSE(is_expert_param("layers.1.mlp.shared_experts.gate_proj.weight"));
  EXPECT_THROW(expert_global_name("layers.1.mlp.shared_experts.gate_proj.weight", 0),
               condensa::Error);
  EXPECT_EQ(mtp_prefix(3), "mtp.3.");
}

// Ours -> Hugging Face DeepseekV3, written out by hand for num_layers = 3.
const std::map<std::string, std::string> kHfNames = {
    {"embed_tokens.weight", "model.embed_tokens.weight"},
    {"norm.weight", "model.norm.weight"},
    {"lm_head.weight", "lm_head.weight"},
    {"layers.0.input_layernorm.weight", "model.layers.0.input_layernorm.weight"},
    {"layers.0.self_attn.q_a_proj.weight", "model.layers.0.self_attn.q_a_proj.weight"},
    {"layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.gate_proj.weight"},
    {"layers.2.mlp.gate.weight", "model.layers.2.mlp.gate.weight"},
    {"layers.2.mlp.gate.e_score_correction_bias",
     "model.layers.2.mlp.gate.e_score_correction_bias"},
    {"layers.2.mlp.shared_experts.down_proj.weight",
     "model.layers.2.mlp.shared_experts.down_proj.weight"},
    {"layers.2.mlp.experts.3.up_proj", "model.layers.2.mlp.experts.3.up_proj.weight"},
    {"layers.1.mlp.experts.10.down_proj", "model.layers.1.mlp.experts.10.down_proj.weight"},
    {"mtp.0.enorm.weight", "model.layers.3.enorm.weight"},
    {"mtp.0.hnorm.weight", "model.layers.3.hnorm.weight"},
    {"mtp.0.eh_proj.weight", "model.layers.3.eh_proj.weight"},
    {"mtp.1.shared_head_norm.weight", "model.layers.4.shared_head.norm.weight"},
    {"mtp.1.block.input_layernorm.weight", "model.layers.4.input_layernorm.weight"},
    {"mtp.1.block.self_attn.o_proj.weight", "model.layers.4.self_attn.o_proj.weight"},
    {"mtp.1.block.mlp.experts.2.gate_proj", "model.layers.4.mlp.experts.2.gate_proj.weight"},
    {"mtp.0.block.mlp.gate.e_score_correction_bias",
     "model.layers.3.mlp.gate.e_score_correction_bias"},
};

TEST(ParamNames, HuggingFaceNamesBothWays) {
  for (const auto& [ours, hf] : kHfNames) {
    EXPECT_EQ(hf_name(ours, 3), hf) << ours;
    EXPECT_EQ(global_name_from_hf(hf, 3), std::optional<std::string>(ours)) << hf;
  }
  EXPECT_EQ(hf_mtp_shared_copies(1, 3),
            (std::vector<std::string>{"model.layers.4.embed_tokens.weight",
                                      "model.layers.4.shared_head.head.weight"}));
  for (const auto& copy : hf_mtp_shared_copies(0, 3))
    EXPECT_EQ(global_name_from_hf(copy, 3), std::nullopt) << copy;
  EXPECT_THROW(global_name_from_hf("transformer.h.0.weight", 3), condensa::Error);
}

TEST(ParamNames, EveryGlobalNameOfAModelRoundTripsThroughHuggingFace) {
  const auto c = small();
  Transformer model(c);
  std::vector<std::string> names;
  for (const auto& item : model->named_parameters()) {
    if (!is_expert_param(item.key())) {
      names.push_back(item.key());
      continue;
    }
    for (int64_t e = 0; e < c.num_routed_experts; ++e)
      names.push_back(expert_global_name(item.key(), e));
  }
  for (const auto& item : model->named_buffers()) names.push_back(item.key());
  std::set<std::string> hf_names;
  for (const auto& n : names) {
    const std::string hf = hf_name(n, c.num_layers);
    EXPECT_TRUE(hf == kLmHeadName || hf.rfind("model.", 0) == 0) << hf;
    EXPECT_EQ(global_name_from_hf(hf, c.num_layers), std::optional<std::string>(n)) << hf;
    hf_names.insert(hf);
  }
  EXPECT_EQ(hf_names.size(), names.size());  // the mapping is one to one
}

}  // namespace
