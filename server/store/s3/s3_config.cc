#include "server/store/s3/s3_config.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace compress::store {
namespace {

// S3's rules for bucket names (the ones path-style addressing relies on).
bool IsValidBucket(absl::string_view b) {
  if (b.size() < 3 || b.size() > 63) return false;
  for (char c : b) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-' || c == '.')) return false;
  }
  auto alnum = [](char c) { return absl::ascii_islower(c) || absl::ascii_isdigit(c); };
  return alnum(b.front()) && alnum(b.back()) && !absl::StrContains(b, "..");
}

}  // namespace

absl::Status ParseS3Url(absl::string_view url, S3Config* config) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "s3://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob store URL must look like s3://bucket/prefix, got \"", url, "\""));
  }
  absl::string_view bucket = rest.substr(0, rest.find('/'));
  absl::string_view prefix =
      bucket.size() < rest.size() ? rest.substr(bucket.size() + 1) : absl::string_view();
  if (!IsValidBucket(bucket)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", bucket, "\" is not an S3 bucket name (3-63 of a-z 0-9 . -, starting and ending ",
        "with a letter or digit)"));
  }
  absl::ConsumeSuffix(&prefix, "/");
  if (!prefix.empty()) {
    for (absl::string_view segment : absl::StrSplit(prefix, '/')) {
      if (segment.empty() || segment == "." || segment == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat("S3 prefix \"", prefix, "\" has an empty, \".\" or \"..\" segment"));
      }
      for (char c : segment) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          return absl::InvalidArgumentError("S3 prefix has a control character");
        }
      }
    }
  }
  config->bucket = std::string(bucket);
  config->prefix = prefix.empty() ? "" : absl::StrCat(prefix, "/");
  return absl::OkStatus();
}

absl::Status ValidateS3Config(const S3Config& config) {
  absl::string_view host = config.endpoint;
  if (!absl::ConsumePrefix(&host, "http://") && !absl::ConsumePrefix(&host, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 endpoint must be http://host[:port] or https://host[:port], got \"",
                     config.endpoint, "\""));
  }
  if (host.empty() || host.find_first_of("/?#@ \t\r\n") != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("S3 endpoint \"", config.endpoint,
                                                   "\" must name only a host and port (no path, ",
                                                   "query or user)"));
  }
  if (!IsValidBucket(config.bucket)) {
    return absl::InvalidArgumentError(absl::StrCat("bad S3 bucket \"", config.bucket, "\""));
  }
  if (!config.prefix.empty() && !absl::EndsWith(config.prefix, "/")) {
    return absl::InvalidArgumentError("S3 prefix must be empty or end in '/'");
  }
  if (config.region.empty() || config.region.find_first_of(": /") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad S3 region \"", config.region, "\""));
  }
  if (config.access_key_id.empty() || config.secret_access_key.empty()) {
    return absl::InvalidArgumentError(
        "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  }
  for (const std::string* s :
       {&config.access_key_id, &config.secret_access_key, &config.session_token}) {
    if (s->find_first_of("\r\n") != std::string::npos) {
      return absl::InvalidArgumentError("S3 credentials contain a line break");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<S3Config> S3ConfigFromEnvironment(
    absl::string_view url, const std::function<const char*(const char*)>& getenv) {
  auto get = [&](const char* name) -> std::string {
    const char* v = getenv ? getenv(name) : std::getenv(name);
    return v == nullptr ? "" : std::string(absl::StripAsciiWhitespace(v));
  };
  S3Config config;
  absl::Status parsed = ParseS3Url(url, &config);
  if (!parsed.ok()) return parsed;
  config.access_key_id = get("AWS_ACCESS_KEY_ID");
  config.secret_access_key = get("AWS_SECRET_ACCESS_KEY");
  config.session_token = get("AWS_SESSION_TOKEN");
  std::string region = get("AWS_REGION");
  if (region.empty()) region = get("AWS_DEFAULT_REGION");
  if (!region.empty()) config.region = region;
  config.endpoint = get("COMPRESSD_S3_ENDPOINT");
  while (absl::EndsWith(config.endpoint, "/")) config.endpoint.pop_back();
  if (config.endpoint.empty()) {
    config.endpoint = absl::StrCat("https://s3.", config.region, ".amazonaws.com");
  }
  absl::Status valid = ValidateS3Config(config);
  if (!valid.ok()) return valid;
  return config;
}

}  // namespace compress::store
