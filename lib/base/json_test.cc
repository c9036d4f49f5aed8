#include "iopfd/base/json.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using ::testing::HasSubstr;

std::string Nested(size_t depth, char open = '[', char close = ']') {
  return std::string(depth, open) + std::string(depth, close);
}

TEST(JsonTest, DepthIsCountedOutsideStringsOnly) {
  EXPECT_EQ(FindJsonTooDeep(Nested(3), 3), std::string::npos);
  EXPECT_EQ(FindJsonTooDeep(Nested(4), 3), 3u);
  EXPECT_EQ(FindJsonTooDeep(R"({"a":{"b":[1,{"c":2}]}})", 4), std::string::npos);
  EXPECT_EQ(FindJsonTooDeep(R"({"a":{"b":[1,{"c":2}]}})", 3), 13u);
  // Brackets inside strings, and escaped quotes that do not end them, do not count.
  EXPECT_EQ(FindJsonTooDeep(R"(["[[[[", "\"[[[[", "\\", []])", 2), std::string::npos);
  EXPECT_EQ(FindJsonTooDeep(R"(["\\", [[]]])", 2), 8u);
  // Closing more than was opened never underflows into allowing more later.
  EXPECT_EQ(FindJsonTooDeep("]]]]" + Nested(3), 2), 6u);
}

// The message that killed iopfd (issue 12): 200,000 nested arrays in a call's parameters.
TEST(JsonTest, DeepNestingIsRefusedBeforeAnyValueIsBuilt) {
  std::string message =
      R"({"method":"io.iopfd.GetStatus","parameters":{"x":)" + Nested(200000) + "}}";
  auto j = ParseJson(message);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(j.status().message()),
              HasSubstr("nested deeper than 64 levels at byte 111"));
}

TEST(JsonTest, ParsesWhatIsWithinTheLimit) {
  auto j = ParseJson(R"({"x":)" + Nested(kMaxJsonDepth - 1) + "}");
  ASSERT_TRUE(j.ok()) << j.status();
  nlohmann::json copy = *j;  // copying recurses per level: fine at this depth
  EXPECT_EQ(copy, *j);
  EXPECT_FALSE(ParseJson(R"({"x":)" + Nested(kMaxJsonDepth) + "}").ok());
}

TEST(JsonTest, InvalidJsonAndUtf8AreRefused) {
  for (const std::string& bad :
       {std::string("{"), std::string(R"({"a":1,})"), std::string("\"\xff\""),
        std::string(R"("\ud800")"), std::string("{} {}"), std::string()}) {
    auto j = ParseJson(bad);
    ASSERT_FALSE(j.ok()) << bad;
    EXPECT_THAT(std::string(j.status().message()), HasSubstr("not valid JSON")) << bad;
  }
}

TEST(JsonTest, GetUnsignedTakesOnlyIntegersInRange) {
  uint64_t v = 0;
  EXPECT_TRUE(GetUnsigned(nlohmann::json(7), 7, &v));
  EXPECT_EQ(v, 7u);
  EXPECT_TRUE(GetUnsigned(nlohmann::json(int64_t{3}), 7, &v));
  EXPECT_EQ(v, 3u);
  EXPECT_FALSE(GetUnsigned(nlohmann::json(8), 7, &v));
  EXPECT_FALSE(GetUnsigned(nlohmann::json(-1), 7, &v));
  EXPECT_FALSE(GetUnsigned(nlohmann::json(1.0), 7, &v));
  EXPECT_FALSE(GetUnsigned(nlohmann::json(1e20), UINT64_MAX, &v));
  EXPECT_FALSE(GetUnsigned(nlohmann::json("1"), 7, &v));
  EXPECT_FALSE(GetUnsigned(nlohmann::json(nullptr), 7, &v));
}

}  // namespace
}  // namespace iopfd
