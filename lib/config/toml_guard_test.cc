#include "iopfd/config/toml_guard.h"

#include <toml++/toml.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/config/config.h"

namespace iopfd {
namespace {

using ::testing::HasSubstr;

std::string Utf8(uint32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

std::string Fill(std::string_view context, const std::string& cp) {
  std::string out(context);
  out.replace(out.find('@'), 1, cp);
  return out;
}

// Runs toml++ on text the guard let through. In the sanitizer build (-fno-sanitize-recover)
// toml++'s __builtin_unreachable aborts the test; the plain build checks only what it can.
bool TomlParses(const std::string& text) {
  try {
    (void)toml::parse(text);
    return true;
  } catch (const toml::parse_error&) {
    return false;
  }
}

// The code points checked in every context: all of the BMP and the start of plane 1, then
// every 61st (a prime stride, so every low-bit pattern recurs) up to U+10FFFF.
std::vector<uint32_t> CodePoints() {
  std::vector<uint32_t> out;
  for (uint32_t c = 0x80; c <= 0x10FFFF; c += c < 0x11000 ? 1 : 61) {
    if (c < 0xD800 || c > 0xDFFF) out.push_back(c);
  }
  return out;
}

// Issue 12: these two bytes as a whole file reached __builtin_unreachable in toml++ 3.3.0.
TEST(TomlGuardTest, TheCrashingDocumentIsAnErrorWithItsPlace) {
  LoadResult r = ParseDeviceText("\xc5\x92", "dev.toml", false);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].ToString(),
            "dev.toml:1:1: invalid TOML: character U+0152 outside a string or comment (TOML "
            "allows only ASCII there)");
  auto p = CheckTomlText("a = 1\nb = 2 \xc5\x92\n");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->line, 2);
  EXPECT_EQ(p->column, 7);
  // Columns count code points, as toml++ does.
  p = CheckTomlText("a = \"\xc5\x92\xc5\x92\" \xc5\x92");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->column, 10);
}

// Where TOML allows non-ASCII characters, the guard lets every one through, and toml++ parses
// the document to exactly that string.
TEST(TomlGuardTest, EveryCodePointIsAcceptedInStringsAndComments) {
  const char* contexts[] = {
      "a = \"@\"",
      "a = '@'",
      "a = \"\"\"@\"\"\"",
      "a = '''@'''",
      "a = \"\"\"x\n@\"\"\"",
      "\"k@\" = 1",
      "'k@' = 1",
      "# @\na = 1",
      "a = 1 # @",
      "[\"t@\"]\nb = 1",
      "a = {\"k@\" = 1}",
      "a = [\"@\"]",
      "a = \"\"\"@\"\"\"\"",
      "a = '''@'''''",
      "\357\273\277a = \"@\"",  // after a byte order mark
  };
  const std::vector<uint32_t> cps = CodePoints();
  for (const char* context : contexts) {
    size_t refused = 0;
    size_t failed = 0;
    for (uint32_t c : cps) {
      const std::string text = Fill(context, Utf8(c));
      if (CheckTomlText(text).has_value()) {
        ++refused;
      } else if (!TomlParses(text)) {
        ++failed;
      }
    }
    EXPECT_EQ(refused, 0u) << context;
    EXPECT_EQ(failed, 0u) << context;
  }
}

// Where TOML allows none (or toml++ 3.3.0 cannot take one), the guard refuses every one, so
// toml++ never sees them.
TEST(TomlGuardTest, EveryCodePointIsRefusedWhereTomlAllowsNone) {
  const char* contexts[] = {
      "@",
      "a = 1 @",
      "a@ = 1",
      "[a@]",
      "a = {@}",
      "a = [@]",
      "a = \"x\" @",
      "a = \"\\@\"",
      "a = \"\"\"\\@\"\"\"",
      "a = \"\"\"\\\n@\"\"\"",
      "a = \"\"\"\\\n\n\t @\"\"\"",
      "a = \"\"\"\\ @\"\"\"",
      "a = \"\"\"x\"\"\" @",
      "a = '''x''' @",
      "a.@ = 1",
  };
  const std::vector<uint32_t> cps = CodePoints();
  for (const char* context : contexts) {
    size_t accepted = 0;
    for (uint32_t c : cps) {
      // U+FEFF first in the file is a byte order mark, not a character.
      if (c == 0xFEFF && context[0] == '@') continue;
      if (!CheckTomlText(Fill(context, Utf8(c))).has_value()) ++accepted;
    }
    EXPECT_EQ(accepted, 0u) << context;
  }
}

TEST(TomlGuardTest, InvalidUtf8IsRefusedWherever) {
  const std::vector<std::string> bad = {
      "\xc0\xaf",          // overlong '/'
      "\xe0\x80\xaf",      // overlong, 3 bytes
      "\xed\xa0\x80",      // a surrogate
      "\xf4\x90\x80\x80",  // past U+10FFFF
      "\xc5",              // truncated
      "\x80",              // a lone continuation byte
      "\xff",
  };
  for (const std::string& b : bad) {
    for (const char* context : {"a = \"@\"", "# @", "a = '''@'''", "@"}) {
      auto p = CheckTomlText(Fill(context, b));
      ASSERT_TRUE(p.has_value()) << context;
      EXPECT_THAT(p->message, HasSubstr("invalid UTF-8")) << context;
    }
  }
}

// A dotted key of 200,000 parts exhausted toml++'s stack; arrays and inline tables nest 256
// deep before toml++ itself refuses, each level a table that may hold a dotted key.
TEST(TomlGuardTest, NestingIsBounded) {
  std::string key = "a";
  for (int i = 0; i < 200000; ++i) key += ".a";
  auto p = CheckTomlText("x = 1\n" + key + " = 1\n");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->line, 2);
  EXPECT_EQ(p->column, 2 * (kMaxTomlKeyDots + 1));
  EXPECT_THAT(p->message, HasSubstr("dotted parts"));
  EXPECT_TRUE(CheckTomlText("[" + key + "]").has_value());
  EXPECT_TRUE(CheckTomlText("a = {" + key + " = 1}").has_value());
  // Quoted parts count too.
  std::string quoted = "\"a\"";
  for (int i = 0; i < 100; ++i) quoted += ". 'b' .\"c\"";
  EXPECT_TRUE(CheckTomlText(quoted + " = 1").has_value());
  EXPECT_TRUE(CheckTomlText("a = " + std::string(40, '[') + std::string(40, ']')).has_value());
  EXPECT_TRUE(CheckTomlText("a = " + std::string(40, '{') + "}").has_value());
  // What real files hold is far inside the bounds, and numbers and dates are not keys.
  EXPECT_FALSE(CheckTomlText("[[space.region]]\na.b.c = 1.5e3\nd = 1979-05-27T07:32:00.999Z\n"
                             "e = [[1.0, 2.0], [3.0, 4.5]]\nf = {g.h = [0.1, 0.2]}\n")
                   .has_value());
  LoadResult r = ParseDeviceText(key + " = 1", "dev.toml", false);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_THAT(r.errors[0].ToString(), HasSubstr("dev.toml:1:"));
}

// A quote where no string can start is refused: toml++ reads on into what follows as bare
// characters (found by the fuzzer: a value run into a quote reached __builtin_unreachable).
TEST(TomlGuardTest, AQuoteWhereNoStringCanStartIsRefused) {
  const std::string cp = Utf8(0xE4);
  for (const char* bad :
       {"x =0\"@\"", "a = \"x\" \"@\"", "a = tru'@'", "ab\"@\" = 1", "a = [1 \"@\"]", "[a]\"@\""}) {
    auto p = CheckTomlText(Fill(bad, cp));
    ASSERT_TRUE(p.has_value()) << bad;
    EXPECT_THAT(p->message, HasSubstr("no string can start there")) << bad;
  }
  for (const char* good :
       {"a = \"@\"", "\"@\" = 1", "a.\"@\" = 1", "[\"@\"]", "[[ '@' ]]", "a = [\"@\",'x']",
        "a = {\"@\" = 1}", "a = [\n  \"@\",\n]", "a = \"x\"\r\nb = '@'"}) {
    EXPECT_FALSE(CheckTomlText(Fill(good, cp)).has_value()) << good;
  }
}

// A quote after a dot starts a quoted key part, but only in a key: in a value toml++ reads a
// float's "1." on into it (found by the fuzzer: `a = 1."\xc3\xa9"` in a device file reached
// __builtin_unreachable). Keys of inline tables, in arrays too, and table headers keep them.
TEST(TomlGuardTest, AQuoteAfterADotInAValueIsRefused) {
  const std::string cp = Utf8(0xE9);
  for (const char* bad : {"a = 1.\"@\"", "a = 1.'@'", "a = [1.\"@\"]", "a = 1.\"\"\"@\"\"\"",
                          "a = {b = 1.\"@\"}", "a = [{b = 1}, 2.'@']", "zame = 1.\"d@\\u"}) {
    auto p = CheckTomlText(Fill(bad, cp));
    ASSERT_TRUE(p.has_value()) << bad;
    EXPECT_THAT(p->message, HasSubstr("right after '.' in a value")) << bad;
  }
  for (const char* good :
       {"1.\"@\" = 1", "a.1.\"@\" = 1", "[1.\"@\"]", "[[a.'@']]", "a = {1.\"@\" = 1}",
        "a = [{b.\"@\" = 1}]", "a = {x = 1, b.'@' = 2}", "a = 1 # c\nb.\"@\" = 1",
        "a = [\n 1,\n]\nb.\"@\" = 2", "[t]\nb.\"@\" = 1"}) {
    EXPECT_FALSE(CheckTomlText(Fill(good, cp)).has_value()) << good;
  }
}

// Strings are found exactly: escaped quotes do not end them, and the quotes that may follow a
// multi-line string's closing delimiter are its own.
TEST(TomlGuardTest, StringsEndWhereTomlSaysTheyDo) {
  const std::string cp = Utf8(0x152);
  EXPECT_FALSE(CheckTomlText("a = \"x\\\"" + cp + "\"").has_value());
  EXPECT_FALSE(CheckTomlText("a = \"\\\\\"\nb = \"" + cp + "\"").has_value());
  EXPECT_TRUE(CheckTomlText("a = \"\\\\\" " + cp).has_value());
  EXPECT_TRUE(CheckTomlText("a = \"\"\"x\"\"\"\"\" " + cp).has_value());
  EXPECT_FALSE(CheckTomlText("a = \"\"\"x\"\"\"\"\"\nb = '" + cp + "'").has_value());
  EXPECT_TRUE(CheckTomlText("a = 'x\\' " + cp).has_value());  // no escapes in literal strings
  EXPECT_TRUE(CheckTomlText("a = \"x\n" + cp).has_value());   // a basic string ends at a newline
}

}  // namespace
}  // namespace iopfd
