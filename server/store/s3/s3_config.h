// S3Config: where an S3-compatible blob store lives and how to sign for it.
//
// The location is a URL, `s3://bucket/prefix`; the rest comes from the
// environment, as the AWS tools read it:
//   AWS_ACCESS_KEY_ID      access key id (required)
//   AWS_SECRET_ACCESS_KEY  secret access key (required)
//   AWS_SESSION_TOKEN      temporary-credential token (optional; sent as
//                          x-amz-security-token)
//   AWS_REGION             signing region (else AWS_DEFAULT_REGION, else
//                          us-east-1)
//   COMPRESSD_S3_ENDPOINT  http(s)://host[:port] of the server (default
//                          https://s3.<region>.amazonaws.com); MinIO, Ceph or
//                          a test server on 127.0.0.1 go here.
// Requests use path-style addressing (<endpoint>/<bucket>/<key>), which every
// S3-compatible server and AWS itself accept.
//
//   ASSIGN_OR_RETURN(S3Config config, S3ConfigFromEnvironment("s3://models/prod"));
#ifndef COMPRESS_STORE_S3_S3_CONFIG_H_
#define COMPRESS_STORE_S3_S3_CONFIG_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace compress::store {

struct S3Config {
  // scheme://host[:port], no trailing slash, e.g. "http://127.0.0.1:9000".
  std::string endpoint;
  std::string region = "us-east-1";
  std::string bucket;
  // Key prefix of everything this store writes: "" or ending in '/'.
  std::string prefix;
  std::string access_key_id;
  std::string secret_access_key;
  // Empty unless the credentials are temporary (STS).
  std::string session_token;
};

// Splits "s3://bucket[/prefix]" into bucket and prefix (normalised to end in
// '/'). INVALID_ARGUMENT names what is wrong: another scheme, a bucket name S3
// would refuse, a prefix with "//" or a "." / ".." segment.
absl::Status ParseS3Url(absl::string_view url, S3Config* config);

// Checks a complete config (endpoint form, bucket, credentials present).
absl::Status ValidateS3Config(const S3Config& config);

// Reads the variables listed above through `getenv` (a stand-in in tests).
absl::StatusOr<S3Config> S3ConfigFromEnvironment(
    absl::string_view url, const std::function<const char*(const char*)>& getenv = nullptr);

}  // namespace compress::store

#endif  // COMPRESS_STORE_S3_S3_CONFIG_H_
