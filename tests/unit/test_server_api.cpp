// The server's request parsing and validation (no sockets): base64, JSON and multipart bodies,
// every kind of bad input, and the mapping onto the library's parameters and PNG metadata.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <filesystem>
#include <random>

#include <unistd.h>

#include "amused/image_io.h"
#include "server/api.h"
#include "server/base64.h"
#include "server/server.h"

using amused::Image;
using amused::server::ApiError;
using amused::server::base64_decode;
using amused::server::base64_encode;
using amused::server::Endpoint;
using amused::server::FormField;
using amused::server::GenerationMode;
using amused::server::GenerationRequest;
using amused::server::RequestLimits;
using json = nlohmann::json;

namespace {

RequestLimits limits() {
  RequestLimits l;
  l.vq_scale_factor = 8;
  l.default_width = 256;
  l.default_height = 256;
  return l;
}

Image solid(int w, int h, uint8_t v) {
  Image im;
  im.width = w;
  im.height = h;
  im.channels = 3;
  im.pixels.assign(static_cast<size_t>(w) * h * 3, v);
  return im;
}

std::string png_of(const Image& im) { return amused::encode_png(im); }

// The request, or a test failure naming the error.
GenerationRequest ok(const amused::server::Parsed<GenerationRequest>& p) {
  if (auto* e = std::get_if<ApiError>(&p)) {
    ADD_FAILURE() << "unexpected error: " << e->to_json().dump();
    return {};
  }
  return std::get<GenerationRequest>(p);
}

// The error, or a test failure.
ApiError err(const amused::server::Parsed<GenerationRequest>& p) {
  if (auto* e = std::get_if<ApiError>(&p)) return *e;
  ADD_FAILURE() << "expected an error, got a request";
  return {};
}

ApiError gen_err(const std::string& body) {
  return err(amused::server::parse_generation_request(body, limits()));
}

GenerationRequest gen_ok(const std::string& body) {
  return ok(amused::server::parse_generation_request(body, limits()));
}

}  // namespace

TEST(ServerBase64, KnownVectorsAndRoundTrip) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},
                                                         {"f", "Zg=="},
                                                         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},
                                                         {"foob", "Zm9vYg=="},
                                                         {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, enc] : vectors) {
    EXPECT_EQ(base64_encode(plain), enc);
    ASSERT_TRUE(base64_decode(enc).has_value()) << enc;
    EXPECT_EQ(*base64_decode(enc), plain);
  }
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (size_t n = 0; n <= all.size(); n += 37) {
    const std::string part = all.substr(0, n);
    EXPECT_EQ(base64_decode(base64_encode(part)), part);
  }
}

TEST(ServerBase64, StrictDecoding) {
  for (const char* bad :
       {"Zg=", "Zg=a", "Z===", "====", "Zh==", "Zm9=", "Zm9v\n", "Zm9v Zm9v", "Zm-v", "Zm_v",
        "Zg==Zg==", "Zm9vYg=\n", "=Zm9", "Zm9vY===", "\xff\xff\xff\xff"}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << "accepted '" << bad << "'";
  }
}

TEST(ServerApi, ErrorShape) {
  const ApiError e = amused::server::invalid("n", "'n' must be between 1 and 8", "invalid_value");
  const json j = e.to_json();
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["message"], "'n' must be between 1 and 8");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "n");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  ApiError bare;
  bare.message = "x";
  EXPECT_TRUE(bare.to_json()["error"]["param"].is_null());
  EXPECT_TRUE(bare.to_json()["error"]["code"].is_null());
}

TEST(ServerApi, MinimalGenerationGetsTheCliDefaults) {
  const GenerationRequest r = gen_ok(R"({"prompt": "a cat"})");
  EXPECT_EQ(r.mode, GenerationMode::TextToImage);
  EXPECT_EQ(r.prompts, std::vector<std::string>{"a cat"});
  EXPECT_TRUE(r.negative_prompts.empty());
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.width.has_value());
  EXPECT_EQ(r.steps, 12);
  EXPECT_EQ(r.guidance_scale, 10.0);
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_EQ(r.temperature, (std::vector<double>{2.0, 0.0}));
  EXPECT_EQ(r.aesthetic_score, 6.0);
  EXPECT_EQ(r.crop_coord, std::make_pair(0, 0));
  EXPECT_EQ(r.masking_schedule, amused::MaskingSchedule::FromConfig);
}

TEST(ServerApi, TheModelsGenerationDefaultsFillWhatARequestLeavesOut) {
  amused::server::RequestLimits l = limits();
  l.default_steps = 8;
  l.default_guidance_scale = 4.5;  // amused serve: from the model's generation_config.json
  const GenerationRequest r = ok(amused::server::parse_generation_request(R"({"prompt": "a cat"})", l));
  EXPECT_EQ(r.steps, 8);
  EXPECT_EQ(r.guidance_scale, 4.5);
  const GenerationRequest given =
      ok(amused::server::parse_generation_request(R"({"prompt": "a cat", "steps": 3, "guidance_scale": 2})", l));
  EXPECT_EQ(given.steps, 3);
  EXPECT_EQ(given.guidance_scale, 2.0);
}

TEST(ServerApi, FullGeneration) {
  const GenerationRequest r = gen_ok(R"({
    "prompt": "a café ☕", "negative_prompt": "blurry", "n": 3, "size": "128x64",
    "response_format": "b64_json", "model": "dall-e-2", "user": "me", "steps": 20,
    "guidance_scale": 4.5, "seed": 18446744073709551615, "temperature": [3, 0.5],
    "aesthetic_score": 5.5, "crop_coord": [16, 32], "masking_schedule": "linear"})");
  EXPECT_EQ(r.prompts, std::vector<std::string>{"a café ☕"});
  EXPECT_EQ(r.negative_prompts, std::vector<std::string>{"blurry"});
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.width.value_or(0), 128);
  EXPECT_EQ(r.height.value_or(0), 64);
  EXPECT_EQ(r.steps, 20);
  EXPECT_EQ(r.guidance_scale, 4.5);
  EXPECT_EQ(r.seed.value_or(0), 18446744073709551615ull);
  EXPECT_EQ(r.temperature, (std::vector<double>{3.0, 0.5}));
  EXPECT_EQ(r.aesthetic_score, 5.5);
  EXPECT_EQ(r.crop_coord, std::make_pair(16, 32));
  EXPECT_EQ(r.masking_schedule, amused::MaskingSchedule::Linear);
  // Other spellings: a single temperature, "a,b" strings, null = absent, size "auto".
  const GenerationRequest s = gen_ok(
      R"({"prompt": "x", "temperature": 1.5, "crop_coord": "3,4", "seed": null, "size": "auto"})");
  EXPECT_EQ(s.temperature, (std::vector<double>{1.5}));
  EXPECT_EQ(s.crop_coord, std::make_pair(3, 4));
  EXPECT_FALSE(s.seed.has_value());
  EXPECT_FALSE(s.width.has_value());
  EXPECT_EQ(gen_ok(R"({"prompt": "x", "temperature": "2,0"})").temperature,
            (std::vector<double>{2.0, 0.0}));
}

TEST(ServerApi, MalformedBodies) {
  for (const char* body : {"", "{", "not json", "{\"prompt\": \"x\",}", "[1, 2]", "\"prompt\"",
                           "null", "42", "{\"prompt\": \"\xff\xfe\"}"}) {
    const ApiError e = gen_err(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.code, "invalid_json") << body;
  }
}

TEST(ServerApi, BadFieldsAreNamed) {
  struct Case {
    const char* body;
    const char* param;
    const char* code;
  };
  const Case cases[] = {
      {R"({})", "prompt", "missing_parameter"},
      {R"({"prompt": null})", "prompt", "missing_parameter"},
      {R"({"prompt": 5})", "prompt", "invalid_type"},
      {R"({"prompt": ["a"]})", "prompt", "invalid_type"},
      {R"({"prompt": ""})", "prompt", "invalid_value"},
      {R"({"prompt": "x", "negative_prompt": 1})", "negative_prompt", "invalid_type"},
      {R"({"prompt": "x", "n": 0})", "n", "invalid_value"},
      {R"({"prompt": "x", "n": 9})", "n", "invalid_value"},
      {R"({"prompt": "x", "n": -1})", "n", "invalid_value"},
      {R"({"prompt": "x", "n": 1.5})", "n", "invalid_type"},
      {R"({"prompt": "x", "n": "2"})", "n", "invalid_type"},
      {R"({"prompt": "x", "n": 99999999999999999999})", "n", "invalid_value"},  // out of range, not a type error
      {R"({"prompt": "x", "steps": 0})", "steps", "invalid_value"},
      {R"({"prompt": "x", "steps": 101})", "steps", "invalid_value"},
      {R"({"prompt": "x", "steps": true})", "steps", "invalid_type"},
      {R"({"prompt": "x", "size": "256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "256x"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "x256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "256x256x"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "0x256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "-256x256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "+256x256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "260x256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "4096x4096"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": " 256x256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "256X256"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": "99999999999x8"})", "size", "invalid_size"},
      {R"({"prompt": "x", "size": 256})", "size", "invalid_type"},
      {R"({"prompt": "x", "response_format": "url"})", "response_format",
       "unsupported_response_format"},
      {R"({"prompt": "x", "response_format": "png"})", "response_format", "invalid_value"},
      {R"({"prompt": "x", "guidance_scale": "10"})", "guidance_scale", "invalid_type"},
      {R"({"prompt": "x", "guidance_scale": 1000})", "guidance_scale", "invalid_value"},
      {R"({"prompt": "x", "guidance_scale": -1})", "guidance_scale", "invalid_value"},
      {R"({"prompt": "x", "guidance_scale": 1e400})", "", "invalid_json"},  // overflows
      {R"({"prompt": "x", "aesthetic_score": 11})", "aesthetic_score", "invalid_value"},
      {R"({"prompt": "x", "seed": -1})", "seed", "invalid_value"},
      {R"({"prompt": "x", "seed": 1.5})", "seed", "invalid_type"},
      {R"({"prompt": "x", "seed": "1"})", "seed", "invalid_type"},
      {R"({"prompt": "x", "seed": 18446744073709551616})", "seed", "invalid_value"},  // 2^64: out of range
      {R"({"prompt": "x", "temperature": [1, 2, 3]})", "temperature", "invalid_value"},
      {R"({"prompt": "x", "temperature": []})", "temperature", "invalid_value"},
      {R"({"prompt": "x", "temperature": [1, "x"]})", "temperature", "invalid_type"},
      {R"({"prompt": "x", "temperature": "a,b"})", "temperature", "invalid_value"},
      {R"({"prompt": "x", "temperature": -1})", "temperature", "invalid_value"},
      {R"({"prompt": "x", "temperature": {}})", "temperature", "invalid_type"},
      {R"({"prompt": "x", "crop_coord": [1]})", "crop_coord", "invalid_value"},
      {R"({"prompt": "x", "crop_coord": [1.5, 2]})", "crop_coord", "invalid_value"},
      {R"({"prompt": "x", "crop_coord": [-1, 2]})", "crop_coord", "invalid_value"},
      {R"({"prompt": "x", "masking_schedule": "cubic"})", "masking_schedule", "invalid_value"},
      {R"({"prompt": "x", "model": 3})", "model", "invalid_type"},
      {R"({"prompt": "x", "quality": "hd"})", "quality", "unknown_parameter"},
      {R"({"prompt": "x", "image": "Zm9v"})", "image", "unknown_parameter"},
      {R"({"prompt": "x", "strength": 0.5})", "strength", "unknown_parameter"},
  };
  for (const auto& c : cases) {
    const ApiError e = gen_err(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.to_json().dump();
    EXPECT_EQ(e.code, c.code) << c.body << " -> " << e.to_json().dump();
    EXPECT_FALSE(e.message.empty());
  }
  const std::string long_prompt = json({{"prompt", std::string(5000, 'a')}}).dump();
  EXPECT_EQ(gen_err(long_prompt).code, "too_long");
}

TEST(ServerApi, MultipartEdits) {
  const std::string image = png_of(solid(64, 32, 100));
  const std::string mask = png_of(solid(64, 32, 255));
  auto parse = [](const std::vector<FormField>& f) {
    return amused::server::parse_multipart_request(f, Endpoint::Edits, limits());
  };
  // Image-to-image with every field as text.
  GenerationRequest r = ok(parse({{"image", image, "photo.png", "image/png"},
                             {"prompt", "a boat", "", ""},
                             {"n", "2", "", ""},
                             {"size", "64x32", "", ""},
                             {"strength", "0.7", "", ""},
                             {"steps", "8", "", ""},
                             {"seed", "42", "", ""},
                             {"guidance_scale", "5", "", ""},
                             {"temperature", "2,0", "", ""},
                             {"crop_coord", "0,0", "", ""},
                             {"response_format", "b64_json", "", ""}}));
  EXPECT_EQ(r.mode, GenerationMode::ImageToImage);
  EXPECT_EQ(r.image.width, 64);
  EXPECT_EQ(r.image.height, 32);
  EXPECT_EQ(r.image_name, "photo.png");
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.steps, 8);
  EXPECT_EQ(r.seed.value_or(0), 42u);
  EXPECT_EQ(r.strength.value_or(0), 0.7);
  EXPECT_EQ(r.guidance_scale, 5.0);
  // Inpainting.
  r = ok(parse({{"image", image, "photo.png", ""},
                {"mask", mask, "mask.png", ""},
                {"prompt", "x", "", ""}}));
  EXPECT_EQ(r.mode, GenerationMode::Inpaint);
  EXPECT_EQ(r.mask_name, "mask.png");

  struct Case {
    std::vector<FormField> fields;
    const char* param;
    const char* code;
  };
  const std::vector<Case> cases = {
      {{{"prompt", "x", "", ""}}, "image", "missing_parameter"},
      {{{"image", image, "a.png", ""}}, "prompt", "missing_parameter"},
      {{{"image", "not an image", "a.png", ""}, {"prompt", "x", "", ""}}, "image", "invalid_image"},
      {{{"image", "", "a.png", ""}, {"prompt", "x", "", ""}}, "image", "invalid_image"},
      {{{"image", image.substr(0, image.size() / 2), "a.png", ""}, {"prompt", "x", "", ""}},
       "image",
       "invalid_image"},
      {{{"image", png_of(solid(4, 4, 1)), "a.png", ""}, {"prompt", "x", "", ""}},
       "image",
       "invalid_image"},
      {{{"image", image, "a.png", ""},
        {"mask", png_of(solid(32, 32, 255)), "m.png", ""},
        {"prompt", "x", "", ""}},
       "mask",
       "mask_mismatch"},
      {{{"image", image, "a.png", ""},
        {"mask", png_of(solid(64, 32, 0)), "m.png", ""},
        {"prompt", "x", "", ""}},
       "mask",
       "empty_mask"},
      {{{"image", image, "a.png", ""}, {"mask", "garbage", "m.png", ""}, {"prompt", "x", "", ""}},
       "mask",
       "invalid_image"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"prompt", "y", "", ""}},
       "prompt",
       "duplicate_parameter"},
      {{{"image", image, "a.png", ""}, {"prompt", "\xc3\x28", "", ""}},
       "prompt",
       "invalid_encoding"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"n", "abc", "", ""}},
       "n",
       "invalid_type"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"n", "", "", ""}},
       "n",
       "invalid_type"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"n", " 2", "", ""}},
       "n",
       "invalid_type"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"n", "-", "", ""}},
       "n",
       "invalid_type"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"n", "20", "", ""}},
       "n",
       "invalid_value"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"seed", "-3", "", ""}},
       "seed",
       "invalid_value"},
      {{{"image", image, "a.png", ""},
        {"prompt", "x", "", ""},
        {"seed", "18446744073709551616", "", ""}},
       "seed",
       "invalid_value"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"strength", "2", "", ""}},
       "strength",
       "invalid_value"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"strength", "half", "", ""}},
       "strength",
       "invalid_type"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"strength", "nan", "", ""}},
       "strength",
       "invalid_type"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"size", "63x32", "", ""}},
       "size",
       "invalid_size"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"style", "vivid", "", ""}},
       "style",
       "unknown_parameter"},
      {{{"image", image, "a.png", ""}, {"prompt", "x", "", ""}, {"response_format", "url", "", ""}},
       "response_format",
       "unsupported_response_format"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const ApiError e = err(parse(cases[i].fields));
    EXPECT_EQ(e.status, 400) << "case " << i;
    EXPECT_EQ(e.param, cases[i].param) << "case " << i << ": " << e.to_json().dump();
    EXPECT_EQ(e.code, cases[i].code) << "case " << i << ": " << e.to_json().dump();
  }
  // Multipart to the generations endpoint: no images there.
  const ApiError g = err(amused::server::parse_multipart_request(
      {{"image", image, "a.png", ""}, {"prompt", "x", "", ""}}, Endpoint::Generations, limits()));
  EXPECT_EQ(g.code, "unknown_parameter");
  // An upload larger than the limit, and one with more pixels than allowed.
  RequestLimits small = limits();
  small.max_image_bytes = 100;
  EXPECT_EQ(
      err(amused::server::parse_multipart_request(
              {{"image", image, "a.png", ""}, {"prompt", "x", "", ""}}, Endpoint::Edits, small))
          .code,
      "image_too_large");
  small = limits();
  small.max_input_side = 32;
  EXPECT_EQ(
      err(amused::server::parse_multipart_request(
              {{"image", image, "a.png", ""}, {"prompt", "x", "", ""}}, Endpoint::Edits, small))
          .code,
      "image_too_large");
}

TEST(ServerApi, JsonEditsAndJobs) {
  const std::string image = png_of(solid(32, 32, 100));
  const std::string mask = png_of(solid(32, 32, 255));
  auto edit = [](const json& j) {
    return amused::server::parse_json_request(j.dump(), Endpoint::Edits, limits());
  };
  GenerationRequest r = ok(edit({{"prompt", "x"}, {"image", base64_encode(image)}}));
  EXPECT_EQ(r.mode, GenerationMode::ImageToImage);
  EXPECT_EQ(r.image.width, 32);
  r = ok(edit({{"prompt", "x"},
               {"image", "data:image/png;base64," + base64_encode(image)},
               {"mask", base64_encode(mask)},
               {"strength", 0.9}}));
  EXPECT_EQ(r.mode, GenerationMode::Inpaint);
  EXPECT_EQ(r.strength.value_or(0), 0.9);
  EXPECT_EQ(err(edit({{"prompt", "x"}, {"image", "###"}})).code, "invalid_base64");
  EXPECT_EQ(err(edit({{"prompt", "x"}, {"image", base64_encode(image) + "\n"}})).code,
            "invalid_base64");
  EXPECT_EQ(err(edit({{"prompt", "x"}, {"image", "data:image/png," + base64_encode(image)}})).code,
            "invalid_base64");
  EXPECT_EQ(err(edit({{"prompt", "x"}, {"image", 12}})).code, "invalid_type");
  EXPECT_EQ(err(edit({{"prompt", "x"}, {"image", base64_encode("GIF89a....")}})).code,
            "invalid_image");
  EXPECT_EQ(err(edit({{"prompt", "x"}})).code, "missing_parameter");
  EXPECT_EQ(err(edit({{"prompt", "x"}, {"image", base64_encode(image)}, {"strength", 1.5}})).param,
            "strength");

  auto job = [](const json& j) {
    return amused::server::parse_json_request(j.dump(), Endpoint::Jobs, limits());
  };
  EXPECT_EQ(ok(job({{"prompt", "x"}, {"steps", 3}})).mode, GenerationMode::TextToImage);
  EXPECT_EQ(ok(job({{"prompt", "x"}, {"image", base64_encode(image)}})).mode, GenerationMode::ImageToImage);
  EXPECT_EQ(err(job({{"prompt", "x"}, {"mask", base64_encode(mask)}})).param, "mask");
  EXPECT_EQ(err(job({{"prompt", "x"}, {"strength", 0.5}})).param, "strength");
}

TEST(ServerApi, ToParamsMatchesTheCli) {
  GenerationRequest r = gen_ok(
      R"({"prompt": "p", "negative_prompt": "q", "n": 2, "size": "64x32", "steps": 5,
          "guidance_scale": 3, "seed": 7, "temperature": 1.5, "aesthetic_score": 5,
          "crop_coord": [1, 2], "masking_schedule": "linear"})");
  auto call = amused::server::to_params(r);
  const auto& p = call.t2i;
  EXPECT_EQ(p.prompts, std::vector<std::string>{"p"});
  EXPECT_EQ(p.negative_prompts, std::vector<std::string>{"q"});
  EXPECT_EQ(p.num_images_per_prompt, 2);
  EXPECT_EQ(p.num_inference_steps, 5);
  EXPECT_EQ(p.guidance_scale, 3.0);
  EXPECT_EQ(p.seed.value_or(0), 7u);
  EXPECT_TRUE(p.temperature.scalar);
  EXPECT_EQ(p.temperature.values, std::vector<double>{1.5});
  EXPECT_EQ(p.aesthetic_score, 5.0);
  EXPECT_EQ(p.crop_coord, std::make_pair(1, 2));
  EXPECT_EQ(p.masking_schedule, amused::MaskingSchedule::Linear);
  EXPECT_EQ(p.width.value_or(0), 64);
  EXPECT_EQ(p.height.value_or(0), 32);
  // No negative prompt given: none passed (the CLI passes an empty list too).
  EXPECT_TRUE(amused::server::to_params(gen_ok(R"({"prompt": "p"})")).t2i.negative_prompts.empty());
  EXPECT_FALSE(amused::server::to_params(gen_ok(R"({"prompt": "p"})")).t2i.temperature.scalar);

  // Edits: the strength defaults of the CLI (0.5 image-to-image, 1.0 inpainting).
  GenerationRequest e;
  e.mode = GenerationMode::ImageToImage;
  e.prompts = {"p"};
  e.image = solid(16, 16, 3);
  EXPECT_EQ(amused::server::to_params(e).img2img.strength, 0.5);
  EXPECT_EQ(amused::server::to_params(e).img2img.image.width, 16);
  e.mode = GenerationMode::Inpaint;
  e.mask = solid(16, 16, 255);
  EXPECT_EQ(amused::server::to_params(e).inpaint.strength, 1.0);
  EXPECT_EQ(amused::server::to_params(e).inpaint.mask.width, 16);
  EXPECT_EQ(amused::server::to_params(e).inpaint.image.width, 16);
  EXPECT_EQ(amused::server::to_params(e).inpaint.prompts, std::vector<std::string>{"p"});
  e.strength = 0.25;
  EXPECT_EQ(amused::server::to_params(e).inpaint.strength, 0.25);
}

TEST(ServerApi, PngMetadataHasTheCliKeys) {
  GenerationRequest r = gen_ok(R"({"prompt": "p", "seed": 3, "guidance_scale": 4})");
  amused::GenerationResult result;
  result.images = {solid(16, 16, 0), solid(16, 16, 0)};
  result.seed = 3;
  const auto text = amused::server::png_metadata(r, result, 1, "models/x", amused::MaskingSchedule::Cosine,
                                                 amused::DType::Float32);
  std::vector<std::string> keys;
  for (const auto& [k, v] : text) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "model",
                      "width", "height", "aesthetic_score", "crop_coord", "temperature",
                      "masking_schedule", "dtype", "mode", "image_index", "software"}));
  auto value = [&](const std::string& k) {
    for (const auto& [key, v] : text)
      if (key == k) return v;
    return std::string("?");
  };
  EXPECT_EQ(value("seed"), "3");
  EXPECT_EQ(value("guidance_scale"), "4.0");  // nlohmann's dump of a double, as the CLI
  EXPECT_EQ(value("temperature"), "2,0");
  EXPECT_EQ(value("crop_coord"), "0,0");
  EXPECT_EQ(value("image_index"), "1");
  EXPECT_EQ(value("masking_schedule"), "cosine");
}

TEST(ServerApi, SizeAndUtf8Helpers) {
  EXPECT_EQ(amused::server::parse_size("256x128"), std::make_pair(256, 128));
  for (const char* bad : {"", "x", "256", "256x", "x1", "1x1x1", "ax1", "1xb", "123456x1"})
    EXPECT_FALSE(amused::server::parse_size(bad).has_value()) << bad;
  EXPECT_TRUE(amused::server::is_valid_utf8("plain, café, ☕, 🐱"));
  for (const char* bad :
       {"\xff", "\xc3", "\xc3\x28", "\xe2\x82", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"})
    EXPECT_FALSE(amused::server::is_valid_utf8(bad));
}

TEST(ServerApi, Utf8Sanitized) {
  using amused::server::utf8_sanitized;
  EXPECT_EQ(utf8_sanitized("plain, café, ☕, 🐱"), "plain, café, ☕, 🐱");
  EXPECT_EQ(utf8_sanitized("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(utf8_sanitized("caf\xc3"), "caf\xEF\xBF\xBD");  // cut inside a character
  for (const char* bad :
       {"\xff", "\xc3", "\xc3\x28", "\xe2\x82", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"})
    EXPECT_TRUE(amused::server::is_valid_utf8(utf8_sanitized(bad))) << bad;
}

// Found by fuzz_server_request: a multipart field name (or a value cut at 64 bytes inside a
// character) that is not UTF-8 was quoted in the error message, and serialising the error threw
// nlohmann::json's type_error 316 instead of answering 400.
TEST(ServerApi, ErrorsQuotingBrokenUtf8StillSerialise) {
  RequestLimits limits;
  auto error_of = [](const amused::server::Parsed<amused::server::GenerationRequest>& p) {
    EXPECT_TRUE(std::holds_alternative<ApiError>(p));
    return std::holds_alternative<ApiError>(p) ? std::get<ApiError>(p) : ApiError{};
  };
  std::vector<FormField> bad_name = {{"prompt", "x", "", ""}, {"prom\x90\x8b\xf5", "1", "", ""}};
  ApiError e = error_of(parse_multipart_request(bad_name, Endpoint::Edits, limits));
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "unknown_parameter");
  EXPECT_NO_THROW(e.to_json().dump());
  EXPECT_NE(e.to_json().dump().find("unknown form field"), std::string::npos);
  std::vector<FormField> dup = {{"\xff", "a", "", ""}, {"\xff", "b", "", ""}};
  EXPECT_NO_THROW(error_of(parse_multipart_request(dup, Endpoint::Jobs, limits)).to_json().dump());
  std::vector<FormField> long_name = {{std::string(100000, 'a'), "1", "", ""}};
  e = error_of(parse_multipart_request(long_name, Endpoint::Jobs, limits));
  EXPECT_LT(e.message.size(), 200u);
  // 63 ASCII bytes then a two-byte character: the quoted 64-byte prefix ends inside it.
  std::vector<FormField> cut = {{"prompt", "x", "", ""}, {"steps", std::string(63, '1') + "é", "", ""}};
  e = error_of(parse_multipart_request(cut, Endpoint::Jobs, limits));
  EXPECT_EQ(e.param, "steps");
  EXPECT_NO_THROW(e.to_json().dump());
  // The error shape itself, whatever a caller put in it.
  ApiError raw = amused::server::invalid("\xc3", "bad \xff value");
  EXPECT_EQ(raw.to_json()["error"]["message"], "bad \xEF\xBF\xBD value");
  EXPECT_NO_THROW(raw.to_json().dump());
}

TEST(ServerApi, MutatedBodiesNeverThrow) {
  // A small in-process fuzz: byte flips, truncations and splices of valid bodies must give a
  // request or an ApiError, never an exception.
  const std::vector<std::string> seeds = {
      R"({"prompt": "a cat", "n": 2, "size": "64x64", "seed": 1, "temperature": [2, 0]})",
      json({{"prompt", "x"}, {"image", base64_encode(png_of(solid(16, 16, 9)))}}).dump()};
  std::mt19937 rng(1234);
  for (int it = 0; it < 3000; ++it) {
    std::string body = seeds[static_cast<size_t>(it) % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !body.empty(); ++k) {
      const size_t pos = rng() % body.size();
      switch (rng() % 3) {
        case 0:
          body[pos] = static_cast<char>(rng() % 256);
          break;
        case 1:
          body.resize(pos);
          break;
        default:
          body.insert(pos, body.substr(rng() % body.size(), 8));
      }
    }
    for (Endpoint ep : {Endpoint::Generations, Endpoint::Edits, Endpoint::Jobs})
      EXPECT_NO_THROW(amused::server::parse_json_request(body, ep, limits())) << body;
  }
}

namespace {
TEST(ServerApi, LoraScalesPerRequest) {
  const GenerationRequest r = gen_ok(R"({"prompt": "p", "loras": {"mushroom": 0.8, "ink": 0}})");
  EXPECT_EQ(r.loras, (std::map<std::string, double>{{"mushroom", 0.8}, {"ink", 0.0}}));
  const auto call = amused::server::to_params(r);
  EXPECT_EQ(call.t2i.lora_scales, r.loras);
  EXPECT_EQ(gen_err(R"({"prompt": "p", "loras": [1]})").code, "invalid_type");
  EXPECT_EQ(gen_err(R"({"prompt": "p", "loras": {"a": "x"}})").code, "invalid_type");
  EXPECT_EQ(gen_err(R"({"prompt": "p", "loras": {"a": 1000}})").code, "invalid_value");
  EXPECT_EQ(gen_err(R"({"prompt": "p", "loras": {"": 1}})").param, "loras");
}
}  // namespace

// The id clients see for the served model: a folder's name, never the server's path to it.
TEST(ServerApi, ModelIdIsTheFolderNameNotThePath) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("amused-model-id-" + std::to_string(::getpid()));
  fs::create_directories(root / "amused-emoji");
  EXPECT_EQ(amused::server::model_id_for((root / "amused-emoji").string()), "amused-emoji");
  EXPECT_EQ(amused::server::model_id_for((root / "amused-emoji").string() + "/"), "amused-emoji");
  EXPECT_EQ(amused::server::model_id_for((root / "amused-emoji" / ".").string()), "amused-emoji");
  // Not a folder here: a hub repo id, shown as it is.
  EXPECT_EQ(amused::server::model_id_for("amused/amused-256"), "amused/amused-256");
  fs::remove_all(root);
}

// Issue 19, misleading errors: each of these used to get a message about something else.
TEST(ServerApi, ErrorsSayWhatIsWrong) {
  // A seed of 2^64 is out of range (the JSON parser stores it as a float), not "not an integer".
  ApiError e = gen_err(R"({"prompt": "p", "seed": 18446744073709551616})");
  EXPECT_EQ(e.code, "invalid_value");
  EXPECT_NE(e.message.find("between 0 and 18446744073709551615"), std::string::npos) << e.message;
  e = gen_err(R"({"prompt": "p", "steps": 100000000000000000000})");
  EXPECT_EQ(e.code, "invalid_value");
  EXPECT_EQ(gen_err(R"({"prompt": "p", "steps": 2.5})").code, "invalid_type");  // still a type error

  // A lone UTF-16 surrogate: our words, not the JSON library's internals.
  e = gen_err(R"({"prompt": "\ud800"})");
  EXPECT_EQ(e.code, "invalid_json");
  EXPECT_NE(e.message.find("surrogate"), std::string::npos) << e.message;
  EXPECT_EQ(e.message.find("json.exception"), std::string::npos) << e.message;
  e = gen_err(R"({"prompt": "p",)");
  EXPECT_EQ(e.code, "invalid_json");
  EXPECT_EQ(e.message.find("json.exception"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("at byte"), std::string::npos) << e.message;

  // Duplicate JSON keys are refused as duplicate multipart fields are (not last-one-wins).
  e = gen_err(R"({"prompt": "a", "seed": 1, "prompt": "b"})");
  EXPECT_EQ(e.code, "duplicate_parameter");
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(gen_err(R"({"prompt": "a", "loras": {"x": 1, "x": 2}})").code, "duplicate_parameter");
  // The same key in different objects is fine.
  EXPECT_EQ(gen_ok(R"({"prompt": "a", "loras": {"prompt": 1}})").prompts.at(0), "a");
}

// The OpenAI SDK sends an array of images as "image[]": one is an image; several are refused as
// such (they used to be reported as "'image[]' is not valid UTF-8").
TEST(ServerApi, MultipartImageArrayField) {
  const std::string image = png_of(solid(64, 32, 100));
  auto parse = [](const std::vector<FormField>& f) {
    return amused::server::parse_multipart_request(f, Endpoint::Edits, limits());
  };
  const GenerationRequest r = ok(parse({{"image[]", image, "in.png", "image/png"}, {"prompt", "p", "", ""}}));
  EXPECT_EQ(r.mode, GenerationMode::ImageToImage);
  EXPECT_EQ(r.image.width, 64);
  EXPECT_EQ(r.image_name, "in.png");
  const ApiError e = err(parse({{"image[]", image, "a.png", "image/png"},
                                {"image[]", image, "b.png", "image/png"},
                                {"prompt", "p", "", ""}}));
  EXPECT_EQ(e.code, "duplicate_parameter");
  EXPECT_NE(e.message.find("one 'image' per request"), std::string::npos) << e.message;
  EXPECT_EQ(err(parse({{"image", image, "a.png", "image/png"},
                       {"image[]", image, "b.png", "image/png"},
                       {"prompt", "p", "", ""}}))
                .code,
            "duplicate_parameter");
}

// The steps a request runs, as job progress and responses report them: a queued edit and a
// running one agree, and strength 0.01 reports the 0 steps it runs (it said 12).
TEST(ServerApi, StepsToRunCountEditsLikeThePipeline) {
  GenerationRequest r;
  r.steps = 12;
  r.mode = GenerationMode::TextToImage;
  EXPECT_EQ(amused::server::steps_to_run(r), 12);
  r.mode = GenerationMode::ImageToImage;
  EXPECT_EQ(amused::server::steps_to_run(r), 6);  // default strength 0.5
  r.strength = 0.01;
  EXPECT_EQ(amused::server::steps_to_run(r), 0);
  r.mode = GenerationMode::Inpaint;
  r.strength.reset();
  EXPECT_EQ(amused::server::steps_to_run(r), 12);  // default strength 1.0
  r.strength = 0.3;
  EXPECT_EQ(amused::server::steps_to_run(r), 3);
}

// Text beyond any parameter's limit (a 30 MB prompt in an edit's body, within that route's cap)
// is dropped while the body is parsed and refused, naming the parameter and the sizes; images are
// exempt. Streaming parameters are checked too (issue 18).
TEST(ServerApi, OversizedTextIsRefusedWhileParsing) {
  const std::string huge(200000, 'a');
  const ApiError e = err(amused::server::parse_json_request(json({{"prompt", huge}}).dump(), Endpoint::Edits, limits()));
  EXPECT_EQ(e.param, "prompt");
  EXPECT_NE(e.message.find("200000 bytes"), std::string::npos) << e.message;
  const ApiError n = err(amused::server::parse_json_request(json({{"prompt", "x"}, {"negative_prompt", huge}}).dump(),
                                                             Endpoint::Generations, limits()));
  EXPECT_EQ(n.param, "negative_prompt");
  // A big image is not text: it gets the image's own checks (here: not valid base64).
  const ApiError img =
      err(amused::server::parse_json_request(json({{"prompt", "x"}, {"image", huge + "!"}}).dump(), Endpoint::Edits, limits()));
  EXPECT_EQ(img.param, "image");

  EXPECT_TRUE(gen_ok(R"({"prompt": "x", "stream": true, "partial_images": 3})").stream);
  EXPECT_EQ(gen_ok(R"({"prompt": "x", "stream": true, "partial_images": 3})").partial_images, 3);
  EXPECT_TRUE(gen_ok(R"({"prompt": "x", "stream": true, "partial_images": 2})").step_details);
  EXPECT_EQ(gen_err(R"({"prompt": "x", "stream": "yes"})").code, "invalid_type");
  EXPECT_EQ(gen_err(R"({"prompt": "x", "stream": true, "partial_images": 4})").param, "partial_images");
  EXPECT_EQ(gen_err(R"({"prompt": "x", "partial_images": 1})").param, "partial_images");
}
