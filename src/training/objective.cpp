#include "training/objective.h"

#include <sstream>

#include "amused/error.h"

namespace amused::training {
namespace {

std::string shape_str(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

}  // namespace

torch::Tensor tokenize_captions(const ClipTokenizer& tokenizer, const std::vector<std::string>& captions,
                                int64_t max_length) {
  if (captions.empty()) throw InvalidArgument("tokenize_captions: no captions");
  // Padded to the tokenizer's model_max_length, as train_amused.py's tokenize_prompt (77 for CLIP-L).
  const auto batch =
      tokenizer.encode_batch(captions, max_length > 0 ? max_length : tokenizer.model_max_length());
  // [B * L] -> [B, L]
  return torch::tensor(batch.input_ids, torch::kLong).reshape({batch.batch_size, batch.max_length});
}

TextConditioning encode_ids(models::CLIPTextModelWithProjection& text_encoder, const torch::Tensor& input_ids) {
  TextConditioning out;
  const auto params = text_encoder->parameters();
  out.input_ids = params.empty() ? input_ids : input_ids.to(params.front().device());
  const auto encoded = text_encoder->forward(out.input_ids);
  out.encoder_hidden_states = encoded.penultimate_hidden_state;
  out.cond_embeds = encoded.text_embeds;
  return out;
}

TextConditioning encode_captions(const ClipTokenizer& tokenizer,
                                 models::CLIPTextModelWithProjection& text_encoder,
                                 const std::vector<std::string>& captions, int64_t max_length) {
  if (captions.empty()) throw InvalidArgument("encode_captions: no captions");
  const auto ids = tokenize_captions(tokenizer, captions, max_length);
  torch::NoGradGuard no_grad;
  return encode_ids(text_encoder, ids);
}

CondDropout apply_cond_dropout(const torch::Tensor& encoder_hidden_states,
                               const torch::Tensor& cond_embeds, const torch::Tensor& empty_embeds,
                               const torch::Tensor& empty_clip_embeds, double p,
                               at::Generator& gen) {
  if (!(p >= 0.0 && p <= 1.0))
    throw InvalidArgument("cond_dropout_prob must be in [0, 1], got " + std::to_string(p));
  if (!encoder_hidden_states.defined() || encoder_hidden_states.dim() != 3 ||
      !cond_embeds.defined() || cond_embeds.dim() != 2 ||
      cond_embeds.size(0) != encoder_hidden_states.size(0))
    throw InvalidArgument(
        "apply_cond_dropout: expected encoder_hidden_states [B, T, H] and cond_embeds [B, P], "
        "got " +
        shape_str(encoder_hidden_states) + " and " + shape_str(cond_embeds));
  const int64_t batch_size = encoder_hidden_states.size(0);
  const auto empty =
      empty_embeds.defined() && empty_embeds.dim() == 2 ? empty_embeds.unsqueeze(0) : empty_embeds;
  const auto empty_clip = empty_clip_embeds.defined() && empty_clip_embeds.dim() == 1
                              ? empty_clip_embeds.unsqueeze(0)
                              : empty_clip_embeds;
  if (!empty.defined() || empty.dim() != 3 || empty.size(0) != 1 ||
      empty.sizes().slice(1) != encoder_hidden_states.sizes().slice(1))
    throw InvalidArgument("apply_cond_dropout: empty_embeds " + shape_str(empty_embeds) +
                          " does not fit encoder_hidden_states " +
                          shape_str(encoder_hidden_states) + " (expected [1, T, H])");
  if (!empty_clip.defined() || empty_clip.dim() != 2 || empty_clip.size(0) != 1 ||
      empty_clip.size(1) != cond_embeds.size(1))
    throw InvalidArgument("apply_cond_dropout: empty_clip_embeds " + shape_str(empty_clip_embeds) +
                          " does not fit cond_embeds " + shape_str(cond_embeds) +
                          " (expected [1, P])");

  CondDropout out;
  if (p == 0.0) {
    out.encoder_hidden_states = encoder_hidden_states;
    out.cond_embeds = cond_embeds;
    out.dropped = torch::zeros({batch_size}, torch::kBool);
    return out;
  }
  // The reference draws on the device of the embeddings with its global generator; here the
  // draw is always made on the CPU generator and moved.
  out.u = torch::zeros({batch_size, 1, 1}, torch::kFloat32).uniform_(0, 1, gen);
  const auto mask = (out.u < p).to(encoder_hidden_states.device());  // [B, 1, 1] bool
  out.dropped = mask.reshape({batch_size});
  out.encoder_hidden_states =
      torch::where(mask, empty.to(encoder_hidden_states.options()).expand_as(encoder_hidden_states),
                   encoder_hidden_states);
  // [B, 1, 1] -> [B, 1]
  out.cond_embeds = torch::where(
      mask.squeeze(-1), empty_clip.to(cond_embeds.options()).expand_as(cond_embeds), cond_embeds);
  return out;
}

torch::Tensor masked_token_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                double label_smoothing) {
  if (!logits.defined() || logits.dim() != 4)
    throw InvalidArgument("masked_token_loss: logits must be [B, K, h, w], got " +
                          shape_str(logits));
  const int64_t batch_size = logits.size(0), codebook_size = logits.size(1);
  const int64_t seq_len = logits.size(2) * logits.size(3);
  if (!labels.defined() || labels.dim() != 2 || labels.size(0) != batch_size ||
      labels.size(1) != seq_len)
    throw InvalidArgument("masked_token_loss: labels must be [B, h*w] = [" +
                          std::to_string(batch_size) + ", " + std::to_string(seq_len) + "], got " +
                          shape_str(labels));
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    throw InvalidArgument("masked_token_loss: label_smoothing must be in [0, 1], got " +
                          std::to_string(label_smoothing));
  // [B, K, h, w] -> [B, K, L] -> [B, L, K] -> [B*L, K]
  const auto flat = logits.reshape({batch_size, codebook_size, -1})
                        .permute({0, 2, 1})
                        .reshape({-1, codebook_size});
  namespace F = torch::nn::functional;
  return F::cross_entropy(flat, labels.reshape({-1}).to(torch::kLong),
                          F::CrossEntropyFuncOptions()
                              .ignore_index(-100)
                              .reduction(torch::kMean)
                              .label_smoothing(label_smoothing));
}

}  // namespace amused::training
