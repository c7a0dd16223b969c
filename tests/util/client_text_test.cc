// QuoteClientText and EscapeControl: control characters and non-UTF-8
// bytes escaped, long strings cut to a bounded prefix with their length.
#include "server/util/client_text.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress {
namespace {

using ::testing::EndsWith;
using ::testing::StartsWith;

TEST(ClientTextTest, OrdinaryTextIsUnchanged) {
  const std::string sha(64, 'a');
  EXPECT_EQ(QuoteClientText(sha), sha);  // a sha256 id is repeated whole
  EXPECT_EQ(QuoteClientText("builtin:fashion-mnist/test"), "builtin:fashion-mnist/test");
  EXPECT_EQ(EscapeControl("C:\\models\\r\u00e9seau \u4e2d.pt"),
            "C:\\models\\r\u00e9seau \u4e2d.pt");
  EXPECT_EQ(QuoteClientText(""), "");
}

TEST(ClientTextTest, ControlCharactersAreEscaped) {
  EXPECT_EQ(EscapeControl("a\nb\rc\td"), "a\\nb\\rc\\td");
  EXPECT_EQ(EscapeControl("\x1b[2Jx"), "\\x1b[2Jx");
  EXPECT_EQ(EscapeControl(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(EscapeControl("\x7f"), "\\x7f");
  // U+009B (CSI in C1) encoded as UTF-8 is C2 9B; U+00A0 is printable.
  EXPECT_EQ(EscapeControl("\xc2\x9b" "31m"), "\\u009b31m");
  EXPECT_EQ(EscapeControl("\xc2\xa0"), "\xc2\xa0");
}

TEST(ClientTextTest, InvalidUtf8IsEscapedBytewise) {
  EXPECT_EQ(EscapeControl("a\xff" "b"), "a\\xffb");
  EXPECT_EQ(EscapeControl("\xc3"), "\\xc3");               // truncated sequence
  EXPECT_EQ(EscapeControl("\xc0\xaf"), "\\xc0\\xaf");      // overlong '/'
  EXPECT_EQ(EscapeControl("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // surrogate D800
  EXPECT_EQ(EscapeControl("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // > U+10FFFF
  EXPECT_EQ(EscapeControl("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");  // U+1F600 is fine
}

TEST(ClientTextTest, ValidUtf8PrefixFindsTheFirstBadByte) {
  EXPECT_TRUE(IsValidUtf8("plain \u00e9\u4e2d\xf0\x9f\x98\x80"));
  EXPECT_EQ(ValidUtf8Prefix("ab\xffzz"), 2u);
  EXPECT_EQ(ValidUtf8Prefix("\u00e9\xe4\xb8"), 2u);  // é, then a cut 3-byte sequence
  EXPECT_FALSE(IsValidUtf8("\x80"));
}

TEST(ClientTextTest, LongTextIsCutWithItsLength) {
  const std::string id(1 << 20, 'x');
  const std::string quoted = QuoteClientText(id);
  EXPECT_EQ(quoted, std::string(64, 'x') + "...(1048576 bytes)");
  EXPECT_EQ(QuoteClientText(std::string(65, 'y')), std::string(64, 'y') + "...(65 bytes)");
  EXPECT_EQ(QuoteClientText("abcdef", 3), "abc...(6 bytes)");
}

TEST(ClientTextTest, TheCutNeverSplitsACharacter) {
  // 63 ASCII bytes, then a 3-byte character across the 64-byte mark.
  const std::string text = std::string(63, 'a') + "\u4e2d" + "tail";
  const std::string quoted = QuoteClientText(text);
  EXPECT_EQ(quoted, std::string(63, 'a') + "...(70 bytes)");
}

TEST(ClientTextTest, EscapesInAPrefixAreBoundedToo) {
  // Every byte a control: the prefix is 64 bytes of input, 4 bytes each out.
  const std::string hostile(4096, '\x1b');
  const std::string quoted = QuoteClientText(hostile);
  EXPECT_THAT(quoted, StartsWith("\\x1b\\x1b"));
  EXPECT_THAT(quoted, EndsWith("...(4096 bytes)"));
  EXPECT_EQ(quoted.size(), 64 * 4 + std::string("...(4096 bytes)").size());
}

}  // namespace
}  // namespace compress
