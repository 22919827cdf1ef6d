// Training data, part 1: the streaming tar reader (ustar, GNU long names, pax, corruption) and the
// PIL/torchvision-exact image transforms.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "amused/error.h"
#include "amused/image_io.h"
#include "support/golden.h"
#include "support/train_data_support.h"
#include "training/dataset.h"
#include "training/image_transforms.h"
#include "training/tar_reader.h"

using amused::Image;
using amused::testing::TempDir;
using namespace amused::training;
using namespace amused::testing::train_data;

namespace {

std::vector<TarMember> read_all(const std::string& bytes, const std::string& source = "mem.tar",
                                uint64_t limit = TarReader::kDefaultMaxMemberBytes) {
  std::istringstream in(bytes);
  TarReader reader(in, source, limit);
  std::vector<TarMember> out;
  TarMember m;
  while (reader.next(m)) out.push_back(m);
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const amused::IoError& e) {
    return e.what();
  }
  return "(no IoError)";
}

}  // namespace

// ------------------------------------------------------------------ tar reader

TEST(TrainDataTar, ReadsRegularMembersAndSkipsOthers) {
  TarBuilder t;
  t.add("dir/", "", '5');
  t.add("./a.txt", "hello");
  t.add("link", "", '2');
  t.add("b.bin", std::string(1000, 'x'));
  t.add("fifo", "", '6');
  t.add("c.empty", "");
  const auto members = read_all(t.finish());
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[0].name, "a.txt");  // leading ./ dropped
  EXPECT_EQ(members[0].data, "hello");
  EXPECT_EQ(members[1].name, "b.bin");
  EXPECT_EQ(members[1].size, 1000u);
  EXPECT_EQ(members[1].data, std::string(1000, 'x'));
  EXPECT_EQ(members[2].name, "c.empty");
  EXPECT_EQ(members[2].size, 0u);
}

TEST(TrainDataTar, UstarPrefixGnuLongNamePaxPathAndGlobalHeader) {
  const std::string dir(120, 'd');
  const std::string long_name = dir + "/" + std::string(130, 'n') + ".txt";
  TarBuilder t;
  t.add_with_prefix(dir, "short.txt", "one");
  t.add_gnu_long_name(long_name, "two");
  t.add_pax_global(TarBuilder::pax_record("comment", "ignored"));
  t.add_pax_path(long_name + ".pax", "three");
  t.add("after.txt", "four");  // the pax path applies to one member only
  const auto members = read_all(t.finish());
  ASSERT_EQ(members.size(), 4u);
  EXPECT_EQ(members[0].name, dir + "/short.txt");
  EXPECT_EQ(members[1].name, long_name);
  EXPECT_EQ(members[1].data, "two");
  EXPECT_EQ(members[2].name, long_name + ".pax");
  EXPECT_EQ(members[2].data, "three");
  EXPECT_EQ(members[3].name, "after.txt");
}

TEST(TrainDataTar, ReadsWhatSystemTarWrites) {
  if (std::system("tar --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "no tar program";
  TempDir tmp;
  const std::string long_dir = std::string(70, 'a') + "/" + std::string(70, 'b');
  std::filesystem::create_directories(tmp / ("src/" + long_dir));
  std::ofstream(tmp / ("src/" + long_dir + "/" + std::string(110, 'c') + ".txt")) << "deep";
  std::ofstream(tmp / "src/top.txt") << "top";
  for (const char* format : {"gnu", "pax", "ustar"}) {
    const auto out = tmp / (std::string(format) + ".tar");
    const std::string cmd = "cd '" + (tmp / "src").string() + "' && tar --format=" + format +
                            " -cf '" + out.string() + "' top.txt '" + long_dir + "' 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) {
      EXPECT_STREQ(format, "ustar")
          << "tar failed for " << format;  // ustar cannot hold a 110-char file name
      continue;
    }
    TarReader reader(out);
    std::map<std::string, std::string> got;
    TarMember m;
    while (reader.next(m)) got[m.name] = m.data;
    EXPECT_EQ(got.size(), 2u) << format;
    EXPECT_EQ(got["top.txt"], "top") << format;
    EXPECT_EQ(got[long_dir + "/" + std::string(110, 'c') + ".txt"], "deep") << format;
  }
}

TEST(TrainDataTar, TruncatedArchiveNamesArchiveAndMember) {
  TarBuilder t;
  t.add("first.txt", "ok");
  t.add("second.png", std::string(3000, 'p'));
  const std::string full = t.finish();
  const std::string cut = full.substr(0, 512 * 3 + 1000);  // inside second.png's data
  const std::string msg = error_of([&] { read_all(cut, "shard-007.tar"); });
  EXPECT_NE(msg.find("shard-007.tar"), std::string::npos) << msg;
  EXPECT_NE(msg.find("second.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // A cut inside a header.
  const std::string msg2 = error_of([&] { read_all(full.substr(0, 512 * 2 + 100), "s.tar"); });
  EXPECT_NE(msg2.find("truncated header"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("first.txt"), std::string::npos) << msg2;
}

TEST(TrainDataTar, EndWithoutZeroBlocksIsAccepted) {
  TarBuilder t;
  t.add("a.txt", "a");
  t.add("b.txt", "b");
  EXPECT_EQ(read_all(t.bytes()).size(), 2u);  // no end-of-archive marker
}

TEST(TrainDataTar, BadChecksumIsReported) {
  TarBuilder t;
  t.add("a.txt", "a");
  t.add("b.txt", "b");
  std::string bytes = t.finish();
  bytes[1024 + 5] ^= 0x40;  // a name byte of b.txt's header
  const std::string msg = error_of([&] { read_all(bytes, "bad.tar"); });
  EXPECT_NE(msg.find("bad.tar"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
  EXPECT_NE(msg.find("byte 1024"), std::string::npos) << msg;
  // Not a tar file at all.
  const std::string msg2 = error_of([&] { read_all(std::string(2048, 'z'), "junk.tar"); });
  EXPECT_NE(msg2.find("checksum"), std::string::npos) << msg2;
}

TEST(TrainDataTar, MemberOverTheLimitIsRefused) {
  TarBuilder t;
  t.add("small.txt", "0123456789");
  t.add("big.bin", std::string(11, 'b'));
  const std::string msg = error_of([&] { read_all(t.finish(), "s.tar", 10); });
  EXPECT_NE(msg.find("big.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("limit"), std::string::npos) << msg;
}

TEST(TrainDataTar, SkipsDataWhenAsked) {
  TarBuilder t;
  t.add("a.jpg", "jpegdata");
  t.add("a.cls", "7");
  std::istringstream in(t.finish());
  TarReader reader(in, "m.tar");
  TarMember m;
  ASSERT_TRUE(reader.next_keeping(m, [](const std::string& n) { return n.ends_with(".cls"); }));
  EXPECT_EQ(m.name, "a.jpg");
  EXPECT_EQ(m.size, 8u);
  EXPECT_TRUE(m.data.empty());
  ASSERT_TRUE(reader.next(m));
  EXPECT_EQ(m.data, "7");
  EXPECT_FALSE(reader.next(m));
  EXPECT_FALSE(reader.next(m));
}

TEST(TrainDataTar, MissingFileIsAnIoError) {
  EXPECT_THROW(TarReader("/nonexistent/shard.tar"), amused::IoError);
}

// ------------------------------------------------------------------ transforms

// Reference values: Pillow 9.4 Image.frombytes("RGB", ...) of the formula image, .resize(size,
// Image.BILINEAR).tobytes().
TEST(TrainDataTransforms, BilinearResizeMatchesPillow) {
  const std::vector<uint8_t> shrink = {
      51,  146, 169, 104, 145, 122, 150, 134, 97,  126, 100, 148, 137, 120, 134, 90,  156, 138,
      132, 129, 83,  132, 144, 101, 139, 104, 146, 110, 133, 129, 131, 156, 106, 147, 130, 139,
      124, 152, 125, 148, 129, 98,  110, 88,  141, 92,  153, 103, 141, 118, 122, 135, 139, 143,
      126, 160, 124, 111, 142, 116, 124, 141, 104, 94,  159, 75,  122, 123, 128, 103, 107, 107,
      153, 122, 122, 112, 135, 137, 101, 132, 118, 104, 147, 115, 165, 98,  113, 115, 111, 110,
      175, 89,  117, 152, 111, 94,  154, 128, 120, 149, 116, 133, 124, 100, 116};
  const std::vector<uint8_t> enlarge = {
      0,   97,  194, 5,   102, 199, 18,  115, 212, 31,  128, 225, 44,  141, 238, 56,  153,
      250, 69,  166, 164, 82,  179, 63,  87,  184, 25,  21,  118, 215, 27,  124, 203, 41,
      138, 172, 55,  152, 147, 69,  166, 161, 83,  180, 174, 97,  154, 129, 111, 123, 75,
      117, 111, 55,  53,  150, 247, 59,  156, 210, 75,  172, 113, 91,  188, 29,  107, 204,
      45,  123, 220, 61,  139, 136, 77,  155, 39,  93,  161, 2,   99,  85,  182, 125, 91,
      188, 115, 109, 206, 87,  127, 216, 65,  145, 166, 83,  163, 115, 101, 181, 84,  119,
      199, 57,  137, 205, 46,  143, 106, 203, 44,  113, 210, 51,  132, 229, 70,  151, 234,
      89,  171, 140, 109, 190, 45,  128, 209, 50,  147, 228, 69,  166, 235, 76,  173};
  EXPECT_EQ(resize_bilinear_pil(formula_image(13, 9), 7, 5).pixels, shrink);
  EXPECT_EQ(resize_bilinear_pil(formula_image(4, 3), 9, 5).pixels, enlarge);
  const Image same = formula_image(6, 4);
  EXPECT_EQ(resize_bilinear_pil(same, 6, 4).pixels, same.pixels);
  EXPECT_THROW(resize_bilinear_pil(same, 0, 4), amused::InvalidArgument);
}

// Reference: torchvision 0.14 transforms.Resize(size)(PIL image).size.
TEST(TrainDataTransforms, ShorterSideSizeMatchesTorchvision) {
  EXPECT_EQ(shorter_side_size(640, 427, 256), std::make_pair(383, 256));
  EXPECT_EQ(shorter_side_size(427, 640, 256), std::make_pair(256, 383));
  EXPECT_EQ(shorter_side_size(40, 30, 16), std::make_pair(21, 16));
  EXPECT_EQ(shorter_side_size(30, 40, 16), std::make_pair(16, 21));
  EXPECT_EQ(shorter_side_size(512, 512, 256), std::make_pair(256, 256));
  EXPECT_EQ(shorter_side_size(1000, 3, 256), std::make_pair(85333, 256));
}

// Reference: torch 1.13 + torchvision 0.14: torch.manual_seed(seed); r = Resize(16, BILINEAR)(im);
// RandomCrop.get_params(r, (16, 16)); and for seed 7 the crop's bytes (sum 96944).
TEST(TrainDataTransforms, ProcessImageCropsAsTorchvisionDraws) {
  const Image wide = formula_image(40, 30), tall = formula_image(30, 40);
  const std::vector<std::tuple<uint64_t, int, int, int, int>> cases = {
      // seed, wide top, wide left, tall top, tall left
      {0, 0, 3, 2, 0},
      {7, 0, 4, 3, 0},
      {42, 0, 5, 0, 0}};
  for (const auto& [seed, wt, wl, tt, tl] : cases) {
    at::Generator g1 = at::detail::createCPUGenerator(seed),
                  g2 = at::detail::createCPUGenerator(seed);
    const Sample a = process_image(wide, 16, CropMode::Random, false, g1);
    const Sample b = process_image(tall, 16, CropMode::Random, false, g2);
    EXPECT_EQ(a.micro_conds, (std::array<float, 5>{40, 30, float(wt), float(wl), 6}));
    EXPECT_EQ(b.micro_conds, (std::array<float, 5>{30, 40, float(tt), float(tl), 6}));
    EXPECT_EQ(a.image.pixels, crop(resize_bilinear_pil(wide, 21, 16), wt, wl, 16).pixels);
  }
  at::Generator g = at::detail::createCPUGenerator(7);
  const Sample s = process_image(wide, 16, CropMode::Random, false, g);
  int64_t sum = 0;
  for (uint8_t v : s.image.pixels) sum += v;
  EXPECT_EQ(sum, 96944);
  EXPECT_EQ(std::vector<uint8_t>(s.image.pixels.begin(), s.image.pixels.begin() + 9),
            (std::vector<uint8_t>{134, 123, 130, 92, 156, 135, 126, 138, 89}));
  // Centre crop: top int(round(0 / 2)), left int(round(5 / 2)) = 2 (half to even).
  const Sample c = process_image(wide, 16, CropMode::Center, false, g);
  EXPECT_EQ(c.micro_conds, (std::array<float, 5>{40, 30, 0, 2, 6}));
  // An exact fit draws nothing from the generator.
  at::Generator g3 = at::detail::createCPUGenerator(5), g4 = at::detail::createCPUGenerator(5);
  const Sample exact = process_image(formula_image(16, 16), 16, CropMode::Random, false, g3);
  EXPECT_EQ(exact.micro_conds, (std::array<float, 5>{16, 16, 0, 0, 6}));
  EXPECT_EQ(g3.current_seed(), g4.current_seed());
  const auto opts = torch::TensorOptions().dtype(torch::kInt64);
  EXPECT_EQ(torch::randint(0, 1000000, {1}, g3, opts).item<int64_t>(),
            torch::randint(0, 1000000, {1}, g4, opts).item<int64_t>());
}

TEST(TrainDataTransforms, FlipMirrorsTheSameCrop) {
  const Image wide = formula_image(40, 30);
  int flipped = 0;
  for (uint64_t seed = 0; seed < 12; ++seed) {
    at::Generator g1 = at::detail::createCPUGenerator(seed),
                  g2 = at::detail::createCPUGenerator(seed);
    const Sample plain = process_image(wide, 16, CropMode::Random, false, g1);
    const Sample maybe = process_image(wide, 16, CropMode::Random, true, g2);
    EXPECT_EQ(plain.micro_conds, maybe.micro_conds);
    if (maybe.image.pixels != plain.image.pixels) {
      EXPECT_EQ(maybe.image.pixels, flip_horizontal(plain.image).pixels);
      ++flipped;
    }
  }
  EXPECT_GT(flipped, 0);
  EXPECT_LT(flipped, 12);
}

// The EXIF transposes, checked against Pillow 9.4's ImageOps.exif_transpose on PNG and JPEG files
// with each orientation when written; here: orientation 6 (rotate 90 clockwise) in a PNG eXIf
// chunk and 8 in a JPEG APP1 segment.
TEST(TrainDataTransforms, ExifOrientationIsApplied) {
  const Image im = formula_image(5, 3);
  const std::string png = with_png_exif(amused::encode_png(im), 6);
  EXPECT_EQ(exif_orientation(png), 6);
  const Image rotated = decode_oriented_rgb(png, "rot.png");
  ASSERT_EQ(rotated.width, 3);
  ASSERT_EQ(rotated.height, 5);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 3; ++x)
      for (int c = 0; c < 3; ++c)  // out(x, y) = in(y, H - 1 - x)
        ASSERT_EQ(rotated.pixels[(y * 3 + x) * 3 + c], im.pixels[((2 - x) * 5 + y) * 3 + c])
            << x << "," << y;
  EXPECT_EQ(exif_orientation(with_jpeg_exif(jpeg_bytes(im), 8)), 8);
  EXPECT_EQ(exif_orientation(jpeg_bytes(im)), 1);
  EXPECT_EQ(exif_orientation(amused::encode_png(im)), 1);
  EXPECT_EQ(exif_orientation("garbage"), 1);
  // Every orientation is a bijection with the expected size.
  for (int o = 1; o <= 8; ++o) {
    const Image t = apply_exif_orientation(im, o);
    EXPECT_EQ(t.width, o >= 5 ? 3 : 5);
    int64_t a = 0, b = 0;
    for (auto v : t.pixels) a += v;
    for (auto v : im.pixels) b += v;
    EXPECT_EQ(a, b);
  }
}

TEST(TrainDataTransforms, BraceExpansionAndKeys) {
  EXPECT_EQ(expand_braces("s-{00..02}.tar"),
            (std::vector<std::string>{"s-00.tar", "s-01.tar", "s-02.tar"}));
  EXPECT_EQ(expand_braces("{a,b}{1,2}"), (std::vector<std::string>{"a1", "a2", "b1", "b2"}));
  EXPECT_EQ(expand_braces("x{3..1}"), (std::vector<std::string>{"x3", "x2", "x1"}));
  EXPECT_EQ(expand_braces("{a,{b,c}}"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(expand_braces("plain{x}.tar"), (std::vector<std::string>{"plain{x}.tar"}));
  EXPECT_EQ(expand_braces("no{brace"), (std::vector<std::string>{"no{brace"}));
  EXPECT_EQ(webdataset_key("dir/a.b.jpg"),
            std::make_pair(std::string("dir/a"), std::string("b.jpg")));
  EXPECT_EQ(webdataset_key("d.x/k.txt"), std::make_pair(std::string("d.x/k"), std::string("txt")));
  EXPECT_EQ(webdataset_key("noext"), std::make_pair(std::string("noext"), std::string("")));
}
