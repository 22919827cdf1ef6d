// CLIPTextModelWithProjection. Ref: transformers/models/clip/modeling_clip.py,
// configuration_clip.py.
#include "models/clip_text_model.h"

#include <cmath>
#include <limits>

#include "amused/error.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "nn/matmul.h"

namespace amused::models {
using nlohmann::json;

// ---------------------------------------------------------------------------------------- config

CLIPTextConfig CLIPTextConfig::from_json(const json& j, const std::string& source) {
  CLIPTextConfig c;
  // transformers configs carry `model_type`/`architectures`; a diffusers `_class_name` (e.g. a
  // transformer/config.json passed by mistake) is checked by the reader.
  ConfigReader r(j, source, "CLIPTextModelWithProjection", {"CLIPTextModel"});
  r.field("model_type", c.model_type);
  if (j.contains("model_type") && c.model_type != "clip_text_model")
    throw ConfigError(
        source + ": model_type is '" + c.model_type +
        "', expected 'clip_text_model' (is this a text_encoder/config.json of a CLIP text "
        "model?)");
  r.field("architectures", c.architectures);
  if (j.contains("architectures")) {
    bool ok = false;
    for (const auto& a : c.architectures) ok = ok || a.rfind("CLIPTextModel", 0) == 0;
    if (!ok)
      throw ConfigError(
          source + ": architectures is " + j["architectures"].dump() +
          ", expected [\"CLIPTextModelWithProjection\"] (is this a CLIP text encoder config?)");
  }
  r.field("vocab_size", c.vocab_size);
  r.field("hidden_size", c.hidden_size);
  r.field("intermediate_size", c.intermediate_size);
  r.field("projection_dim", c.projection_dim);
  r.field("num_hidden_layers", c.num_hidden_layers);
  r.field("num_attention_heads", c.num_attention_heads);
  r.field("max_position_embeddings", c.max_position_embeddings);
  r.field("hidden_act", c.hidden_act);
  r.field("layer_norm_eps", c.layer_norm_eps);
  r.field("attention_dropout", c.attention_dropout);
  r.field("dropout", c.dropout);
  r.field("initializer_range", c.initializer_range);
  r.field("initializer_factor", c.initializer_factor);
  r.field("pad_token_id", c.pad_token_id);
  r.field("bos_token_id", c.bos_token_id);
  r.field("eos_token_id", c.eos_token_id);
  r.field("torch_dtype", c.torch_dtype);
  r.ignore({"transformers_version"});
  r.finish();

  parse_clip_activation(c.hidden_act, source);
  for (auto [key, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size},
                        {"intermediate_size", c.intermediate_size},
                        {"projection_dim", c.projection_dim},
                        {"num_hidden_layers", c.num_hidden_layers},
                        {"num_attention_heads", c.num_attention_heads},
                        {"max_position_embeddings", c.max_position_embeddings}})
    config_check_size(v, source, key);
  config_check(c.hidden_size % c.num_attention_heads == 0, source, "hidden_size",
               "expected a multiple of num_attention_heads (" +
                   std::to_string(c.num_attention_heads) + "), got " +
                   std::to_string(c.hidden_size));
  config_check(c.layer_norm_eps > 0, source, "layer_norm_eps", "expected > 0");
  config_check(c.attention_dropout >= 0 && c.attention_dropout < 1, source, "attention_dropout",
               "expected a probability in [0, 1)");
  config_check_model_fits(c.min_parameters(), source, "CLIPTextModelWithProjection");
  return c;
}

ModelSizeBound CLIPTextConfig::min_parameters() const {
  const double H = static_cast<double>(hidden_size);
  ModelSizeBound b;
  b.add(static_cast<double>(vocab_size) * H, "vocab_size x hidden_size");
  b.add(static_cast<double>(max_position_embeddings) * H, "max_position_embeddings x hidden_size");
  // Per layer: q, k, v, out (H x H) and the MLP's fc1/fc2 (H x intermediate_size).
  b.add(static_cast<double>(num_hidden_layers) * (4 * H * H + 2 * H * static_cast<double>(intermediate_size)),
        "num_hidden_layers x hidden_size, intermediate_size");
  b.add(static_cast<double>(projection_dim) * H, "projection_dim x hidden_size");
  return b;
}

json CLIPTextConfig::to_json() const {
  json j = {{"architectures", architectures},
            {"model_type", model_type},
            {"vocab_size", vocab_size},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"projection_dim", projection_dim},
            {"num_hidden_layers", num_hidden_layers},
            {"num_attention_heads", num_attention_heads},
            {"max_position_embeddings", max_position_embeddings},
            {"hidden_act", hidden_act},
            {"layer_norm_eps", layer_norm_eps},
            {"attention_dropout", attention_dropout},
            {"dropout", dropout},
            {"initializer_range", initializer_range},
            {"initializer_factor", initializer_factor},
            {"pad_token_id", pad_token_id},
            {"bos_token_id", bos_token_id},
            {"eos_token_id", eos_token_id}};
  if (torch_dtype) j["torch_dtype"] = *torch_dtype;
  return j;
}

// ----------------------------------------------------------------------------------- activations

CLIPActivation parse_clip_activation(const std::string& name, const std::string& source) {
  if (name == "quick_gelu") return CLIPActivation::kQuickGelu;
  if (name == "gelu") return CLIPActivation::kGelu;
  if (name == "gelu_new") return CLIPActivation::kGeluNew;
  if (name == "gelu_fast") return CLIPActivation::kGeluFast;
  if (name == "gelu_pytorch_tanh") return CLIPActivation::kGeluPytorchTanh;
  if (name == "relu") return CLIPActivation::kRelu;
  if (name == "silu" || name == "swish") return CLIPActivation::kSilu;
  throw ConfigError(
      source + ": hidden_act is '" + name +
      "', expected one of quick_gelu, gelu, gelu_new, gelu_fast, gelu_pytorch_tanh, relu, "
      "silu, swish");
}

torch::Tensor apply_clip_activation(CLIPActivation act, const torch::Tensor& x) {
  // The formulas follow transformers/activations.py term by term so float results match.
  switch (act) {
    case CLIPActivation::kQuickGelu:
      return x * torch::sigmoid(1.702 * x);
    case CLIPActivation::kGelu:
      return torch::gelu(x);
    case CLIPActivation::kGeluNew:
      return 0.5 * x *
             (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3.0))));
    case CLIPActivation::kGeluFast:
      return 0.5 * x * (1.0 + torch::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
    case CLIPActivation::kGeluPytorchTanh:
      return torch::gelu(x, "tanh");
    case CLIPActivation::kRelu:
      return torch::relu(x);
    case CLIPActivation::kSilu:
      return torch::silu(x);
  }
  return x;
}

// ------------------------------------------------------------------------------------ modules

CLIPTextEmbeddingsImpl::CLIPTextEmbeddingsImpl(const CLIPTextConfig& config) {
  token_embedding =
      register_module("token_embedding", nn::Embedding(config.vocab_size, config.hidden_size));
  position_embedding = register_module(
      "position_embedding", nn::Embedding(config.max_position_embeddings, config.hidden_size));
}

torch::Tensor CLIPTextEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const int64_t seq_length = input_ids.size(-1);
  // position_ids is a [1, max_positions] arange buffer in transformers; not a checkpoint key here.
  auto position_ids =
      torch::arange(seq_length, input_ids.options().dtype(torch::kLong)).unsqueeze(0);
  auto inputs_embeds = token_embedding->forward(input_ids);              // [B, T, C]
  auto position_embeddings = position_embedding->forward(position_ids);  // [1, T, C]
  return inputs_embeds + position_embeddings;
}

CLIPAttentionImpl::CLIPAttentionImpl(const CLIPTextConfig& config)
    : embed_dim(config.hidden_size),
      num_heads(config.num_attention_heads),
      head_dim(config.head_dim()),
      scale(std::pow(static_cast<double>(config.head_dim()), -0.5)),
      dropout(config.attention_dropout) {
  k_proj = register_module("k_proj", nn::Linear(embed_dim, embed_dim));
  v_proj = register_module("v_proj", nn::Linear(embed_dim, embed_dim));
  q_proj = register_module("q_proj", nn::Linear(embed_dim, embed_dim));
  out_proj = register_module("out_proj", nn::Linear(embed_dim, embed_dim));
}

torch::Tensor CLIPAttentionImpl::forward(const torch::Tensor& hidden_states,
                                         const torch::Tensor& causal_attention_mask) {
  const int64_t bsz = hidden_states.size(0), tgt_len = hidden_states.size(1);
  // [B, T, C] -> [B, H, T, D] -> [B*H, T, D]; the same bmm layout as transformers' eager path.
  auto shape = [&](const torch::Tensor& t) {
    return t.view({bsz, tgt_len, num_heads, head_dim})
        .transpose(1, 2)
        .contiguous()
        .view({bsz * num_heads, tgt_len, head_dim});
  };
  // The scale is applied to q before the product, as in the reference.
  auto query_states = shape(q_proj->forward(hidden_states) * scale);
  auto key_states = shape(k_proj->forward(hidden_states));
  auto value_states = shape(v_proj->forward(hidden_states));
  const int64_t src_len = key_states.size(1);

  auto attn_weights = nn::batched_matmul(query_states, key_states.transpose(1, 2));  // [B*H, T, S]
  // [B*H, T, S] -> [B, H, T, S] (+ mask [B, 1, T, S]) -> [B*H, T, S]
  attn_weights = (attn_weights.view({bsz, num_heads, tgt_len, src_len}) + causal_attention_mask)
                     .view({bsz * num_heads, tgt_len, src_len});
  // Softmax in float32 and back, so 16-bit weights stay finite (identical for float32 inputs).
  auto attn_probs =
      torch::softmax(attn_weights, -1, torch::kFloat32).to(attn_weights.scalar_type());
  attn_probs = torch::dropout(attn_probs, dropout, is_training());
  auto attn_output = nn::batched_matmul(attn_probs, value_states);  // [B*H, T, D]
  // [B*H, T, D] -> [B, H, T, D] -> [B, T, H, D] -> [B, T, C]
  attn_output = attn_output.view({bsz, num_heads, tgt_len, head_dim})
                    .transpose(1, 2)
                    .reshape({bsz, tgt_len, embed_dim});
  return out_proj->forward(attn_output);
}

CLIPMLPImpl::CLIPMLPImpl(const CLIPTextConfig& config)
    : activation_fn(parse_clip_activation(config.hidden_act, "CLIPTextConfig")) {
  fc1 = register_module("fc1", nn::Linear(config.hidden_size, config.intermediate_size));
  fc2 = register_module("fc2", nn::Linear(config.intermediate_size, config.hidden_size));
}

torch::Tensor CLIPMLPImpl::forward(const torch::Tensor& hidden_states) {
  auto h = fc1->forward(hidden_states);
  h = apply_clip_activation(activation_fn, h);
  return fc2->forward(h);
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& config) {
  self_attn = register_module("self_attn", CLIPAttention(config));
  layer_norm1 =
      register_module("layer_norm1", nn::LayerNorm(config.hidden_size, config.layer_norm_eps));
  mlp = register_module("mlp", CLIPMLP(config));
  layer_norm2 =
      register_module("layer_norm2", nn::LayerNorm(config.hidden_size, config.layer_norm_eps));
}

torch::Tensor CLIPEncoderLayerImpl::forward(const torch::Tensor& hidden_states_in,
                                            const torch::Tensor& causal_attention_mask) {
  auto residual = hidden_states_in;
  auto hidden_states = layer_norm1->forward(hidden_states_in);
  hidden_states = self_attn->forward(hidden_states, causal_attention_mask);
  hidden_states = residual + hidden_states;

  residual = hidden_states;
  hidden_states = layer_norm2->forward(hidden_states);
  hidden_states = mlp->forward(hidden_states);
  return residual + hidden_states;
}

CLIPEncoderImpl::CLIPEncoderImpl(const CLIPTextConfig& config) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers->push_back(CLIPEncoderLayer(config));
}

torch::Tensor CLIPEncoderImpl::forward(const torch::Tensor& inputs_embeds,
                                       const torch::Tensor& causal_attention_mask,
                                       std::vector<torch::Tensor>* encoder_states,
                                       torch::Tensor* penultimate) {
  auto hidden_states = inputs_embeds;
  for (size_t i = 0; i < layers->size(); ++i) {
    if (encoder_states) encoder_states->push_back(hidden_states);
    if (penultimate && i + 1 == layers->size()) *penultimate = hidden_states;
    hidden_states =
        layers->ptr<CLIPEncoderLayerImpl>(i)->forward(hidden_states, causal_attention_mask);
  }
  if (encoder_states) encoder_states->push_back(hidden_states);
  return hidden_states;
}

CLIPTextTransformerImpl::CLIPTextTransformerImpl(const CLIPTextConfig& c) : config(c) {
  embeddings = register_module("embeddings", CLIPTextEmbeddings(config));
  encoder = register_module("encoder", CLIPEncoder(config));
  final_layer_norm =
      register_module("final_layer_norm", nn::LayerNorm(config.hidden_size, config.layer_norm_eps));
}

namespace {
// transformers' _create_4d_causal_attention_mask: 0 on and below the diagonal, the dtype's lowest
// finite value above it. [B, 1, T, T]
torch::Tensor causal_attention_mask(int64_t bsz, int64_t tgt_len,
                                    const torch::TensorOptions& options) {
  const double min_value = [&] {
    switch (options.dtype().toScalarType()) {
      case torch::kFloat16:
        return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
      case torch::kBFloat16:
        return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
      case torch::kFloat64:
        return std::numeric_limits<double>::lowest();
      default:
        return static_cast<double>(std::numeric_limits<float>::lowest());
    }
  }();
  auto mask = torch::full({tgt_len, tgt_len}, min_value, options).triu(1);  // [T, T]
  return mask.expand({bsz, 1, tgt_len, tgt_len});
}
}  // namespace

CLIPTextOutput CLIPTextTransformerImpl::forward(const torch::Tensor& input_ids_in,
                                                bool output_hidden_states) {
  if (input_ids_in.dim() != 2 || c10::isFloatingType(input_ids_in.scalar_type()) ||
      input_ids_in.scalar_type() == torch::kBool)
    throw InvalidArgument(
        "CLIP text encoder: input_ids must be an integer tensor [batch, seq_len], got " +
        std::string(c10::toString(input_ids_in.scalar_type())) + " of " +
        std::to_string(input_ids_in.dim()) + " dims");
  const int64_t bsz = input_ids_in.size(0), seq_len = input_ids_in.size(1);
  if (seq_len < 1 || seq_len > config.max_position_embeddings)
    throw InvalidArgument("CLIP text encoder: sequence length must be in [1, " +
                          std::to_string(config.max_position_embeddings) + "], got " +
                          std::to_string(seq_len) +
                          " (tokenize with max_length=77 and truncation)");
  const auto& weight = embeddings->token_embedding->weight;
  auto input_ids = input_ids_in.to(weight.device(), torch::kLong);
  if (bsz > 0) {
    const int64_t lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
    if (lo < 0 || hi >= config.vocab_size)
      throw InvalidArgument("CLIP text encoder: token ids must be in [0, " +
                            std::to_string(config.vocab_size) + "), got ids in [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }

  auto hidden_states = embeddings->forward(input_ids);  // [B, T, C]
  auto mask = causal_attention_mask(bsz, seq_len, hidden_states.options());

  CLIPTextOutput out;
  auto last =
      encoder->forward(hidden_states, mask, output_hidden_states ? &out.hidden_states : nullptr,
                       &out.penultimate_hidden_state);
  if (!out.penultimate_hidden_state.defined())
    out.penultimate_hidden_state = hidden_states;  // 0 layers
  out.last_hidden_state = final_layer_norm->forward(last);

  // Pooling position. Legacy configs (eos_token_id == 2, as in the amused checkpoints) pool at
  // argmax(input_ids): the first occurrence of the largest id, i.e. the first <|endoftext|>
  // (49407). Otherwise: the first position equal to eos_token_id (0 when there is none, as argmax
  // of zeros).
  torch::Tensor eos_position;
  if (config.eos_token_id == 2) {
    eos_position = input_ids.argmax(-1);
  } else {
    eos_position = input_ids.eq(config.eos_token_id).to(torch::kInt).argmax(-1);
  }
  auto batch_index = torch::arange(bsz, input_ids.options());
  out.pooled_output = out.last_hidden_state.index({batch_index, eos_position});  // [B, C]
  return out;
}

CLIPTextModelWithProjectionImpl::CLIPTextModelWithProjectionImpl(const CLIPTextConfig& config)
    : config_(config) {
  text_model = register_module("text_model", CLIPTextTransformer(config));
  text_projection = register_module(
      "text_projection", nn::Linear(config.hidden_size, config.projection_dim, /*bias=*/false));
}

CLIPTextOutput CLIPTextModelWithProjectionImpl::forward(const torch::Tensor& input_ids,
                                                        bool output_hidden_states) {
  auto out = text_model->forward(input_ids, output_hidden_states);
  out.text_embeds = text_projection->forward(out.pooled_output);
  return out;
}

void CLIPTextModelWithProjectionImpl::init_weights() {
  torch::NoGradGuard no_grad;
  const double factor = config_.initializer_factor;
  const double hidden = static_cast<double>(config_.hidden_size);
  const double layers = static_cast<double>(config_.num_hidden_layers);
  // transformers uses a fixed 0.02 (not initializer_range) for the text embeddings.
  text_model->embeddings->token_embedding->weight.normal_(0.0, factor * 0.02);
  text_model->embeddings->position_embedding->weight.normal_(0.0, factor * 0.02);
  const double in_proj_std = std::pow(hidden, -0.5) * std::pow(2.0 * layers, -0.5) * factor;
  const double out_proj_std = std::pow(hidden, -0.5) * factor;
  const double fc_std = std::pow(2.0 * hidden, -0.5) * factor;
  for (const auto& m : *text_model->encoder->layers) {
    auto layer = m->as<CLIPEncoderLayer>();
    auto& attn = layer->self_attn;
    for (auto* proj : {&attn->q_proj, &attn->k_proj, &attn->v_proj})
      (*proj)->weight.normal_(0.0, in_proj_std);
    attn->out_proj->weight.normal_(0.0, out_proj_std);
    layer->mlp->fc1->weight.normal_(0.0, fc_std);
    layer->mlp->fc2->weight.normal_(0.0, in_proj_std);
  }
  text_projection->weight.normal_(0.0, std::pow(hidden, -0.5) * factor);
  // Every LayerNorm: weight 1, bias 0; every Linear bias: 0.
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* ln = m->as<nn::LayerNormImpl>()) {
      ln->reset_parameters();
    } else if (auto* lin = m->as<nn::LinearImpl>(); lin && lin->bias.defined()) {
      lin->bias.zero_();
    }
  }
}

}  // namespace amused::models
