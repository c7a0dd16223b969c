// The command-line parser, command resolution and value parsers.
#include "client/args.h"

#include <string>
#include <vector>

#include "client/cli.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

const std::vector<FlagDef>& TestFlags() {
  static const auto* flags = new std::vector<FlagDef>{
      {"server", 0, true, "ADDR", ""},
      {"json", 0, false, "", ""},
      {"name", 0, true, "N", ""},
      {"output", 'o', true, "DIR", ""},
  };
  return *flags;
}

TEST(ParseArgsTest, SeparatesPositionalsAndFlags) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(
      {"--server", "h:1", "model", "upload", "a.pt", "--name=resnet", "--json"},
      TestFlags());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(parsed->positional, ElementsAre("model", "upload", "a.pt"));
  EXPECT_THAT(parsed->flags,
              UnorderedElementsAre(Pair("server", "h:1"),
                                   Pair("name", "resnet"), Pair("json", "")));
  EXPECT_TRUE(parsed->Has("json"));
  EXPECT_EQ(parsed->Get("missing", "dflt"), "dflt");
}

TEST(ParseArgsTest, ShortFlagsDashDashAndStdin) {
  absl::StatusOr<ParsedArgs> parsed =
      ParseArgs({"get", "-o", "out", "-", "--", "--json", "-x"}, TestFlags());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(parsed->positional, ElementsAre("get", "-", "--json", "-x"));
  EXPECT_EQ(parsed->Get("output"), "out");
  EXPECT_FALSE(parsed->Has("json"));
}

TEST(ParseArgsTest, LastOccurrenceWinsAndEmptyValuesAreKept) {
  absl::StatusOr<ParsedArgs> parsed =
      ParseArgs({"--name", "a", "--name=", "x"}, TestFlags());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->Get("name", "unset"), "");
}

TEST(ParseArgsTest, Errors) {
  EXPECT_THAT(ParseArgs({"--bogus"}, TestFlags()).status().message(),
              HasSubstr("unknown flag --bogus"));
  EXPECT_THAT(ParseArgs({"--bogus=1"}, TestFlags()).status().message(),
              HasSubstr("unknown flag --bogus"));
  EXPECT_THAT(ParseArgs({"-z"}, TestFlags()).status().message(),
              HasSubstr("unknown flag -z"));
  EXPECT_THAT(ParseArgs({"x", "--name"}, TestFlags()).status().message(),
              HasSubstr("needs a value"));
  EXPECT_THAT(ParseArgs({"--json=true"}, TestFlags()).status().message(),
              HasSubstr("takes no value"));
}

// --- The real command table
// ----------------------------------------------------

TEST(ParseCommandLineTest, ResolvesLongestCommandAndArguments) {
  absl::StatusOr<Invocation> inv = ParseCommandLine(
      {"artifact", "get", "J", "report.json", "-o", "out", "--json"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command->Name(), "artifact get");
  EXPECT_THAT(inv->args, ElementsAre("J", "report.json"));
  EXPECT_EQ(inv->Get("output"), "out");
  EXPECT_TRUE(inv->Has("json"));
}

TEST(ParseCommandLineTest, GlobalFlagsGoAnywhere) {
  absl::StatusOr<Invocation> inv = ParseCommandLine(
      {"--server", "s:1", "inspect", "--model", "M", "--input-shape",
       "1,3,32,32", "--watch", "--timeout", "5"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command->Name(), "inspect");
  EXPECT_TRUE(inv->args.empty());
  EXPECT_EQ(inv->Get("server"), "s:1");
  EXPECT_EQ(inv->Get("input-shape"), "1,3,32,32");
}

TEST(ParseCommandLineTest, UsageErrors) {
  EXPECT_THAT(ParseCommandLine({}).status().message(),
              HasSubstr("missing command"));
  EXPECT_THAT(ParseCommandLine({"frobnicate"}).status().message(),
              HasSubstr("unknown command 'frobnicate'"));
  EXPECT_THAT(ParseCommandLine({"model", "frob"}).status().message(),
              HasSubstr("unknown command 'model frob'"));
  EXPECT_THAT(ParseCommandLine({"model"}).status().message(),
              HasSubstr("needs a subcommand"));
  EXPECT_THAT(ParseCommandLine({"model", "get"}).status().message(),
              HasSubstr("needs ID"));
  EXPECT_THAT(ParseCommandLine({"model", "get", "a", "b"}).status().message(),
              HasSubstr("too many arguments"));
  EXPECT_THAT(
      ParseCommandLine({"model", "get", "a", "--watch"}).status().message(),
      HasSubstr("--watch does not apply to 'model get'"));
  EXPECT_THAT(ParseCommandLine({"job", "list", "--bogus"}).status().message(),
              HasSubstr("unknown flag --bogus"));
}

TEST(ParseCommandLineTest, EveryCommandIsInTheUsageText) {
  const std::string usage = UsageText();
  for (const CommandDef& c : Commands()) {
    EXPECT_THAT(usage, HasSubstr("  " + c.Name())) << c.Name();
    for (const std::string& flag : c.flags) {
      bool defined = false;
      for (const FlagDef& f : Flags()) defined |= f.name == flag;
      EXPECT_TRUE(defined) << c.Name() << " --" << flag;
    }
  }
}

// --- Values
// --------------------------------------------------------------------

TEST(ParseShapeTest, ParsesPositiveDims) {
  absl::StatusOr<std::vector<int64_t>> shape = ParseShape("1,1,28,28");
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_THAT(*shape, ElementsAre(1, 1, 28, 28));
  EXPECT_THAT(*ParseShape(" 8 , 3 "), ElementsAre(8, 3));
  EXPECT_THAT(*ParseShape("1024"), ElementsAre(1024));
}

TEST(ParseShapeTest, RejectsBadShapes) {
  for (const char* bad : {"", " ", "1,,2", "1,0", "1,-3", "1,2,", "a,b",
                          "1.5,2", "1x28x28", "99999999999999999999"}) {
    EXPECT_FALSE(ParseShape(bad).ok()) << "'" << bad << "'";
  }
  EXPECT_THAT(ParseShape("1,x").status().message(), HasSubstr("dimension 'x'"));
}

TEST(ParseNumbersTest, SecondsAndIntegers) {
  EXPECT_DOUBLE_EQ(*ParseSeconds("2.5"), 2.5);
  EXPECT_DOUBLE_EQ(*ParseSeconds("30"), 30);
  EXPECT_FALSE(ParseSeconds("-1").ok());
  EXPECT_FALSE(ParseSeconds("soon").ok());
  EXPECT_FALSE(ParseSeconds("inf").ok());
  EXPECT_EQ(*ParseNonNegativeInt("0"), 0);
  EXPECT_FALSE(ParseNonNegativeInt("-2").ok());
  EXPECT_EQ(*ParseUint64("18446744073709551615"), UINT64_MAX);
  EXPECT_FALSE(ParseUint64("-1").ok());
  EXPECT_FALSE(ParseUint64("12abc").ok());
}

}  // namespace
}  // namespace compress::client
