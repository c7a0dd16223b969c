#include "server/service/auth.h"

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/store/metadata_store.h"
#include "server/util/sha256.h"
#include "server/util/status_macros.h"

namespace compress::service {

namespace {

constexpr size_t kMinTokenLength = 16;
constexpr absl::Duration kRecheckInterval = absl::Seconds(1);

bool IsTenantName(absl::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::Status Unauthenticated(absl::string_view why) {
  return absl::UnauthenticatedError(
      absl::StrCat(why, "; send \"authorization: Bearer <token>\" (compressctl --token)"));
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ParseTokenFile(const std::string& text) {
  std::map<std::string, std::string> tenants;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": expected \"TOKEN TENANT\", got ", fields.size(),
                       " fields"));
    }
    if (fields[0].size() < kMinTokenLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          "line ", line_no, ": token shorter than ", kMinTokenLength, " characters"));
    }
    if (!IsTenantName(fields[1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": tenant must match [A-Za-z0-9._-]{1,128}"));
    }
    // Keyed by digest: lookups then take the same time whatever the token's
    // bytes, and the map never holds a usable token.
    if (!tenants.emplace(Sha256Hex(fields[0]), std::string(fields[1])).second) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": repeated token"));
    }
  }
  return tenants;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const std::string& token_file) {
  std::unique_ptr<Authenticator> auth(new Authenticator(token_file));
  if (!auth->enabled()) return auth;
  absl::MutexLock lock(&auth->mu_);
  absl::Status s = auth->MaybeReloadLocked(/*force=*/true);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("--token_file ", token_file, ": ", s.message()));
  return auth;
}

absl::Status Authenticator::MaybeReloadLocked(bool force) {
  absl::Time now = absl::Now();
  if (!force && now - last_check_ < kRecheckInterval) return absl::OkStatus();
  last_check_ = now;
  struct stat st;
  if (stat(path_.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot stat ", path_));
  }
  if (!force && st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec &&
      st.st_size == size_) {
    return absl::OkStatus();
  }
  std::ifstream in(path_);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path_));
  std::stringstream text;
  text << in.rdbuf();
  // Remembered before parsing, so a broken file is reported once, not on
  // every check, until it changes again.
  mtime_ = st.st_mtim;
  size_ = st.st_size;
  ASSIGN_OR_RETURN(auto tenants, ParseTokenFile(text.str()));
  tenants_ = std::move(tenants);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Authenticator::TenantOf(const grpc::ServerContextBase& context) {
  if (!enabled()) return std::string(store::kDefaultTenant);
  auto it = context.client_metadata().find("authorization");
  if (it == context.client_metadata().end()) return Unauthenticated("no bearer token");
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ") && !absl::ConsumePrefix(&value, "bearer ")) {
    return Unauthenticated("authorization is not a bearer token");
  }
  std::string digest = Sha256Hex(absl::StripAsciiWhitespace(value));
  absl::MutexLock lock(&mu_);
  if (absl::Status s = MaybeReloadLocked(/*force=*/false); !s.ok()) {
    // Keep serving with the tokens read last; the operator sees why.
    fprintf(stderr, "compressd: --token_file %s: %s (keeping the previous tokens)\n",
            path_.c_str(), std::string(s.message()).c_str());
  }
  auto tenant = tenants_.find(digest);
  if (tenant == tenants_.end()) return Unauthenticated("unknown bearer token");
  return tenant->second;
}

}  // namespace compress::service
