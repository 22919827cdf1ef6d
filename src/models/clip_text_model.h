// transformers' CLIPTextModelWithProjection as the aMUSEd pipelines use it: token + learned
// position embeddings, pre-LN transformer layers with a causal mask (no padding mask), final
// LayerNorm, pooling at the EOS position and a bias-free text projection. Outputs what the
// pipelines need: the penultimate hidden state (`hidden_states[-2]`, the U-ViT's
// encoder_hidden_states) and the projected pooled output (`text_embeds`, the U-ViT's
// pooled_text_emb).
//
//   auto te = amused::load_text_encoder("amused-256/text_encoder");  // pipelines/components.h
//   torch::NoGradGuard no_grad;
//   auto out = te->forward(input_ids);  // [B, 77] int64
//   out.penultimate_hidden_state;       // [B, 77, 768]
//   out.text_embeds;                    // [B, 768]
//
// Ref: transformers/models/clip/modeling_clip.py (CLIPTextEmbeddings, CLIPAttention, CLIPMLP,
//      CLIPEncoderLayer, CLIPEncoder, CLIPTextTransformer, CLIPTextModelWithProjection),
//      transformers/models/clip/configuration_clip.py (CLIPTextConfig).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "nn/layers.h"

namespace amused::models {

// config.json of a transformers CLIP text tower. Field names = JSON keys; defaults = transformers'
// CLIPTextConfig defaults (openai/clip-vit-base-patch32's text tower).
struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  double attention_dropout = 0.0;
  // Legacy key written by older transformers versions; the text model does not use it.
  double dropout = 0.0;
  double initializer_range = 0.02;
  double initializer_factor = 1.0;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  // 2 is the legacy (pre-2023) value: the model then pools at argmax(input_ids) instead.
  int64_t eos_token_id = 49407;
  std::vector<std::string> architectures = {"CLIPTextModelWithProjection"};
  std::string model_type = "clip_text_model";
  std::optional<std::string> torch_dtype;  // "float32", "float16", ... (informational)

  // Throws ConfigError naming `source` for a config of another model type, a wrongly typed field,
  // an unsupported hidden_act or inconsistent sizes.
  static CLIPTextConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // A lower bound on the parameters this config describes (core/config.h), checked against the
  // memory left when the config is parsed and against the weight files' sizes when they load.
  ModelSizeBound min_parameters() const;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

// Activations of transformers' ACT2FN that CLIP checkpoints use.
enum class CLIPActivation {
  kQuickGelu,
  kGelu,
  kGeluNew,
  kGeluFast,
  kGeluPytorchTanh,
  kRelu,
  kSilu
};
// Throws ConfigError (naming `source`) for a name this port does not implement.
CLIPActivation parse_clip_activation(const std::string& name, const std::string& source);
torch::Tensor apply_clip_activation(CLIPActivation act, const torch::Tensor& x);

class CLIPTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config);
  // input_ids [B, T] -> [B, T, hidden]
  torch::Tensor forward(const torch::Tensor& input_ids);
  nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(CLIPTextEmbeddings);

// Multi-head self-attention with an additive causal mask.
class CLIPAttentionImpl : public torch::nn::Module {
 public:
  explicit CLIPAttentionImpl(const CLIPTextConfig& config);
  // hidden_states [B, T, C], causal_attention_mask [B, 1, T, T] (0 / dtype-min) -> [B, T, C]
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& causal_attention_mask);
  int64_t embed_dim, num_heads, head_dim;
  double scale, dropout;
  nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(CLIPAttention);

class CLIPMLPImpl : public torch::nn::Module {
 public:
  explicit CLIPMLPImpl(const CLIPTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  CLIPActivation activation_fn;
  nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(CLIPMLP);

class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& causal_attention_mask);
  CLIPAttention self_attn{nullptr};
  nn::LayerNorm layer_norm1{nullptr};
  CLIPMLP mlp{nullptr};
  nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

class CLIPEncoderImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderImpl(const CLIPTextConfig& config);
  // Returns the last layer's output. When `encoder_states` is given, it receives the input of every
  // layer followed by the last output (transformers' hidden_states tuple, L+1 tensors). When
  // `penultimate` is given, it receives hidden_states[-2] (the input of the last layer).
  torch::Tensor forward(const torch::Tensor& inputs_embeds,
                        const torch::Tensor& causal_attention_mask,
                        std::vector<torch::Tensor>* encoder_states = nullptr,
                        torch::Tensor* penultimate = nullptr);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(CLIPEncoder);

struct CLIPTextOutput {
  torch::Tensor text_embeds;                 // [B, projection_dim]
  torch::Tensor last_hidden_state;           // [B, T, hidden] (after final_layer_norm)
  torch::Tensor pooled_output;               // [B, hidden] (last_hidden_state at the EOS position)
  torch::Tensor penultimate_hidden_state;    // [B, T, hidden] = hidden_states[-2] (no final LN)
  std::vector<torch::Tensor> hidden_states;  // L+1 x [B, T, hidden]; only with output_hidden_states
};

class CLIPTextTransformerImpl : public torch::nn::Module {
 public:
  explicit CLIPTextTransformerImpl(const CLIPTextConfig& config);
  // Fills everything but text_embeds.
  CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);
  CLIPTextConfig config;
  CLIPTextEmbeddings embeddings{nullptr};
  CLIPEncoder encoder{nullptr};
  nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(CLIPTextTransformer);

class CLIPTextModelWithProjectionImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised; load a checkpoint or call init_weights().
  explicit CLIPTextModelWithProjectionImpl(const CLIPTextConfig& config);
  // input_ids [B, T] (integer, T <= max_position_embeddings; moved to the weights' device).
  // No attention mask: only the causal mask is applied, as in the aMUSEd pipelines.
  CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);
  // transformers' CLIPPreTrainedModel._init_weights (normal weights, zero biases, unit LN weights),
  // drawn from the global torch generator.
  void init_weights();
  const CLIPTextConfig& config() const { return config_; }

  CLIPTextTransformer text_model{nullptr};
  nn::Linear text_projection{nullptr};

 private:
  CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextModelWithProjection);

}  // namespace amused::models
