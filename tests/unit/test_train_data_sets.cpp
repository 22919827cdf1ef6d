// Training data, part 2: the image-caption datasets (folders, WebDataset shards, one image):
// indexing and its errors, bad-sample policies, deterministic order, resume, ranks, collation.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "amused/error.h"
#include "amused/image_io.h"
#include "support/golden.h"
#include "support/train_data_support.h"
#include "training/dataset.h"
#include "training/image_transforms.h"

using amused::Image;
using amused::testing::TempDir;
using namespace amused::training;
using namespace amused::testing::train_data;
namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

// Five images of different sizes (all wider or taller than 16), in a sub-folder for some.
const std::vector<std::pair<std::string, std::pair<int, int>>> kImages = {{"a.png", {40, 30}},
                                                                          {"b.png", {30, 40}},
                                                                          {"sub/c.png", {24, 24}},
                                                                          {"sub/d.png", {50, 20}},
                                                                          {"e.png", {16, 33}}};

void make_images(const fs::path& root) {
  int salt = 0;
  for (const auto& [name, size] : kImages) {
    fs::create_directories((root / name).parent_path());
    amused::save_png(root / name, formula_image(size.first, size.second, ++salt));
  }
}

fs::path metadata_folder(const TempDir& tmp) {
  const fs::path root = tmp / "meta";
  make_images(root);
  std::string meta;
  for (const auto& [name, size] : kImages)
    meta +=
        "{\"file_name\": \"" + name + "\", \"text\": \"caption of " + name + "\", \"score\": 5}\n";
  write_text(root / "metadata.jsonl", meta + "\n");
  return root;
}

DatasetOptions options_for(const fs::path& data, uint64_t seed = 3) {
  DatasetOptions o;
  o.data = data.string();
  o.resolution = 16;
  o.seed = seed;
  return o;
}

std::vector<Sample> take(ImageCaptionDataset& ds, int n) { return ds.next_batch(n); }

std::vector<std::string> ids(const std::vector<Sample>& s) {
  std::vector<std::string> out;
  for (const auto& x : s) out.push_back(x.id);
  return out;
}

void expect_same_samples(const std::vector<Sample>& a, const std::vector<Sample>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].id, b[i].id) << i;
    EXPECT_EQ(a[i].caption, b[i].caption) << i;
    EXPECT_EQ(a[i].micro_conds, b[i].micro_conds) << i;
    EXPECT_EQ(a[i].image.pixels, b[i].image.pixels) << i;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const amused::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A shard with samples k0..k(n-1) (png + txt), plus whatever `extra` adds.
std::string shard_bytes(const std::string& prefix, int n, int salt) {
  TarBuilder t;
  for (int i = 0; i < n; ++i) {
    const std::string key = prefix + std::to_string(i);
    t.add(key + ".png", amused::encode_png(formula_image(20 + i, 17 + (i % 3), salt + i)));
    t.add(key + ".txt", "caption " + key + "\n");
  }
  return t.finish();
}

}  // namespace

// ------------------------------------------------------------------ folders

TEST(TrainDataFolder, MetadataJsonlIndexesAndProcesses) {
  TempDir tmp;
  auto o = options_for(metadata_folder(tmp));
  o.caption_prefix = "pfx ";
  auto ds = ImageCaptionDataset::open(o);
  EXPECT_EQ(ds->size(), 5);
  EXPECT_EQ(ds->epoch_length(), 5);
  EXPECT_NE(ds->description().find("metadata.jsonl"), std::string::npos);
  const auto batch = take(*ds, 5);
  std::set<std::string> seen;
  for (const auto& s : batch) {
    seen.insert(s.id);
    EXPECT_EQ(s.caption, "pfx caption of " + s.id);
    EXPECT_EQ(s.image.width, 16);
    EXPECT_EQ(s.image.height, 16);
    EXPECT_EQ(s.image.channels, 3);
    const auto it = std::find_if(kImages.begin(), kImages.end(),
                                 [&](const auto& e) { return e.first == s.id; });
    ASSERT_NE(it, kImages.end()) << s.id;
    EXPECT_EQ(s.micro_conds[0], it->second.first);
    EXPECT_EQ(s.micro_conds[1], it->second.second);
    EXPECT_EQ(s.micro_conds[4], 6.0f);
    // The crop fits the resized image.
    const auto [rw, rh] = shorter_side_size(it->second.first, it->second.second, 16);
    EXPECT_LE(s.micro_conds[2], rh - 16);
    EXPECT_LE(s.micro_conds[3], rw - 16);
  }
  EXPECT_EQ(seen.size(), 5u);  // one epoch = every sample once
  EXPECT_EQ(ds->position(), (DataPosition{0, 5}));
  take(*ds, 1);
  EXPECT_EQ(ds->position(), (DataPosition{1, 1}));
}

TEST(TrainDataFolder, SampleMatchesTheTransformsOfItsFile) {
  TempDir tmp;
  auto o = options_for(metadata_folder(tmp));
  o.crop = CropMode::Center;
  auto ds = ImageCaptionDataset::open(o);
  for (const auto& s : take(*ds, 5)) {
    const Image orig = amused::load_image(tmp / "meta" / s.id);
    const auto [rw, rh] = shorter_side_size(orig.width, orig.height, 16);
    const int top = static_cast<int>(std::nearbyint((rh - 16) / 2.0)),
              left = static_cast<int>(std::nearbyint((rw - 16) / 2.0));
    EXPECT_EQ(s.micro_conds[2], top) << s.id;
    EXPECT_EQ(s.micro_conds[3], left) << s.id;
    EXPECT_EQ(s.image.pixels, crop(resize_bilinear_pil(orig, rw, rh), top, left, 16).pixels)
        << s.id;
  }
}

TEST(TrainDataFolder, MetadataErrorsNameTheLine) {
  TempDir tmp;
  const fs::path root = tmp / "d";
  make_images(root);
  const auto open_with = [&](const std::string& meta) {
    write_text(root / "metadata.jsonl", meta);
    return error_of([&] { ImageCaptionDataset::open(options_for(root)); });
  };
  const std::string good = "{\"file_name\": \"a.png\", \"text\": \"x\"}\n";
  std::string m = open_with(good + "\n{\"file_name\": \"b.png\", \"text\": \"y\"\n");
  EXPECT_NE(m.find("line 3"), std::string::npos) << m;
  EXPECT_NE(m.find("not valid JSON"), std::string::npos) << m;
  m = open_with(good + "{\"file_name\": \"b.png\", \"caption\": \"y\"}\n");
  EXPECT_NE(m.find("line 2"), std::string::npos) << m;
  EXPECT_NE(m.find("\"text\""), std::string::npos) << m;
  m = open_with("{\"text\": \"y\"}\n");
  EXPECT_NE(m.find("line 1 has no \"file_name\""), std::string::npos) << m;
  m = open_with(good + good + "{\"file_name\": \"../outside.png\", \"text\": \"y\"}\n");
  EXPECT_NE(m.find("line 3"), std::string::npos) << m;
  EXPECT_NE(m.find("outside"), std::string::npos) << m;
  m = open_with("{\"file_name\": \"/etc/passwd\", \"text\": \"y\"}\n");
  EXPECT_NE(m.find("outside"), std::string::npos) << m;
  m = open_with("[1, 2]\n");
  EXPECT_NE(m.find("JSON object"), std::string::npos) << m;
  m = open_with("{\"file_name\": 3, \"text\": \"y\"}\n");
  EXPECT_NE(m.find("must be a string"), std::string::npos) << m;
  m = open_with("\n\n");
  EXPECT_NE(m.find("no usable samples"), std::string::npos) << m;
  // A listed image that does not exist: fail names it; skip leaves it out.
  write_text(root / "metadata.jsonl", good + "{\"file_name\": \"gone.png\", \"text\": \"y\"}\n");
  auto o = options_for(root);
  o.on_bad_sample = BadSamplePolicy::Fail;
  m = error_of([&] { ImageCaptionDataset::open(o); });
  EXPECT_NE(m.find("gone.png"), std::string::npos) << m;
  EXPECT_NE(m.find("line 2"), std::string::npos) << m;
  LogCapture logs;
  o.on_bad_sample = BadSamplePolicy::Skip;
  EXPECT_EQ(ImageCaptionDataset::open(o)->size(), 1);
  EXPECT_NE(logs.joined().find("gone.png"), std::string::npos);
}

TEST(TrainDataFolder, MissingOrEmptySourcesAreClearErrors) {
  TempDir tmp;
  std::string m = error_of([&] { ImageCaptionDataset::open(options_for(tmp / "nope")); });
  EXPECT_NE(m.find("does not exist"), std::string::npos) << m;
  fs::create_directories(tmp / "empty");
  write_text(tmp / "empty" / "notes.md", "hi");
  m = error_of([&] { ImageCaptionDataset::open(options_for(tmp / "empty")); });
  EXPECT_NE(m.find("no images"), std::string::npos) << m;
  m = error_of([&] { ImageCaptionDataset::open(DatasetOptions{}); });
  EXPECT_NE(m.find("no training data"), std::string::npos) << m;
  auto o = options_for(tmp / "empty");
  o.resolution = 0;
  EXPECT_THROW(ImageCaptionDataset::open(o), amused::InvalidArgument);
  o = options_for(tmp / "empty");
  o.rank = 2;
  o.world_size = 2;
  EXPECT_THROW(ImageCaptionDataset::open(o), amused::InvalidArgument);
  EXPECT_EQ(parse_bad_sample_policy("fail"), BadSamplePolicy::Fail);
  EXPECT_THROW(parse_bad_sample_policy("ignore"), amused::InvalidArgument);
}

TEST(TrainDataFolder, CaptionFilesBesideImages) {
  TempDir tmp;
  const fs::path root = tmp / "c";
  make_images(root);
  for (const auto& [name, size] : kImages)
    if (name != "e.png")
      write_text(root / fs::path(name).replace_extension(".txt"), "txt for " + name + "\n\n");
  write_text(root / ".hidden" / "x.png", "not even an image");  // hidden folders are ignored
  // Policy fail: the image without a caption stops open() and is named.
  auto o = options_for(root);
  o.on_bad_sample = BadSamplePolicy::Fail;
  const std::string m = error_of([&] { ImageCaptionDataset::open(o); });
  EXPECT_NE(m.find("e.png"), std::string::npos) << m;
  EXPECT_NE(m.find("e.txt"), std::string::npos) << m;
  // Policy skip: left out with a warning.
  LogCapture logs;
  o.on_bad_sample = BadSamplePolicy::Skip;
  auto ds = ImageCaptionDataset::open(o);
  EXPECT_EQ(ds->size(), 4);
  EXPECT_NE(logs.joined().find("e.png"), std::string::npos) << logs.joined();
  for (const auto& s : take(*ds, 4))
    EXPECT_EQ(s.caption, "txt for " + s.id);  // trailing newlines dropped
  // File stems as captions (train_amused.py --instance_data_dir).
  o.caption_from_file_stem = true;
  auto stems = ImageCaptionDataset::open(o);
  EXPECT_EQ(stems->size(), 5);
  for (const auto& s : take(*stems, 5)) EXPECT_EQ(s.caption, fs::path(s.id).stem().string());
}

TEST(TrainDataFolder, BadImagePolicies) {
  TempDir tmp;
  const fs::path root = metadata_folder(tmp);
  write_text(root / "sub" / "c.png", "this is not a png");
  auto o = options_for(root);
  o.on_bad_sample = BadSamplePolicy::Fail;
  auto failing = ImageCaptionDataset::open(o);  // indexing does not read pixels
  const std::string m = error_of([&] { take(*failing, 5); });
  EXPECT_NE(m.find("sub/c.png"), std::string::npos) << m;
  LogCapture logs;
  o.on_bad_sample = BadSamplePolicy::Skip;
  auto ds = ImageCaptionDataset::open(o);
  const auto batch = take(*ds, 8);  // crosses into epoch 1
  // 8 good samples of 4 per epoch: the bad one was met once or twice, and counted.
  EXPECT_TRUE(ds->skipped() == 1 || ds->skipped() == 2) << ds->skipped();
  EXPECT_EQ(ds->position(), (DataPosition{1, 3 + ds->skipped()}));
  for (const auto& s : batch) EXPECT_NE(s.id, "sub/c.png");
  EXPECT_NE(logs.joined().find("sub/c.png"), std::string::npos);
  // Every sample bad: an error, not an endless loop.
  for (const auto& [name, size] : kImages) write_text(root / name, "bad");
  auto all_bad = ImageCaptionDataset::open(o);
  EXPECT_THROW(take(*all_bad, 1), amused::IoError);
}

TEST(TrainDataFolder, OrderAndCropsAreDeterministicAcrossReopenAndSeek) {
  TempDir tmp;
  const auto o = options_for(metadata_folder(tmp), 11);
  auto a = ImageCaptionDataset::open(o);
  const auto first = take(*a, 13);  // epochs 0, 1 and part of 2
  auto b = ImageCaptionDataset::open(o);
  expect_same_samples(take(*b, 13), first);
  // Epochs are different permutations of the same samples.
  const auto e0 = ids({first.begin(), first.begin() + 5}),
             e1 = ids({first.begin() + 5, first.begin() + 10});
  EXPECT_EQ(std::set<std::string>(e0.begin(), e0.end()),
            std::set<std::string>(e1.begin(), e1.end()));
  EXPECT_NE(e0, e1);
  // Resume from positions saved mid-epoch and at an epoch boundary.
  for (int cut : {3, 5, 7}) {
    auto c = ImageCaptionDataset::open(o);
    auto d = ImageCaptionDataset::open(o);
    take(*c, cut);
    const auto pos = data_position_from_json(to_json(c->position()));
    d->seek(pos);
    expect_same_samples(take(*d, 13 - cut), std::vector<Sample>(first.begin() + cut, first.end()));
  }
  // Another seed: another order; shuffle off: sorted order.
  auto other = ImageCaptionDataset::open(options_for(tmp / "meta", 12));
  EXPECT_NE(ids(take(*other, 10)), ids({first.begin(), first.begin() + 10}));
  auto sorted_opts = o;
  sorted_opts.shuffle = false;
  auto sorted = ImageCaptionDataset::open(sorted_opts);
  EXPECT_EQ(ids(take(*sorted, 5)),
            (std::vector<std::string>{"a.png", "b.png", "sub/c.png", "sub/d.png", "e.png"}));
  // Crops differ between epochs for the same image (seeded by epoch), typically.
  EXPECT_THROW(a->seek(DataPosition{0, 6}), amused::InvalidArgument);
  EXPECT_THROW(data_position_from_json(nlohmann::json{{"epoch", 1}}), amused::InvalidArgument);
}

TEST(TrainDataFolder, RanksTakeDisjointParts) {
  TempDir tmp;
  auto o = options_for(metadata_folder(tmp), 5);
  o.world_size = 2;
  std::vector<std::string> all;
  for (int r = 0; r < 2; ++r) {
    o.rank = r;
    auto ds = ImageCaptionDataset::open(o);
    EXPECT_EQ(ds->epoch_length(), 2);  // floor(5 / 2)
    for (const auto& id : ids(take(*ds, 2))) all.push_back(id);
  }
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), 4u);
  // The single-process order, read every other entry, is what ranks 0 and 1 see.
  o.world_size = 1;
  o.rank = 0;
  auto one = ImageCaptionDataset::open(o);
  const auto order = ids(take(*one, 4));
  EXPECT_EQ(all, (std::vector<std::string>{order[0], order[2], order[1], order[3]}));
  o.world_size = 6;
  o.rank = 0;
  EXPECT_THROW(ImageCaptionDataset::open(o), amused::IoError);  // 5 samples for 6 ranks
}

// ------------------------------------------------------------------ WebDataset shards

TEST(TrainDataShards, GroupsMembersByKeyAndReportsBadSamples) {
  TempDir tmp;
  const fs::path dir = tmp / "shards";
  fs::create_directories(dir);
  TarBuilder t;
  t.add("x/k0.png", amused::encode_png(formula_image(20, 17, 1)));
  t.add("x/k0.txt", "zero\n");
  t.add("x/k1.jpg", jpeg_bytes(formula_image(17, 25, 2)));
  t.add("x/k1.json", "{\"caption\": \"one\", \"w\": 1}");
  t.add("x/k1.cls", "3");
  t.add("x/k2.webp", "RIFF....");
  t.add("x/k2.txt", "two");
  t.add("x/k3.png", amused::encode_png(formula_image(18, 18, 3)));  // no caption
  t.add("x/k4.txt", "four");
  t.add("x/k4.png", "broken png");
  t.add("x/k5.png", amused::encode_png(formula_image(30, 16, 4)));
  t.add("x/k5.txt", "five");
  write_text(dir / "a.tar", t.finish());
  auto o = options_for(dir);
  o.shuffle = false;
  LogCapture logs;
  auto ds = ImageCaptionDataset::open(o);
  EXPECT_EQ(ds->size(), -1);
  EXPECT_NE(ds->description().find("1 shard"), std::string::npos);
  const auto got = take(*ds, 3);
  EXPECT_EQ(ids(got), (std::vector<std::string>{"a.tar:x/k0", "a.tar:x/k1", "a.tar:x/k5"}));
  EXPECT_EQ(got[0].caption, "zero");
  EXPECT_EQ(got[1].caption, "one");
  EXPECT_EQ(got[1].micro_conds[0], 17);
  EXPECT_EQ(got[1].micro_conds[1], 25);
  EXPECT_EQ(ds->skipped(), 3);
  EXPECT_EQ(ds->position(), (DataPosition{0, 6}));
  const std::string w = logs.joined();
  EXPECT_NE(w.find("x/k2"), std::string::npos) << w;
  EXPECT_NE(w.find(".webp"), std::string::npos) << w;
  EXPECT_NE(w.find("x/k3"), std::string::npos) << w;
  EXPECT_NE(w.find("no caption"), std::string::npos) << w;
  EXPECT_NE(w.find("k4"), std::string::npos) << w;
  o.on_bad_sample = BadSamplePolicy::Fail;
  auto failing = ImageCaptionDataset::open(o);
  const std::string m = error_of([&] { take(*failing, 3); });
  EXPECT_NE(m.find("a.tar"), std::string::npos) << m;
  EXPECT_NE(m.find("x/k2"), std::string::npos) << m;
}

TEST(TrainDataShards, PatternsFoldersAndResume) {
  TempDir tmp;
  for (int s = 0; s < 3; ++s)
    write_text(tmp / ("shard-0" + std::to_string(s) + ".tar"),
               shard_bytes("s" + std::to_string(s) + "_", 4, s * 10));
  auto o = options_for(tmp / "shard-{00..02}.tar", 9);
  o.shuffle_buffer = 3;
  auto a = ImageCaptionDataset::open(o);
  const auto first = take(*a, 30);  // 12 records per epoch: epochs 0, 1 and half of 2
  std::set<std::string> epoch0;
  for (int i = 0; i < 12; ++i) epoch0.insert(first[i].id);
  EXPECT_EQ(epoch0.size(), 12u);
  EXPECT_EQ(a->position(), (DataPosition{2, 6}));
  EXPECT_NE(ids({first.begin(), first.begin() + 12}),
            ids({first.begin() + 12, first.begin() + 24}));
  for (int cut : {5, 12, 17}) {
    auto b = ImageCaptionDataset::open(o);
    take(*b, cut);
    auto c = ImageCaptionDataset::open(o);
    c->seek(b->position());
    expect_same_samples(take(*c, 30 - cut), std::vector<Sample>(first.begin() + cut, first.end()));
  }
  // The same shards by glob and by folder read the same.
  auto g = ImageCaptionDataset::open(options_for(tmp / "shard-*.tar", 9));
  auto f = ImageCaptionDataset::open(options_for(tmp.path(), 9));
  auto p = o;
  p.shuffle_buffer = 0;
  auto q = ImageCaptionDataset::open(p);
  const auto from_pattern = take(*q, 12);
  expect_same_samples(take(*g, 12), from_pattern);
  expect_same_samples(take(*f, 12), from_pattern);
  // Unshuffled: shard and record order as given.
  p.shuffle = false;
  auto plain = ImageCaptionDataset::open(p);
  EXPECT_EQ(take(*plain, 5)[4].id, "shard-01.tar:s1_0");
  // A position past the end of the epoch is refused.
  auto z = ImageCaptionDataset::open(o);
  EXPECT_THROW(z->seek(DataPosition{0, 13}), amused::InvalidArgument);
  EXPECT_THROW(ImageCaptionDataset::open(options_for(tmp / "none-{0..1}.tar")), amused::IoError);
}

TEST(TrainDataShards, RanksSplitShardsOrRecords) {
  TempDir tmp;
  for (int s = 0; s < 2; ++s)
    write_text(tmp / ("s" + std::to_string(s) + ".tar"),
               shard_bytes("r" + std::to_string(s) + "_", 3, s));
  for (const std::string pattern : {"s{0,1}.tar", "s0.tar"}) {
    const int per_epoch = pattern == "s0.tar" ? 3 : 6;
    std::multiset<std::string> seen;
    for (int r = 0; r < 2; ++r) {
      auto o = options_for(tmp / pattern, 4);
      o.world_size = 2;
      o.rank = r;
      auto ds = ImageCaptionDataset::open(o);
      for (;;) {  // this rank's epoch 0; the sample that starts epoch 1 is not counted
        const Sample s = ds->next();
        if (ds->position().epoch != 0) break;
        seen.insert(s.id);
      }
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(per_epoch)) << pattern;
    EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), seen.size())
        << pattern;  // disjoint
  }
}

TEST(TrainDataShards, CorruptShardIsReported) {
  TempDir tmp;
  write_text(tmp / "good.tar", shard_bytes("g", 2, 0));
  const std::string bad = shard_bytes("b", 3, 5);
  write_text(tmp / "trunc.tar", bad.substr(0, bad.size() / 2));
  auto o = options_for(tmp / "{good,trunc}.tar");
  o.shuffle = false;
  o.on_bad_sample = BadSamplePolicy::Fail;
  auto failing = ImageCaptionDataset::open(o);
  const std::string m = error_of([&] { take(*failing, 5); });
  EXPECT_NE(m.find("trunc.tar"), std::string::npos) << m;
  EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  LogCapture logs;
  o.on_bad_sample = BadSamplePolicy::Skip;
  auto ds = ImageCaptionDataset::open(o);
  const auto got = take(*ds, 4);
  EXPECT_EQ(got[0].id, "good.tar:g0");
  EXPECT_EQ(got[1].id, "good.tar:g1");
  EXPECT_EQ(got[2].id, "trunc.tar:b0");
  EXPECT_EQ(got[3].id, "good.tar:g0");  // the rest of trunc.tar is left out; next epoch
  EXPECT_NE(logs.joined().find("trunc.tar"), std::string::npos);
  // Not a tar file at all: refused when opening.
  write_text(tmp / "junk.tar", std::string(1024, 'j'));
  EXPECT_THROW(ImageCaptionDataset::open(options_for(tmp / "junk.tar")), amused::IoError);
}

// ------------------------------------------------------------------ one image, collation

TEST(TrainDataSingle, OneCropRepeated) {
  TempDir tmp;
  amused::save_png(tmp / "A mushroom in [V] style.png", formula_image(40, 30));
  DatasetOptions o;
  o.instance_image = (tmp / "A mushroom in [V] style.png").string();
  o.resolution = 16;
  o.seed = 1;
  auto ds = ImageCaptionDataset::open(o);
  EXPECT_EQ(ds->size(), 1);
  const auto batch = ds->next_batch(4);
  for (const auto& s : batch) {
    EXPECT_EQ(s.caption, "A mushroom in [V] style");
    EXPECT_EQ(s.image.pixels, batch[0].image.pixels);
    EXPECT_EQ(s.micro_conds, batch[0].micro_conds);
  }
  expect_same_samples(ImageCaptionDataset::open(o)->next_batch(4), batch);
  o.instance_prompt = "sks style";
  EXPECT_EQ(ImageCaptionDataset::open(o)->next().caption, "sks style");
  o.data = tmp.path().string();
  EXPECT_THROW(ImageCaptionDataset::open(o), amused::InvalidArgument);
  o.data.clear();
  o.instance_image = (tmp / "missing.png").string();
  EXPECT_THROW(ImageCaptionDataset::open(o), amused::IoError);
}

TEST(TrainDataCollate, TensorsAsToTensor) {
  Sample a, b;
  a.image = formula_image(4, 4, 1);
  b.image = formula_image(4, 4, 2);
  a.caption = "a";
  b.caption = "b";
  a.micro_conds = {40, 30, 1, 2, 6};
  b.micro_conds = {30, 40, 3, 0, 6};
  const Batch batch = collate({a, b});
  EXPECT_EQ(batch.pixel_values.sizes(), (std::vector<int64_t>{2, 3, 4, 4}));
  EXPECT_EQ(batch.pixel_values.dtype(), torch::kFloat32);
  // [b=1, c=2, y=3, x=1] is pixel (1, 3) channel 2 of the second image.
  EXPECT_FLOAT_EQ(batch.pixel_values[1][2][3][1].item<float>(),
                  b.image.pixels[(3 * 4 + 1) * 3 + 2] / 255.0f);
  EXPECT_TRUE(torch::equal(batch.micro_conds, torch::tensor({{40.f, 30.f, 1.f, 2.f, 6.f},
                                                             {30.f, 40.f, 3.f, 0.f, 6.f}})));
  EXPECT_EQ(batch.captions, (std::vector<std::string>{"a", "b"}));
  b.image = formula_image(5, 4);
  EXPECT_THROW(collate({a, b}), amused::InvalidArgument);
}
