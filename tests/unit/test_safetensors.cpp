// safetensors reader/writer: round trips, zero-copy, and every header violation as a clear error.
#include <gtest/gtest.h>

#include <fstream>

#include "amused/error.h"
#include "io/safetensors.h"
#include "support/golden.h"

using amused::CheckpointError;
using amused::io::SafeTensorsFile;
using amused::testing::TempDir;

namespace {

void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string with_header(const std::string& header_json, const std::string& data) {
  std::string out;
  const uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header_json + data;
}

// Expects opening `bytes` to throw a CheckpointError whose message contains `needle` and the path.
void expect_rejected(const std::string& bytes, const std::string& needle) {
  TempDir tmp;
  const auto p = tmp / "bad.safetensors";
  write_bytes(p, bytes);
  try {
    auto f = SafeTensorsFile::open(p);
    for (const auto& k : f->keys()) f->get(k);
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  }
}

}  // namespace

TEST(SafeTensors, RoundTripAllNativeDtypes) {
  TempDir tmp;
  amused::io::StateDict sd;
  sd["f64"] = torch::randn({3, 2}, torch::kFloat64);
  sd["f32"] = torch::randn({4, 5});
  sd["f16"] = torch::randn({7}).to(torch::kFloat16);
  sd["bf16"] = torch::randn({2, 3}).to(torch::kBFloat16);
  sd["i64"] = torch::arange(10, torch::kInt64);
  sd["i32"] = torch::arange(6, torch::kInt32).reshape({2, 3});
  sd["i16"] = torch::arange(5, torch::kInt16);
  sd["i8"] = torch::arange(-3, 3, torch::kInt8);
  sd["u8"] = torch::arange(0, 255, 7, torch::kUInt8);
  sd["bool"] = torch::tensor({true, false, true});
  sd["scalar"] = torch::tensor(3.5f);
  sd["empty"] = torch::empty({0, 4});
  amused::io::save_safetensors(tmp / "x.safetensors", sd, {{"format", "pt"}});
  auto f = SafeTensorsFile::open(tmp / "x.safetensors");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->keys().size(), sd.size());
  for (const auto& [k, t] : sd) {
    auto got = f->get(k);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << k;
    EXPECT_EQ(got.sizes(), t.sizes()) << k;
    EXPECT_TRUE(torch::equal(got, t)) << k;
  }
  // No temporary file is left behind.
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(tmp.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(SafeTensors, ZeroCopyAndCopyOnWrite) {
  TempDir tmp;
  amused::io::save_safetensors(tmp / "x.safetensors", {{"w", torch::ones({16})}});
  auto f = SafeTensorsFile::open(tmp / "x.safetensors");
  auto a = f->get("w");
  auto b = f->get("w");
  EXPECT_EQ(a.data_ptr(), b.data_ptr()) << "aligned F32 data should be viewed, not copied";
  a.add_(1);  // private mapping: allowed, and never written back to the file
  f.reset();
  EXPECT_TRUE(torch::equal(b, torch::full({16}, 2.0f)));  // still alive after the file object is gone
  auto again = amused::io::load_safetensors(tmp / "x.safetensors");
  EXPECT_TRUE(torch::equal(again.at("w"), torch::ones({16})));
}

TEST(SafeTensors, ConvertsNonNativeDtypes) {
  // U16 [1, 65535], U32 [4000000000], F8_E4M3 [0x38 = 1.0, 0xC0 = -2.0], F8_E5M2 [0x3C = 1.0].
  std::string data;
  auto put = [&](std::initializer_list<uint8_t> bytes) { for (auto b : bytes) data.push_back(static_cast<char>(b)); };
  put({1, 0, 0xff, 0xff});               // U16 at 0..4
  put({0x00, 0x28, 0x6b, 0xee});         // U32 4000000000 at 4..8
  put({0x38, 0xC0});                     // F8_E4M3 at 8..10
  put({0x3C});                           // F8_E5M2 at 10..11
  const std::string h =
      R"({"u16":{"dtype":"U16","shape":[2],"data_offsets":[0,4]},"u32":{"dtype":"U32","shape":[1],"data_offsets":[4,8]},)"
      R"("e4":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[8,10]},"e5":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[10,11]}})";
  TempDir tmp;
  write_bytes(tmp / "x.safetensors", with_header(h, data));
  auto f = SafeTensorsFile::open(tmp / "x.safetensors");
  EXPECT_TRUE(torch::equal(f->get("u16"), torch::tensor({1, 65535}, torch::kInt32)));
  EXPECT_EQ(f->get("u32").item<int64_t>(), 4000000000LL);
  EXPECT_TRUE(torch::equal(f->get("e4"), torch::tensor({1.0f, -2.0f})));
  EXPECT_EQ(f->get("e5").item<float>(), 1.0f);
}

// Found by fuzz_safetensors (UBSan): an empty tensor at an offset its dtype's alignment does not
// allow took the copying path, which called memcpy on the empty copy's null data pointer.
TEST(SafeTensors, EmptyTensorsAtMisalignedOffsets) {
  // A 9-byte header (9 % 4 != 0 puts the data area off 4-byte alignment), then 4 bytes of data.
  const std::string h = R"({"one":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("empty":{"dtype":"F32","shape":[0,4],"data_offsets":[1,1]}})";
  for (const std::string& pad : {std::string(""), std::string(" "), std::string("  "), std::string("   ")}) {
    TempDir tmp;
    write_bytes(tmp / "x.safetensors", with_header(h + pad, std::string(1, '\x07')));
    auto f = SafeTensorsFile::open(tmp / "x.safetensors");
    const auto empty = f->get("empty");
    EXPECT_EQ(empty.sizes(), (std::vector<int64_t>{0, 4}));
    EXPECT_EQ(empty.scalar_type(), torch::kFloat32);
    EXPECT_EQ(f->get("one").item<int64_t>(), 7);
  }
}

TEST(SafeTensors, RejectsCorruptHeaders) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data(8, '\0');
  expect_rejected("abc", "too short");
  expect_rejected(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds");
  expect_rejected(std::string("\x40\x00\x00\x00\x00\x00\x00\x00", 8) + "{}", "past the end");
  expect_rejected(with_header("{not json", data), "not valid JSON");
  expect_rejected(with_header("[1,2]", data), "JSON object");
  expect_rejected(with_header(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", data), "unknown dtype");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data), "span");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data), "past the data area");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data), "begin");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data), "non-negative");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2]}})", data), "data_offsets");
  expect_rejected(with_header(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", data), "dtype");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", data),
                  "too large");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                              data),
                  "overlap");
  expect_rejected(with_header("{" + ok_entry + "," + ok_entry + "}", data), "twice");
  expect_rejected(with_header(R"({"__metadata__":{"x":1},)" + ok_entry + "}", data), "__metadata__");
  expect_rejected(with_header(R"({"a":[1]})", data), "not an object");
}

TEST(SafeTensors, MissingFileAndFolder) {
  TempDir tmp;
  EXPECT_THROW(SafeTensorsFile::open(tmp / "nope.safetensors"), CheckpointError);
  EXPECT_THROW(SafeTensorsFile::open(tmp.path()), CheckpointError);
}

TEST(SafeTensors, WriterRefusesMissingFolderAndKeepsOldFile) {
  TempDir tmp;
  EXPECT_THROW(amused::io::save_safetensors(tmp / "no" / "x.safetensors", {{"a", torch::ones({1})}}), amused::IoError);
  amused::io::save_safetensors(tmp / "x.safetensors", {{"a", torch::ones({1})}});
  // An untensorisable entry fails before anything is written: the good file stays.
  EXPECT_THROW(amused::io::save_safetensors(tmp / "x.safetensors", {{"a", torch::ones({1}, torch::kComplexFloat)}}),
               amused::InvalidArgument);
  EXPECT_TRUE(torch::equal(amused::io::load_safetensors(tmp / "x.safetensors").at("a"), torch::ones({1})));
}

TEST(SafeTensors, ReadsGoldenCases) {
  AMUSED_REQUIRE_GOLDEN();
  auto f = SafeTensorsFile::open(amused::testing::golden_path("cases/tokenizer.safetensors"));
  EXPECT_FALSE(f->keys().empty());
}
