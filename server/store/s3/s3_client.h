// S3Client: the object operations of an S3-compatible server over libcurl,
// signed with AWS Signature Version 4 (CURLOPT_AWS_SIGV4, "aws:amz:REGION:s3").
//
// Bodies stream in both directions: an upload reads its file a buffer at a
// time (never the whole object in memory), a download hands each received
// buffer to a sink. Objects larger than `multipart_threshold` go up as a
// multipart upload. Every request carries `x-amz-content-sha256` with the hex
// SHA-256 of its payload, which libcurl signs: callers that know the digest
// of a file pass it, otherwise the client reads the file (or the part) once
// to hash it before sending. UNSIGNED-PAYLOAD is never used.
//
// libcurl 7.88 signs the query string as written and the path as written, so
// the client writes both in SigV4 canonical form itself (keys URI-encoded
// per segment, query parameters sorted and encoded, "uploads=" with its
// '='); tests/store/s3_client_test.cc recomputes each signature
// independently.
//
// Errors: HTTP 404 NOT_FOUND, 403 PERMISSION_DENIED, 400 INVALID_ARGUMENT,
// 409/412 FAILED_PRECONDITION, 416 OUT_OF_RANGE, 405/501 UNIMPLEMENTED,
// 429, 5xx and connection failures UNAVAILABLE; the message names the
// operation, the object, and the S3 error code and message from the body.
//
// Thread-safe: concurrent calls each take a curl handle from a small pool
// (handles keep their connections alive between requests).
//
//   ASSIGN_OR_RETURN(auto client, S3Client::Create(options));
//   RETURN_IF_ERROR(client->PutObjectFromFile("models/a.pt", "/tmp/a.pt").status());
//   RETURN_IF_ERROR(client->GetObjectToFile("models/a.pt", "/tmp/copy.pt"));
#ifndef COMPRESS_STORE_S3_S3_CLIENT_H_
#define COMPRESS_STORE_S3_S3_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/s3/s3_config.h"

namespace compress::store {

struct S3ClientOptions {
  S3Config config;
  // Objects larger than this many bytes are uploaded in parts. Default 5 GiB,
  // the most S3 accepts in one PUT; at most that.
  int64_t multipart_threshold = int64_t{5} << 30;
  // Bytes per part of a multipart upload (the last part may be smaller).
  // Default 64 MiB; at least 5 MiB (S3's minimum), raised when an object
  // would need more than 10,000 parts.
  int64_t part_size = int64_t{64} << 20;
  // Limit on establishing a connection. Default 10 s.
  absl::Duration connect_timeout = absl::Seconds(10);
  // A transfer slower than 1 KiB/s for this long is abandoned (UNAVAILABLE).
  // Default 60 s.
  absl::Duration stall_timeout = absl::Seconds(60);
};

// A half-open byte range of an object: `length` bytes from `offset`, or to
// the end when `length` is -1.
struct S3ByteRange {
  int64_t offset = 0;
  int64_t length = -1;
};

struct S3ObjectInfo {
  std::string key;
  int64_t size = 0;
  absl::Time last_modified;
  std::string etag;  // as the server sent it, quotes removed
};

struct S3ListPage {
  std::vector<S3ObjectInfo> objects;
  // Empty on the last page.
  std::string next_continuation_token;
};

struct S3PutResult {
  std::string etag;
  // 0 for a single PUT, else the number of parts uploaded.
  int parts = 0;
};

struct S3CompletedPart {
  int number = 0;
  std::string etag;
};

class S3Client {
 public:
  // Receives the body of a download a buffer at a time; a non-OK status
  // stops the transfer and becomes the answer.
  using ByteSink = std::function<absl::Status(absl::string_view)>;
  // Called once per listed object; a non-OK status stops the listing.
  using ObjectVisitor = std::function<absl::Status(const S3ObjectInfo&)>;

  // INVALID_ARGUMENT for a bad config or part sizes.
  static absl::StatusOr<std::unique_ptr<S3Client>> Create(const S3ClientOptions& options);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  const S3ClientOptions& options() const { return options_; }

  // PUT bucket (tests and first-time setup). ALREADY_EXISTS when it exists.
  absl::Status CreateBucket();

  // Uploads the file at `path` as `key`: one PUT up to multipart_threshold,
  // a multipart upload above it (aborted again on failure). `sha256_hex`,
  // when given, must be the digest of the file and saves a pass over it.
  absl::StatusOr<S3PutResult> PutObjectFromFile(absl::string_view key, const std::string& path,
                                                absl::string_view sha256_hex = "");
  // Uploads `bytes` in one PUT (small objects).
  absl::StatusOr<S3PutResult> PutObject(absl::string_view key, absl::string_view bytes);

  // Streams the object (or `range` of it) to `sink`. OUT_OF_RANGE when the
  // range starts past the end.
  absl::Status GetObject(absl::string_view key, const ByteSink& sink,
                         std::optional<S3ByteRange> range = std::nullopt);
  // Streams the object (or a range) into `path`, created or truncated.
  absl::Status GetObjectToFile(absl::string_view key, const std::string& path,
                               std::optional<S3ByteRange> range = std::nullopt);

  // Size, modification time (whole seconds) and ETag; NOT_FOUND when absent.
  absl::StatusOr<S3ObjectInfo> HeadObject(absl::string_view key);
  // OK when the object was absent too (S3 semantics).
  absl::Status DeleteObject(absl::string_view key);

  // One page of ListObjectsV2 under `prefix` (at most `max_keys`, which S3
  // caps at 1000), starting after `continuation_token` when non-empty.
  absl::StatusOr<S3ListPage> ListObjectsPage(absl::string_view prefix,
                                             absl::string_view continuation_token = "",
                                             int max_keys = 1000);
  // Every object under `prefix`, following continuation tokens.
  absl::Status ListObjects(absl::string_view prefix, const ObjectVisitor& visit,
                           int page_size = 1000);

  // Multipart upload, step by step (PutObjectFromFile drives these).
  absl::StatusOr<std::string> CreateMultipartUpload(absl::string_view key);
  // Uploads `length` bytes of `path` from `offset` as part `part_number`
  // (1..10000); returns the part's ETag.
  absl::StatusOr<std::string> UploadPart(absl::string_view key, absl::string_view upload_id,
                                         int part_number, const std::string& path, int64_t offset,
                                         int64_t length);
  absl::StatusOr<S3PutResult> CompleteMultipartUpload(absl::string_view key,
                                                      absl::string_view upload_id,
                                                      const std::vector<S3CompletedPart>& parts);
  absl::Status AbortMultipartUpload(absl::string_view key, absl::string_view upload_id);

  // The part size used for an object of `size` bytes: options().part_size,
  // raised to a whole MiB that keeps the count within 10,000 parts.
  int64_t PartSizeFor(int64_t size) const;

  // "<endpoint>/<bucket>/<key>" with the key URI-encoded as SigV4 expects
  // (every byte but A-Z a-z 0-9 - _ . ~ and '/' as %XX).
  std::string ObjectUrl(absl::string_view key) const;

 private:
  struct Request;
  struct Response;
  class Handle;

  explicit S3Client(S3ClientOptions options);

  // Performs one request; non-2xx answers become errors as described above.
  absl::StatusOr<Response> Perform(Request& request);
  std::unique_ptr<Handle> Acquire() ABSL_LOCKS_EXCLUDED(mu_);
  void Release(std::unique_ptr<Handle> handle) ABSL_LOCKS_EXCLUDED(mu_);

  const S3ClientOptions options_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Handle>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_S3_S3_CLIENT_H_
