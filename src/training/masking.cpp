#include "training/masking.h"

#include <cmath>
#include <string>

#include "amused/error.h"

namespace amused::training {
namespace {

void check_masking_args(const torch::Tensor& image_tokens, int64_t mask_id, double min_masking_rate,
                        const at::Generator& gen, int64_t h, int64_t w, const char* fn) {
  const std::string where = std::string(fn) + ": ";
  if (!image_tokens.defined() || image_tokens.dim() != 2)
    throw InvalidArgument(where + "image_tokens must be [B, L], got " +
                          (image_tokens.defined() ? std::to_string(image_tokens.dim()) + "-d"
                                                  : std::string("an undefined tensor")));
  if (at::isFloatingType(image_tokens.scalar_type()) || image_tokens.scalar_type() == torch::kBool)
    throw InvalidArgument(where + "image_tokens must hold integer token ids");
  if (h <= 0 || w <= 0 || image_tokens.size(1) != h * w)
    throw InvalidArgument(where + "image_tokens has L = " + std::to_string(image_tokens.size(1)) +
                          ", expected h*w = " + std::to_string(h) + "*" + std::to_string(w));
  if (image_tokens.size(0) == 0) throw InvalidArgument(where + "empty batch");
  if (mask_id < 0)
    throw InvalidArgument(where + "mask_id must be >= 0, got " + std::to_string(mask_id));
  if (!(min_masking_rate >= 0.0 && min_masking_rate <= 1.0))
    throw InvalidArgument(where + "min_masking_rate must be in [0, 1], got " +
                          std::to_string(min_masking_rate));
  if (!gen.defined() || gen.device().type() != c10::DeviceType::CPU)
    throw InvalidArgument(where + "the masking generator must be a CPU generator");
}

struct MaskSchedule {
  torch::Tensor timesteps, mask_prob, num_token_masked;
};

// timesteps = torch.rand(B); mask_prob = cos(t*pi*0.5).clip(min); n = (L*mask_prob).round()
// .clamp(min=1). The same float32 tensor ops as the reference, so the same bits (round() is half
// to even).
MaskSchedule draw_schedule(int64_t batch_size, int64_t seq_len, double min_masking_rate,
                           at::Generator& gen) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  MaskSchedule s;
  s.timesteps = torch::rand({batch_size}, gen, f32);
  s.mask_prob = torch::cos(s.timesteps * M_PI * 0.5).clamp_min(min_masking_rate);
  s.num_token_masked = (s.mask_prob * seq_len).round().clamp_min(1);
  return s;
}

MaskedBatch finish(const torch::Tensor& image_tokens, const torch::Tensor& mask, MaskSchedule s,
                   int64_t mask_id, int64_t h, int64_t w) {
  const auto device = image_tokens.device();
  const auto tokens = image_tokens.to(torch::kLong);
  const auto m = mask.to(device);
  MaskedBatch out;
  // [B, L] -> [B, h, w]
  out.input_ids = tokens.masked_fill(m, mask_id).reshape({tokens.size(0), h, w});
  out.labels = tokens.masked_fill(m.logical_not(), -100);
  out.mask = m;
  out.timesteps = s.timesteps.to(device);
  out.mask_prob = s.mask_prob.to(device);
  out.num_token_masked = s.num_token_masked.to(device);
  return out;
}

}  // namespace

torch::Tensor mask_from_scores(const torch::Tensor& scores, const torch::Tensor& num_token_masked) {
  if (!scores.defined() || scores.dim() != 2 || !num_token_masked.defined() ||
      num_token_masked.dim() != 1 || num_token_masked.size(0) != scores.size(0))
    throw InvalidArgument("mask_from_scores: expected scores [B, L] and num_token_masked [B]");
  // Position j is masked when the j-th smallest score belongs to an index < n: the inverse
  // permutation of the ranking, as the reference writes it (not the n smallest scores' positions).
  const auto batch_randperm = scores.argsort(/*dim=*/-1, /*descending=*/false);  // [B, L] int64
  return batch_randperm < num_token_masked.unsqueeze(-1);
}

MaskedBatch mask_tokens(const torch::Tensor& image_tokens, int64_t mask_id, double min_masking_rate,
                        at::Generator& gen, int64_t h, int64_t w) {
  check_masking_args(image_tokens, mask_id, min_masking_rate, gen, h, w, "mask_tokens");
  const int64_t batch_size = image_tokens.size(0), seq_len = image_tokens.size(1);
  auto s = draw_schedule(batch_size, seq_len, min_masking_rate, gen);
  const auto scores =
      torch::rand({batch_size, seq_len}, gen, torch::TensorOptions().dtype(torch::kFloat32));
  const auto mask = mask_from_scores(scores, s.num_token_masked);
  return finish(image_tokens, mask, std::move(s), mask_id, h, w);
}

MaskedBatch mask_tokens_open_muse(const torch::Tensor& image_tokens, int64_t mask_id,
                                  double min_masking_rate, double mask_contiguous_region_prob,
                                  at::Generator& gen, PythonRandom& py, int64_t h, int64_t w) {
  check_masking_args(image_tokens, mask_id, min_masking_rate, gen, h, w, "mask_tokens_open_muse");
  if (!(mask_contiguous_region_prob >= 0.0 && mask_contiguous_region_prob <= 1.0))
    throw InvalidArgument(
        "mask_tokens_open_muse: mask_contiguous_region_prob must be in [0, 1], got " +
        std::to_string(mask_contiguous_region_prob));
  if (mask_contiguous_region_prob > 0.0 && h != w)
    throw InvalidArgument(
        "mask_tokens_open_muse: contiguous-region masking needs a square token grid, got " +
        std::to_string(h) + "x" + std::to_string(w));
  const int64_t batch_size = image_tokens.size(0), seq_len = image_tokens.size(1);
  auto s = draw_schedule(batch_size, seq_len, min_masking_rate, gen);

  // Drawn once per batch whenever the option is set, even when it cannot succeed.
  const bool contiguous = py.random() < mask_contiguous_region_prob;
  if (!contiguous) {
    const auto scores =
        torch::rand({batch_size, seq_len}, gen, torch::TensorOptions().dtype(torch::kFloat32));
    const auto mask = mask_from_scores(scores, s.num_token_masked);
    return finish(image_tokens, mask, std::move(s), mask_id, h, w);
  }

  const int64_t res = h;  // int(seq_len ** 0.5) for the square grid checked above
  auto mask = torch::zeros({batch_size, res, res}, torch::kBool);
  const auto counts = s.num_token_masked.to(torch::kFloat32).contiguous();
  const float* n_ptr = counts.data_ptr<float>();
  std::vector<std::array<int64_t, 4>> rectangles;
  for (int64_t b = 0; b < batch_size; ++b) {
    const auto n = static_cast<int64_t>(n_ptr[b]);
    // "a bit handwavy with the bounds but gets a rectangle of ~num_token_masked_" (open-muse)
    int64_t hh = py.randint((n + res - 1) / res, std::min(res, n));
    hh = std::min(hh, res);
    const int64_t ww = std::min((n + hh - 1) / hh, res);
    const int64_t top = py.randint(0, res - hh);
    const int64_t left = py.randint(0, res - ww);
    mask[b].narrow(0, top, hh).narrow(1, left, ww).fill_(true);
    rectangles.push_back({hh, ww, top, left});
  }
  auto out = finish(image_tokens, mask.reshape({batch_size, seq_len}), std::move(s), mask_id, h, w);
  out.rectangles = std::move(rectangles);
  return out;
}

// ------------------------------------------------------------------------------- PythonRandom

namespace {
constexpr int kN = 624;
constexpr int kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfU;
constexpr uint32_t kUpperMask = 0x80000000U;
constexpr uint32_t kLowerMask = 0x7fffffffU;
}  // namespace

PythonRandom::PythonRandom(int64_t seed) {
  // |seed| without overflow at INT64_MIN.
  const uint64_t mag =
      seed < 0 ? static_cast<uint64_t>(-(seed + 1)) + 1 : static_cast<uint64_t>(seed);
  std::vector<uint32_t> key = {static_cast<uint32_t>(mag & 0xffffffffU)};
  if ((mag >> 32) != 0) key.push_back(static_cast<uint32_t>(mag >> 32));
  init_by_array(key);
}

void PythonRandom::init_genrand(uint32_t s) {
  mt_[0] = s;
  for (int i = 1; i < kN; ++i)
    mt_[i] = 1812433253U * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  index_ = kN;
}

void PythonRandom::init_by_array(const std::vector<uint32_t>& key) {
  init_genrand(19650218U);
  const int key_length = static_cast<int>(key.size());
  int i = 1, j = 0;
  for (int k = std::max(kN, key_length); k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525U)) + key[j] +
             static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= kN) {
      mt_[0] = mt_[kN - 1];
      i = 1;
    }
    if (j >= key_length) j = 0;
  }
  for (int k = kN - 1; k > 0; --k) {
    mt_[i] =
        (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941U)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= kN) {
      mt_[0] = mt_[kN - 1];
      i = 1;
    }
  }
  mt_[0] = 0x80000000U;  // MSB is 1, assuring a non-zero initial array
}

uint32_t PythonRandom::next_uint32() {
  static constexpr uint32_t mag01[2] = {0x0U, kMatrixA};
  if (index_ >= kN) {
    int kk = 0;
    for (; kk < kN - kM; ++kk) {
      const uint32_t y = (mt_[kk] & kUpperMask) | (mt_[kk + 1] & kLowerMask);
      mt_[kk] = mt_[kk + kM] ^ (y >> 1) ^ mag01[y & 0x1U];
    }
    for (; kk < kN - 1; ++kk) {
      const uint32_t y = (mt_[kk] & kUpperMask) | (mt_[kk + 1] & kLowerMask);
      mt_[kk] = mt_[kk + (kM - kN)] ^ (y >> 1) ^ mag01[y & 0x1U];
    }
    const uint32_t y = (mt_[kN - 1] & kUpperMask) | (mt_[0] & kLowerMask);
    mt_[kN - 1] = mt_[kM - 1] ^ (y >> 1) ^ mag01[y & 0x1U];
    index_ = 0;
  }
  uint32_t y = mt_[index_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  y ^= (y >> 18);
  return y;
}

uint64_t PythonRandom::getrandbits(int k) {
  if (k < 0 || k > 64)
    throw InvalidArgument("PythonRandom::getrandbits: k must be in [0, 64], got " +
                          std::to_string(k));
  if (k == 0) return 0;
  if (k <= 32) return next_uint32() >> (32 - k);
  // Words least significant first; the last one drops its low bits.
  const uint64_t low = next_uint32();
  const uint64_t high = next_uint32() >> (64 - k);
  return low | (high << 32);
}

double PythonRandom::random() {
  const uint32_t a = next_uint32() >> 5, b = next_uint32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

int64_t PythonRandom::randint(int64_t a, int64_t b) {
  if (b < a)
    throw InvalidArgument("PythonRandom::randint: empty range (" + std::to_string(a) + ", " +
                          std::to_string(b) + ")");
  const uint64_t n = static_cast<uint64_t>(b) - static_cast<uint64_t>(a) + 1;  // 0 = all 2^64
  int k = 0;
  for (uint64_t v = n; v != 0; v >>= 1) ++k;  // n.bit_length()
  if (n == 0) k = 64;
  uint64_t r = getrandbits(k);
  while (n != 0 && r >= n) r = getrandbits(k);
  return static_cast<int64_t>(static_cast<uint64_t>(a) + r);
}

PythonRandom::State PythonRandom::state() const {
  State s;
  s.mt = mt_;
  s.index = index_;
  return s;
}

void PythonRandom::set_state(const State& state) {
  if (state.index < 0 || state.index > kN)
    throw InvalidArgument("PythonRandom::set_state: index must be in [0, 624], got " +
                          std::to_string(state.index));
  mt_ = state.mt;
  index_ = state.index;
}

}  // namespace amused::training
