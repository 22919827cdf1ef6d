// The pieces of VQ-GAN training (training/vq_objective.h) and the data splits it reads: the EMA
// codebook update against a hand computation, dead-code restarts, the straight-through gradient,
// the commitment term, the hinge loss, PSNR and codebook usage, validation splits of a folder.
#include <gtest/gtest.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <set>

#include "amused/image_io.h"
#include "models/vq_model.h"
#include "schedulers/scheduling_amused.h"
#include "support/golden.h"
#include "support/train_data_support.h"
#include "training/dataset.h"
#include "training/vq_objective.h"

namespace {
namespace fs = std::filesystem;
namespace tr = amused::training;
namespace gt = amused::testing;

torch::Tensor rows(std::initializer_list<std::initializer_list<float>> values) {
  std::vector<torch::Tensor> out;
  for (const auto& r : values) out.push_back(torch::tensor(std::vector<float>(r)));
  return torch::stack(out);
}

amused::models::VQModel tiny_vq(int64_t codes = 8) {
  amused::models::VQModelConfig c;
  c.block_out_channels = {8, 8};
  c.down_block_types = {"DownEncoderBlock2D", "DownEncoderBlock2D"};
  c.up_block_types = {"UpDecoderBlock2D", "UpDecoderBlock2D"};
  c.layers_per_block = 1;
  c.latent_channels = 4;
  c.num_vq_embeddings = codes;
  c.norm_num_groups = 4;
  c.mid_block_add_attention = false;
  torch::manual_seed(3);
  amused::models::VQModel vq(c);
  vq->init_weights();
  return vq;
}

// Codes 0, 1, 2 at (0,0), (1,1), (2,2); vectors (1,0), (3,0) -> code 0 and (2,4) -> code 2; decay
// 0.5 and no smoothing: cluster_size = (1.5, 0.5, 1), embed_sum = (2,0), (0.5,0.5), (2,3).
TEST(TrainVqObjective, EmaUpdateEqualsAHandComputation) {
  auto codebook = rows({{0, 0}, {1, 1}, {2, 2}});
  auto state = tr::CodebookState::init(codebook);
  const auto z = rows({{1, 0}, {3, 0}, {2, 4}});
  const auto idx = torch::tensor(std::vector<int64_t>{0, 0, 2});
  tr::ema_update(state, codebook, z, idx, 0.5, /*eps=*/0.0);
  EXPECT_TRUE(torch::allclose(state.cluster_size, torch::tensor(std::vector<float>{1.5f, 0.5f, 1.0f})));
  EXPECT_TRUE(torch::allclose(state.embed_sum, rows({{2, 0}, {0.5, 0.5}, {2, 3}})));
  // Code 0 moves to (2/1.5, 0); the unused code 1 keeps its value; code 2 moves to (2, 3).
  EXPECT_TRUE(torch::allclose(codebook, rows({{2.0f / 1.5f, 0}, {1, 1}, {2, 3}}))) << codebook;
  // With Laplace smoothing eps: cluster sizes (n_k + eps) / (total + K eps) * total.
  auto cb2 = rows({{0, 0}, {1, 1}, {2, 2}});
  auto s2 = tr::CodebookState::init(cb2);
  tr::ema_update(s2, cb2, z, idx, 0.5, 0.1);
  const double total = 3.0, k_eps = 0.3;
  EXPECT_NEAR(cb2[0][0].item<double>(), 2.0 / ((1.5 + 0.1) / (total + k_eps) * total), 1e-6);
  EXPECT_NEAR(cb2[2][1].item<double>(), 3.0 / ((1.0 + 0.1) / (total + k_eps) * total), 1e-6);
}

TEST(TrainVqObjective, DeadCodeIsRestartedFromTheBatchAndThenUsed) {
  auto codebook = rows({{0, 0}, {100, 100}, {1, 1}, {-100, 50}});
  auto state = tr::CodebookState::init(codebook);
  state.last_used = torch::tensor(std::vector<int64_t>{5, 0, 5, 3});
  const auto z = rows({{0.1f, 0.2f}, {0.9f, 1.1f}, {0.5f, 0.4f}, {1.4f, 0.8f}, {0.2f, 0.7f}});
  auto gen = amused::make_cpu_generator(0);
  // Step 7, dead after 3 unused steps: last_used <= 3 -> codes 1 and 3.
  const int64_t n = tr::restart_dead_codes(state, codebook, z, 7, 3, gen);
  EXPECT_EQ(n, 2);
  std::set<int64_t> picked;
  for (int64_t k : {1, 3}) {
    bool found = false;
    for (int64_t r = 0; r < z.size(0); ++r)
      if (torch::equal(codebook[k], z[r])) {
        found = true;
        picked.insert(r);
      }
    EXPECT_TRUE(found) << "code " << k << " = " << codebook[k] << " is no row of the batch";
    EXPECT_EQ(state.last_used[k].item<int64_t>(), 6);
    EXPECT_FLOAT_EQ(state.cluster_size[k].item<float>(), 1.0f);
    EXPECT_TRUE(torch::equal(state.embed_sum[k], codebook[k]));
  }
  EXPECT_EQ(picked.size(), 2u) << "distinct rows when the batch has enough";
  EXPECT_TRUE(torch::equal(codebook[0], torch::tensor(std::vector<float>{0, 0})));
  EXPECT_TRUE(torch::equal(codebook[2], torch::tensor(std::vector<float>{1, 1})));
  // Before the restart codes 1 and 3 were never nearest; now each wins the row it copies.
  amused::models::VectorQuantizerImpl q(4, 2);
  q.embedding->weight.set_data(codebook);
  const auto ids = q.nearest_indices(z.t().reshape({1, 2, 1, 5}));
  std::set<int64_t> used(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  EXPECT_TRUE(used.count(1) && used.count(3)) << ids;
  // Nothing is dead at the next step, and dead_steps 0 turns restarts off.
  EXPECT_EQ(tr::restart_dead_codes(state, codebook, z, 8, 3, gen), 0);
  EXPECT_EQ(tr::restart_dead_codes(state, codebook, z, 100, 0, gen), 0);
  // mark_used records the step.
  tr::mark_used(state, torch::tensor(std::vector<int64_t>{2, 2}), 9);
  EXPECT_EQ(state.last_used[2].item<int64_t>(), 9);
}

TEST(TrainVqObjective, StraightThroughPassesTheGradientToTheEncoder) {
  amused::models::VectorQuantizerImpl q(3, 2);
  q.embedding->weight.set_data(rows({{0, 0}, {1, 1}, {-1, 2}}));
  q.embedding->weight.set_requires_grad(false);  // EMA codebook
  auto z = torch::tensor(std::vector<float>{0.9f, 0.1f, -0.8f, 0.2f, 1.2f, 0.0f, 1.7f, 0.1f})
               .reshape({1, 2, 2, 2})
               .set_requires_grad(true);
  auto st = tr::quantize_straight_through(q, z);
  // Forward: the codes' values. [1, 2, 2, 2] positions (h, w) -> z vectors (0.9,1.2), (0.1,0), (-0.8,1.7), (0.2,0.1).
  const auto ids = st.indices.flatten().contiguous();
  EXPECT_EQ(std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 4),
            std::vector<int64_t>({1, 0, 2, 0}));
  EXPECT_TRUE(torch::allclose(st.quantized.permute({0, 2, 3, 1}).reshape({4, 2}), rows({{1, 1}, {0, 0}, {-1, 2}, {0, 0}})));
  EXPECT_FALSE(st.codebook_loss.defined());
  // Commitment: mean((z - z_q)^2) over the 8 values.
  const double expect = (0.01 + 0.04 + 0.01 + 0 + 0.04 + 0.09 + 0.04 + 0.01) / 8;
  EXPECT_NEAR(st.commit_loss.item<double>(), expect, 1e-6);
  // Backward: d(sum(w * quantized))/dz = w exactly (the identity of the straight-through estimator).
  const auto w = torch::arange(8, torch::kFloat32).reshape({1, 2, 2, 2});
  (st.quantized * w).sum().backward();
  EXPECT_TRUE(torch::equal(z.grad(), w)) << z.grad();
  // With a gradient-trained codebook the codebook term exists and reaches the codebook only.
  q.embedding->weight.set_requires_grad(true);
  auto z2 = z.detach().clone().set_requires_grad(true);
  auto st2 = tr::quantize_straight_through(q, z2);
  ASSERT_TRUE(st2.codebook_loss.defined());
  st2.codebook_loss.backward();
  EXPECT_FALSE(z2.grad().defined() && z2.grad().abs().sum().item<double>() > 0);
  EXPECT_GT(q.embedding->weight.grad().abs().sum().item<double>(), 0);
}

TEST(TrainVqObjective, ReconstructionLossTrainsTheEncoderThroughTheQuantiser) {
  auto vq = tiny_vq();
  vq->quantize->embedding->weight.set_requires_grad(false);
  const auto x = torch::rand({2, 3, 8, 8});
  const auto z = vq->encode(x);
  auto st = tr::quantize_straight_through(*vq->quantize, z);
  const auto rec = vq->decode(st.quantized);
  ((rec - x).abs().mean() + 0.25 * st.commit_loss).backward();
  for (const auto* name : {"encoder.conv_in.weight", "quant_conv.weight", "decoder.conv_out.weight"}) {
    const auto g = vq->named_parameters()[name].grad();
    ASSERT_TRUE(g.defined()) << name;
    EXPECT_GT(g.abs().sum().item<double>(), 0) << name;
  }
  EXPECT_FALSE(vq->quantize->embedding->weight.grad().defined());
}

TEST(TrainVqObjective, HingeLossPsnrAndUsage) {
  const auto real = torch::tensor(std::vector<float>{2.0f, 0.5f}), fake = torch::tensor(std::vector<float>{-2.0f, 0.0f});
  EXPECT_NEAR(tr::hinge_d_loss(real, fake).item<double>(), 0.5 * (0.25 + 0.5), 1e-7);
  // PSNR: an error of 0.1 everywhere is 20 dB; values above 1 are clipped first.
  auto x = torch::full({2, 3, 4, 4}, 0.5f);
  auto rec = x + 0.1;
  rec[1] = torch::full({3, 4, 4}, 1.7f);
  x[1] = torch::full({3, 4, 4}, 0.9f);
  const auto p = tr::psnr_per_image(rec, x);
  EXPECT_NEAR(p[0].item<double>(), 20.0, 1e-4);
  EXPECT_NEAR(p[1].item<double>(), 20.0, 1e-4);
  const auto u = tr::code_usage(torch::tensor(std::vector<int64_t>{2, 2, 0, 0}));
  EXPECT_EQ(u.codes_used, 2);
  EXPECT_DOUBLE_EQ(u.fraction, 0.5);
  EXPECT_NEAR(u.perplexity, 2.0, 1e-12);
  EXPECT_NEAR(tr::code_usage(torch::tensor(std::vector<int64_t>{5, 0, 0})).perplexity, 1.0, 1e-12);
}

TEST(TrainVqObjective, PatchGanDiscriminatorShapesAndNames) {
  tr::NLayerDiscriminator d(3, 8, 2);
  d->init_weights();
  const auto logits = d->forward(torch::rand({2, 3, 64, 64}));
  EXPECT_EQ(logits.sizes(), torch::IntArrayRef({2, 1, 14, 14}));
  const auto params = d->named_parameters();
  EXPECT_TRUE(params.contains("main.0.weight"));
  EXPECT_TRUE(params.contains("main.3.weight"));  // the first BatchNorm
}

// ---- validation splits of an image folder (training/dataset.h)
void write_images(const fs::path& dir, int n) {
  fs::create_directories(dir);
  for (int i = 0; i < n; ++i)
    amused::save_png(dir / ("im" + std::to_string(i) + ".png"), amused::testing::train_data::formula_image(8, 8, i));
}

std::vector<std::string> ids_of(const tr::DatasetOptions& o) {
  auto ds = tr::ImageCaptionDataset::open(o);
  std::vector<std::string> out;
  for (int64_t i = 0; i < ds->size(); ++i) out.push_back(ds->next().id);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(TrainVqData, FolderWithoutCaptionsAndAHeldOutFraction) {
  gt::TempDir tmp;
  write_images(tmp / "d", 10);
  tr::DatasetOptions o;
  o.data = (tmp / "d").string();
  o.resolution = 8;
  o.on_bad_sample = tr::BadSamplePolicy::Fail;
  // Captions are required by default: a folder of bare images fails, naming the caption file.
  EXPECT_THROW(tr::ImageCaptionDataset::open(o), amused::IoError);
  o.require_captions = false;
  o.holdout_fraction = 0.2;
  o.split = "train";
  const auto train = ids_of(o);
  o.split = "validation";
  const auto val = ids_of(o);
  EXPECT_EQ(train.size(), 8u);
  ASSERT_EQ(val.size(), 2u);
  for (const auto& v : val) EXPECT_EQ(std::count(train.begin(), train.end(), v), 0) << v;
  EXPECT_EQ(ids_of(o), val) << "the held-out images are always the same";
  // No fraction: everything trains and the validation split is empty (a clear error).
  o.holdout_fraction = 0;
  EXPECT_THROW(tr::ImageCaptionDataset::open(o), amused::IoError);
  o.split = "test";
  EXPECT_THROW(tr::ImageCaptionDataset::open(o), amused::InvalidArgument);
}

TEST(TrainVqData, MetadataSplitFieldSelectsRows) {
  gt::TempDir tmp;
  write_images(tmp / "d", 5);
  {
    std::ofstream meta(tmp / "d/metadata.jsonl");
    meta << R"({"file_name": "im0.png", "split": "train"})" << "\n"
         << R"({"file_name": "im1.png", "split": "validation"})" << "\n"
         << R"({"file_name": "im2.png"})" << "\n"
         << R"({"file_name": "im3.png", "split": "validation", "text": "a"})" << "\n"
         << R"({"file_name": "im4.png", "split": "train"})" << "\n";
  }
  tr::DatasetOptions o;
  o.data = (tmp / "d").string();
  o.resolution = 8;
  o.require_captions = false;
  o.holdout_fraction = 0.5;  // ignored: the rows carry splits
  o.split = "validation";
  EXPECT_EQ(ids_of(o), std::vector<std::string>({"im1.png", "im3.png"}));
  o.split = "train";
  EXPECT_EQ(ids_of(o), std::vector<std::string>({"im0.png", "im2.png", "im4.png"}));
  o.split = "";
  EXPECT_EQ(ids_of(o).size(), 5u);
}

}  // namespace
