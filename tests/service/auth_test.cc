// Authenticator: the token file's grammar and its errors, the tenant a
// bearer token maps to, the refusals, single-tenant mode, and re-reading the
// file when it changes. Token digests are SHA-256 values computed with
// Python's hashlib, not with the server's Sha256Hex.
#include "server/service/auth.h"

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/server_context.h"
#include "grpcpp/test/server_context_test_spouse.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace compress::service {
namespace {

using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::WaitFor;
using ::compress::testutil::WriteFile;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

constexpr char kAlpha[] = "tok-alpha-0123456789";
constexpr char kBeta[] = "tok-beta-0123456789x";
constexpr char kSixteen[] = "0123456789abcdef";  // the shortest allowed
// hashlib.sha256(token.encode()).hexdigest()
constexpr char kAlphaSha[] = "f3543a844d50b953745bc048f499d7626342c6f6208ed7f0795415eff7163072";
constexpr char kBetaSha[] = "4095b38c05340b2322444a07aef6cfe488897687fc30514c0e0a2195d8e98321";
constexpr char kSixteenSha[] = "9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f";

// A server context whose client sent `authorization: <value>` (or nothing).
class CallContext {
 public:
  CallContext() : spouse_(&context_) {}
  explicit CallContext(const std::string& authorization) : CallContext() {
    spouse_.AddClientMetadata("authorization", authorization);
  }
  const grpc::ServerContext& get() const { return context_; }

 private:
  grpc::ServerContext context_;
  grpc::testing::ServerContextTestSpouse spouse_;
};

std::string Bearer(const std::string& token) { return "Bearer " + token; }

// ---------------------------------------------------------- ParseTokenFile

TEST(ParseTokenFileTest, MapsTheDigestOfEachTokenToItsTenant) {
  const std::string text = absl::StrCat(
      "# compressd tokens\n"
      "\n",
      kAlpha, " team-a   # trailing comment\n", "\t", kBeta, "\tTeam_B.2\r\n",  // tabs and CRLF
      "   \n", kSixteen, " ", std::string(128, 'x'), "\n");
  absl::StatusOr<std::map<std::string, std::string>> tenants = ParseTokenFile(text);
  ASSERT_TRUE(tenants.ok()) << tenants.status();
  EXPECT_THAT(*tenants, UnorderedElementsAre(Pair(kAlphaSha, "team-a"), Pair(kBetaSha, "Team_B.2"),
                                             Pair(kSixteenSha, std::string(128, 'x'))));
  // The map never holds a usable token.
  for (const auto& [digest, tenant] : *tenants) {
    EXPECT_THAT(digest, Not(HasSubstr("tok-")));
  }
}

TEST(ParseTokenFileTest, EmptyAndCommentOnlyFilesHaveNoTokens) {
  for (const char* text : {"", "\n\n", "# nobody yet\n  # still nobody"}) {
    absl::StatusOr<std::map<std::string, std::string>> tenants = ParseTokenFile(text);
    ASSERT_TRUE(tenants.ok()) << tenants.status();
    EXPECT_TRUE(tenants->empty()) << text;
  }
}

TEST(ParseTokenFileTest, EachMalformedLineIsRefusedByNumber) {
  const std::string ok = absl::StrCat(kAlpha, " team-a\n");  // line 1
  struct Case {
    std::string bad_line;
    std::string message;
  };
  const std::vector<Case> cases = {
      {kBeta, "line 3: expected \"TOKEN TENANT\", got 1 fields"},
      {absl::StrCat(kBeta, " team b"), "line 3: expected \"TOKEN TENANT\", got 3 fields"},
      {"0123456789abcde team-b", "line 3: token shorter than 16 characters"},
      {absl::StrCat(kBeta, " team/b"), "line 3: tenant must match [A-Za-z0-9._-]{1,128}"},
      {absl::StrCat(kBeta, " ", std::string(129, 'x')), "line 3: tenant must match"},
      {absl::StrCat(kAlpha, " team-c"), "line 3: repeated token"},
      // '#' starts a comment even inside a token: what is left is too short.
      {"0123456789#abcdefgh team-b", "line 3: expected \"TOKEN TENANT\", got 1 fields"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::map<std::string, std::string>> tenants =
        ParseTokenFile(absl::StrCat(ok, "# a comment counts as a line\n", c.bad_line, "\n"));
    EXPECT_EQ(tenants.status().code(), absl::StatusCode::kInvalidArgument) << c.bad_line;
    EXPECT_THAT(tenants.status().message(), HasSubstr(c.message)) << c.bad_line;
    // The message names the line, never the token.
    EXPECT_THAT(tenants.status().message(), Not(HasSubstr("tok-"))) << c.bad_line;
  }
}

// ----------------------------------------------------------- Authenticator

TEST(AuthenticatorTest, WithoutATokenFileEveryCallIsTheDefaultTenant) {
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create("");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_FALSE((*auth)->enabled());
  for (const CallContext& call :
       {CallContext(), CallContext(Bearer(kAlpha)), CallContext("Basic dXNlcjpwYXNz")}) {
    absl::StatusOr<std::string> tenant = (*auth)->TenantOf(call.get());
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    EXPECT_EQ(*tenant, "default");
  }
}

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    path_ = dir_.path() + "/tokens";
  }

  std::unique_ptr<Authenticator> MustCreate(const std::string& text) {
    WriteFile(path_, text);
    absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(path_);
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }

  ScopedTempDir dir_;
  std::string path_;
};

TEST_F(TokenFileTest, EachTokenActsForItsTenant) {
  auto auth = MustCreate(absl::StrCat(kAlpha, " team-a\n", kBeta, " team-b\n"));
  ASSERT_NE(auth, nullptr);
  EXPECT_TRUE(auth->enabled());
  EXPECT_EQ(auth->TenantOf(CallContext(Bearer(kAlpha)).get()).value_or("?"), "team-a");
  EXPECT_EQ(auth->TenantOf(CallContext(Bearer(kBeta)).get()).value_or("?"), "team-b");
  // The scheme in lower case, and whitespace after the token, are accepted.
  EXPECT_EQ(auth->TenantOf(CallContext(absl::StrCat("bearer ", kAlpha)).get()).value_or("?"),
            "team-a");
  EXPECT_EQ(auth->TenantOf(CallContext(absl::StrCat("Bearer ", kBeta, "  ")).get()).value_or("?"),
            "team-b");
}

TEST_F(TokenFileTest, CallsWithoutAKnownBearerTokenAreUnauthenticated) {
  auto auth = MustCreate(absl::StrCat(kAlpha, " team-a\n"));
  ASSERT_NE(auth, nullptr);
  struct Case {
    std::string name;
    CallContext call;
    std::string message;
  };
  const std::string unknown = "tok-unknown-0123456789";
  Case cases[] = {
      {"no metadata", CallContext(), "no bearer token"},
      {"basic auth", CallContext("Basic dXNlcjpwYXNz"), "authorization is not a bearer token"},
      {"bare token", CallContext(kAlpha), "authorization is not a bearer token"},
      {"unknown token", CallContext(Bearer(unknown)), "unknown bearer token"},
      {"a prefix of a token", CallContext(Bearer(std::string(kAlpha).substr(0, 19))),
       "unknown bearer token"},
      {"empty token", CallContext("Bearer "), "unknown bearer token"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::string> tenant = auth->TenantOf(c.call.get());
    EXPECT_EQ(tenant.status().code(), absl::StatusCode::kUnauthenticated) << c.name;
    EXPECT_THAT(tenant.status().message(), HasSubstr(c.message)) << c.name;
    // Says how to authenticate, and never echoes what was sent.
    EXPECT_THAT(tenant.status().message(), HasSubstr("authorization: Bearer <token>")) << c.name;
    EXPECT_THAT(tenant.status().message(), Not(HasSubstr("tok-"))) << c.name;
  }
}

TEST_F(TokenFileTest, AMissingOrMalformedFileFailsCreateNamingIt) {
  absl::StatusOr<std::unique_ptr<Authenticator>> missing =
      Authenticator::Create(dir_.path() + "/absent");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("--token_file " + dir_.path() + "/absent"));

  WriteFile(path_, absl::StrCat(kAlpha, " team-a\nshort team-b\n"));
  absl::StatusOr<std::unique_ptr<Authenticator>> bad = Authenticator::Create(path_);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("--token_file " + path_));
  EXPECT_THAT(bad.status().message(), HasSubstr("line 2: token shorter than 16 characters"));
}

// Tokens are added and revoked by editing the file; a file that stops
// parsing, or disappears, keeps the last good tokens in force. The file is
// checked at most once a second, so the test waits (bounded) for a change to
// show, and waits out that second where nothing can show.
TEST_F(TokenFileTest, EditsTakeEffectAndABrokenFileKeepsTheLastGoodTokens) {
  auto auth = MustCreate(absl::StrCat(kAlpha, " team-a\n"));
  ASSERT_NE(auth, nullptr);
  const CallContext alpha(Bearer(kAlpha)), beta(Bearer(kBeta));
  ASSERT_TRUE(auth->TenantOf(alpha.get()).ok());

  // Revoke alpha, add beta.
  WriteFile(path_, absl::StrCat("# rotated\n", kBeta, " team-b\n"));
  ASSERT_TRUE(WaitFor([&] { return auth->TenantOf(beta.get()).ok(); }, absl::Seconds(10)));
  EXPECT_EQ(auth->TenantOf(beta.get()).value_or("?"), "team-b");
  EXPECT_EQ(auth->TenantOf(alpha.get()).status().code(), absl::StatusCode::kUnauthenticated);

  // A broken edit: beta stays, and the broken line's token is not let in.
  WriteFile(path_, absl::StrCat(kAlpha, " team-a\n", kBeta, " team b\n"));
  absl::SleepFor(absl::Milliseconds(1100));  // past the once-a-second check
  EXPECT_EQ(auth->TenantOf(beta.get()).value_or("?"), "team-b");
  EXPECT_EQ(auth->TenantOf(alpha.get()).status().code(), absl::StatusCode::kUnauthenticated);

  // The file gone: the same.
  std::filesystem::remove(path_);
  absl::SleepFor(absl::Milliseconds(1100));
  EXPECT_EQ(auth->TenantOf(beta.get()).value_or("?"), "team-b");

  // And a good file again is read again.
  WriteFile(path_, absl::StrCat(kAlpha, " team-a2\n"));
  ASSERT_TRUE(WaitFor([&] { return auth->TenantOf(alpha.get()).ok(); }, absl::Seconds(10)));
  EXPECT_EQ(auth->TenantOf(alpha.get()).value_or("?"), "team-a2");
  EXPECT_EQ(auth->TenantOf(beta.get()).status().code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace compress::service
