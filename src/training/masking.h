// Training-time masking of VQ image tokens: the cosine-schedule masking of train_amused.py, the
// open-muse variant that sometimes masks one contiguous rectangle instead, and a port of CPython's
// `random.Random` (which that variant draws its rectangles from).
//
//   at::Generator gen = make_cpu_generator(seed);  // = torch.manual_seed(seed) (schedulers/)
//   auto batch = amused::training::mask_tokens(image_tokens, mask_id, 0.0, gen, 16, 16);
//   batch.input_ids;  // [B, 16, 16] int64, masked positions = mask_id
//   batch.labels;     // [B, 256] int64, -100 where not masked
//
// Ref: diffusers v0.27.2 examples/amused/train_amused.py lines 777-787 (masking);
//      huggingface/open-muse@64e1afe training/train_muse.py lines 149-226
//      (mask_or_random_replace_tokens, contiguous regions), muse/sampling.py (cosine_schedule);
//      CPython Modules/_randommodule.c, Lib/random.py (Random.seed/random/getrandbits/randint).
#pragma once

#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <vector>

namespace amused::training {

// One masked batch and the intermediate values of the masking (the golden files' teacher data).
struct MaskedBatch {
  torch::Tensor input_ids;         // [B, h, w] int64: mask_id where masked, else the image token
  torch::Tensor labels;            // [B, L] int64: the image token where masked, else -100
  torch::Tensor mask;              // [B, L] bool
  torch::Tensor timesteps;         // [B] float32, the first torch.rand draw
  torch::Tensor mask_prob;         // [B] float32, cos(t*pi/2) clipped below at min_masking_rate
  torch::Tensor num_token_masked;  // [B] float32, round(L*mask_prob) (half to even), at least 1
  // open-muse contiguous path only: per sample {height, width, top, left} of the masked
  // rectangle (empty when the random-subset path ran).
  std::vector<std::array<int64_t, 4>> rectangles;
};

// train_amused.py's masking of `image_tokens` [B, L] (int64, L = h*w, row-major over (h, w)).
// Draws, on `gen` (a CPU generator), torch.rand(B) then torch.rand(B, L), exactly as the reference
// does on its global generator. Row b gets exactly num_token_masked[b] masked positions.
// Throws InvalidArgument for a non-[B, h*w] or non-integer input, mask_id < 0, or a
// min_masking_rate outside [0, 1].
MaskedBatch mask_tokens(const torch::Tensor& image_tokens, int64_t mask_id, double min_masking_rate,
                        at::Generator& gen, int64_t h, int64_t w);

// The random-subset step on its own: position j of row b is masked when scores[b].argsort()[j] <
// num_token_masked[b] (the reference's inverse-permutation trick, not top-k of the scores).
// scores [B, L] float32, num_token_masked [B] float32 -> [B, L] bool.
torch::Tensor mask_from_scores(const torch::Tensor& scores, const torch::Tensor& num_token_masked);

// CPython's `random.Random(seed)` for integer seeds: MT19937 seeded by init_by_array with the
// 32-bit chunks of |seed| (least significant first), not std::mt19937(seed).
class PythonRandom {
 public:
  explicit PythonRandom(int64_t seed);

  uint32_t next_uint32();  // genrand_uint32
  // random.getrandbits(k), 0 <= k <= 64 (Python itself has no upper bound; the port needs 32).
  uint64_t getrandbits(int k);
  // random.random(): 53-bit float from two 32-bit outputs.
  double random();
  // random.randint(a, b) = a + _randbelow(b - a + 1) by rejection on getrandbits(bit_length);
  // randint(a, a) still consumes one draw. Throws InvalidArgument for b < a.
  int64_t randint(int64_t a, int64_t b);

  // The MT19937 state (624 words and the position), e.g. for a checkpoint.
  struct State {
    std::array<uint32_t, 624> mt{};
    int index = 0;
  };
  State state() const;
  void set_state(const State& state);

 private:
  void init_genrand(uint32_t s);
  void init_by_array(const std::vector<uint32_t>& key);
  std::array<uint32_t, 624> mt_{};
  int index_ = 625;
};

// open-muse's mask_or_random_replace_tokens (noise_type "mask", labels only on masked positions)
// with a `mask_contiguous_region_prob`: timesteps = torch.rand(B) on `gen`; then one
// `py.random() < mask_contiguous_region_prob` per batch. When true, each sample masks one
// rectangle drawn with py.randint (height, then top, then left) on the res x res grid,
// res = int(sqrt(L)), and the torch.rand(B, L) draw is skipped; when false, the random-subset
// path of mask_tokens runs (its torch.rand(B, L) draw included). The rectangle may hold more
// (ceil) or fewer (width clamped) than num_token_masked tokens, as in the reference.
// The contiguous path assumes a square grid: h != w throws InvalidArgument when
// mask_contiguous_region_prob > 0. Other argument checks as mask_tokens.
MaskedBatch mask_tokens_open_muse(const torch::Tensor& image_tokens, int64_t mask_id,
                                  double min_masking_rate, double mask_contiguous_region_prob,
                                  at::Generator& gen, PythonRandom& py, int64_t h, int64_t w);

}  // namespace amused::training
