// The public API as its users meet it: what amused.h and pipeline.h promise.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <type_traits>

#include "amused/amused.h"
#include "core/threads.h"
#include "support/golden.h"

namespace gt = amused::testing;

// amused.h: a thread count chosen with set_threads() before loading is kept by the load (a load
// used to apply all physical cores regardless); an explicit LoadOptions::threads still wins.
TEST(PublicApi, SetThreadsBeforeLoadIsKept) {
  AMUSED_REQUIRE_GOLDEN();
  const std::string model = gt::golden_path("models/tiny-a").string();
  ASSERT_EQ(amused::set_threads(1), 1);
  auto pipe = amused::Pipeline::load(model, gt::reference_options());
  EXPECT_EQ(pipe->summary().threads, 1);
  EXPECT_EQ(at::get_num_threads(), 1);

  amused::LoadOptions two = gt::reference_options();
  two.threads = 2;
  auto other = amused::Pipeline::load(model, two);
  EXPECT_EQ(other->summary().threads, 2);
  EXPECT_EQ(at::get_num_threads(), 2);

  // And a later load without a count goes back to the one the caller chose.
  auto again = amused::Pipeline::load(model, gt::reference_options());
  EXPECT_EQ(again->summary().threads, 1);
  amused::set_threads(0);  // all physical cores again, for tests run after this one in-process
}

// Without set_threads(), a load applies all physical cores, as before.
TEST(PublicApi, LoadWithoutSetThreadsUsesThePhysicalCores) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), gt::reference_options());
  EXPECT_EQ(pipe->summary().threads, amused::physical_core_count());
}

// pipeline.h: an InpaintParams cannot be passed where an ImageToImageParams is expected (that
// sliced the mask off silently); each keeps the reference's default strength.
TEST(PublicApi, InpaintParamsIsNotAnImageToImageParams) {
  static_assert(!std::is_convertible_v<const amused::InpaintParams&, const amused::ImageToImageParams&>);
  static_assert(!std::is_base_of_v<amused::ImageToImageParams, amused::InpaintParams>);
  EXPECT_EQ(amused::InpaintParams{}.strength, 1.0);
  EXPECT_EQ(amused::ImageToImageParams{}.strength, 0.5);
}
