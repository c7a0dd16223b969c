#include "server/store/s3/s3_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/base/call_once.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "server/store/s3/s3_xml.h"
#include "server/util/sha256.h"
#include "server/util/status_macros.h"

namespace compress::store {
namespace {

constexpr char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kMinPartSize = 5 * kMiB;
constexpr int64_t kMaxSinglePut = int64_t{5} << 30;
constexpr int64_t kMaxObjectSize = int64_t{5} << 40;
constexpr int kMaxParts = 10000;
// An error body is a few hundred bytes; a 1000-key listing a few hundred KiB.
constexpr size_t kMaxErrorBody = 64 << 10;
constexpr size_t kMaxXmlBody = 16 << 20;
constexpr long kIoBufferSize = 256 << 10;
constexpr size_t kIdleHandles = 8;

void GlobalInitOnce() {
  static absl::once_flag once;
  absl::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// SigV4's URI encoding: unreserved characters stay, everything else is %XX
// (upper-case hex); '/' stays in paths.
std::string UriEncode(absl::string_view s, bool keep_slash) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(ch);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

std::string StripQuotes(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), '"'), s.end());
  return s;
}

// S3 answers some failures of CompleteMultipartUpload with 200 and an <Error>.
absl::StatusCode CodeForS3Error(absl::string_view code) {
  if (code == "InternalError" || code == "SlowDown" || code == "ServiceUnavailable") {
    return absl::StatusCode::kUnavailable;
  }
  if (code == "NoSuchUpload" || code == "NoSuchKey" || code == "NoSuchBucket") {
    return absl::StatusCode::kNotFound;
  }
  return absl::StatusCode::kInternal;
}

absl::StatusCode CodeForHttp(long status) {
  switch (status) {
    case 400:
      return absl::StatusCode::kInvalidArgument;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kNotFound;
    case 405:
    case 501:
      return absl::StatusCode::kUnimplemented;
    case 409:
    case 412:
      return absl::StatusCode::kFailedPrecondition;
    case 416:
      return absl::StatusCode::kOutOfRange;
    case 429:
      return absl::StatusCode::kUnavailable;
    default:
      break;
  }
  if (status >= 500) return absl::StatusCode::kUnavailable;
  return absl::StatusCode::kUnknown;
}

// Where an upload body comes from: a slice of an open file, or memory.
struct UploadSource {
  int fd = -1;
  absl::string_view memory;
  int64_t offset = 0;
  int64_t length = 0;
  int64_t sent = 0;
  absl::Status error;
};

size_t ReadBody(char* buffer, size_t size, size_t nitems, void* userdata) {
  auto* src = static_cast<UploadSource*>(userdata);
  size_t want = static_cast<size_t>(
      std::min<int64_t>(static_cast<int64_t>(size * nitems), src->length - src->sent));
  if (want == 0) return 0;
  if (src->fd < 0) {
    memcpy(buffer, src->memory.data() + src->sent, want);
    src->sent += static_cast<int64_t>(want);
    return want;
  }
  ssize_t n = pread(src->fd, buffer, want, src->offset + src->sent);
  if (n < 0 && errno == EINTR) n = pread(src->fd, buffer, want, src->offset + src->sent);
  if (n < 0) {
    src->error = ErrnoStatus("read upload body");
    return CURL_READFUNC_ABORT;
  }
  if (n == 0) {  // the file shrank under us: never send a short object
    src->error = absl::DataLossError("upload source file is shorter than when the upload began");
    return CURL_READFUNC_ABORT;
  }
  src->sent += n;
  return static_cast<size_t>(n);
}

// curl rewinds a body when it must resend it (a reused connection that the
// server had closed, a 100-continue refused and retried).
int SeekBody(void* userdata, curl_off_t offset, int origin) {
  auto* src = static_cast<UploadSource*>(userdata);
  if (origin != SEEK_SET || offset < 0 || offset > src->length) return CURL_SEEKFUNC_FAIL;
  src->sent = offset;
  return CURL_SEEKFUNC_OK;
}

}  // namespace

struct S3Client::Request {
  const char* method = "GET";
  // For messages: "PUT object", "ListObjectsV2", ...
  std::string op;
  // Object key; empty for a bucket-level request.
  std::string key;
  bool bucket_request = false;
  // Already canonical: sorted, encoded.
  std::string query;
  std::vector<std::string> headers;
  std::string payload_sha256 = kEmptySha256;
  // PUT bodies (read through UploadSource); POST bodies go in `post_body`.
  std::optional<UploadSource> upload;
  std::string post_body;
  // GET: 2xx bodies go to `sink` when set, else into Response::body.
  const ByteSink* sink = nullptr;
  bool range_sent = false;
  size_t max_body = kMaxXmlBody;
};

struct S3Client::Response {
  long status = 0;
  std::string body;
  std::string etag;
  int64_t content_length = -1;
  absl::Time last_modified = absl::InfinitePast();
};

class S3Client::Handle {
 public:
  Handle() : curl_(curl_easy_init()) {}
  ~Handle() {
    if (curl_ != nullptr) curl_easy_cleanup(curl_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  CURL* get() const { return curl_; }

 private:
  CURL* curl_;
};

namespace {

// State of one transfer, shared with curl's callbacks.
struct Transfer {
  CURL* curl = nullptr;
  const S3Client::ByteSink* sink = nullptr;
  bool range_sent = false;
  size_t max_body = 0;
  long status = 0;
  std::string body;
  std::string etag;
  absl::Status callback_error;
};

size_t OnHeader(char* data, size_t size, size_t nitems, void* userdata) {
  auto* t = static_cast<Transfer*>(userdata);
  absl::string_view line(data, size * nitems);
  if (absl::StartsWith(line, "HTTP/")) {
    t->etag.clear();  // a 100 Continue comes before the real answer
    return size * nitems;
  }
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos &&
      absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(line.substr(0, colon)), "etag")) {
    t->etag = StripQuotes(std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  return size * nitems;
}

size_t OnBody(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* t = static_cast<Transfer*>(userdata);
  size_t n = size * nmemb;
  if (t->status == 0) curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
  bool success = t->status >= 200 && t->status < 300;
  if (success && t->range_sent && t->status != 206) {
    t->callback_error =
        absl::UnimplementedError("the S3 server ignored the Range header (answered 200, not 206)");
    return 0;
  }
  if (success && t->sink != nullptr) {
    absl::Status s = (*t->sink)(absl::string_view(data, n));
    if (!s.ok()) {
      t->callback_error = std::move(s);
      return 0;
    }
    return n;
  }
  size_t limit = success ? t->max_body : kMaxErrorBody;
  if (t->body.size() + n > limit) {
    if (!success) {  // keep the start of an error body; it names the error
      t->body.append(data, limit - t->body.size());
      return n;
    }
    t->callback_error = absl::ResourceExhaustedError(
        absl::StrCat("S3 response body larger than ", limit, " bytes"));
    return 0;
  }
  t->body.append(data, n);
  return n;
}

}  // namespace

absl::StatusOr<std::unique_ptr<S3Client>> S3Client::Create(const S3ClientOptions& options) {
  RETURN_IF_ERROR(ValidateS3Config(options.config));
  if (options.part_size < kMinPartSize || options.part_size > kMaxSinglePut) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 part_size must be between 5 MiB and 5 GiB, got ", options.part_size));
  }
  if (options.multipart_threshold < 0 || options.multipart_threshold > kMaxSinglePut) {
    return absl::InvalidArgumentError(absl::StrCat(
        "S3 multipart_threshold must be between 0 and 5 GiB (S3's single PUT limit), got ",
        options.multipart_threshold));
  }
  GlobalInitOnce();
  curl_version_info_data* info = curl_version_info(CURLVERSION_NOW);
  if (info == nullptr || info->version_num < 0x074b00) {  // 7.75.0 brought AWS_SIGV4
    return absl::FailedPreconditionError("libcurl 7.75 or newer is needed for SigV4 signing");
  }
  return std::unique_ptr<S3Client>(new S3Client(options));
}

S3Client::S3Client(S3ClientOptions options) : options_(std::move(options)) {}

S3Client::~S3Client() = default;

std::unique_ptr<S3Client::Handle> S3Client::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      std::unique_ptr<Handle> h = std::move(idle_.back());
      idle_.pop_back();
      return h;
    }
  }
  return std::make_unique<Handle>();
}

void S3Client::Release(std::unique_ptr<Handle> handle) {
  absl::MutexLock lock(&mu_);
  if (idle_.size() < kIdleHandles) idle_.push_back(std::move(handle));
}

std::string S3Client::ObjectUrl(absl::string_view key) const {
  return absl::StrCat(options_.config.endpoint, "/", options_.config.bucket, "/",
                      UriEncode(key, /*keep_slash=*/true));
}

int64_t S3Client::PartSizeFor(int64_t size) const {
  int64_t part = std::max(options_.part_size, kMinPartSize);
  if ((size + part - 1) / part > kMaxParts) {
    int64_t need = (size + kMaxParts - 1) / kMaxParts;
    part = (need + kMiB - 1) / kMiB * kMiB;
  }
  return part;
}

absl::StatusOr<S3Client::Response> S3Client::Perform(Request& req) {
  std::unique_ptr<Handle> handle = Acquire();
  CURL* c = handle->get();
  if (c == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  curl_easy_reset(c);
  const std::string target =
      absl::StrCat("s3://", options_.config.bucket, "/", req.bucket_request ? "" : req.key);
  const std::string what = absl::StrCat("S3 ", req.op, " ", target);

  std::string url = req.bucket_request
                        ? absl::StrCat(options_.config.endpoint, "/", options_.config.bucket)
                        : ObjectUrl(req.key);
  if (!req.query.empty()) absl::StrAppend(&url, "?", req.query);
  const std::string sigv4 = absl::StrCat("aws:amz:", options_.config.region, ":s3");

  curl_slist* headers = nullptr;
  auto add_header = [&headers](const std::string& h) {
    headers = curl_slist_append(headers, h.c_str());
  };
  add_header(absl::StrCat("x-amz-content-sha256: ", req.payload_sha256));
  if (!options_.config.session_token.empty()) {
    add_header(absl::StrCat("x-amz-security-token: ", options_.config.session_token));
  }
  for (const std::string& h : req.headers) add_header(h);
  absl::Cleanup free_headers = [headers] { curl_slist_free_all(headers); };

  Transfer t;
  t.curl = c;
  t.sink = req.sink;
  t.range_sent = req.range_sent;
  t.max_body = req.max_body;
  char errbuf[CURL_ERROR_SIZE] = {0};

  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  // Keys such as "a/../b" are legal in S3 and must reach it as written (the
  // signature covers the path exactly as sent).
  curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4.c_str());
  curl_easy_setopt(c, CURLOPT_USERNAME, options_.config.access_key_id.c_str());
  curl_easy_setopt(c, CURLOPT_PASSWORD, options_.config.secret_access_key.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(
      c, CURLOPT_LOW_SPEED_TIME,
      static_cast<long>(std::max<int64_t>(1, absl::ToInt64Seconds(options_.stall_timeout))));
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_BUFFERSIZE, kIoBufferSize);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);

  const absl::string_view method = req.method;
  if (method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_FILETIME, 1L);
  } else if (method == "PUT") {
    if (!req.upload.has_value()) req.upload.emplace();
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, kIoBufferSize);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, &ReadBody);
    curl_easy_setopt(c, CURLOPT_READDATA, &*req.upload);
    curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, &SeekBody);
    curl_easy_setopt(c, CURLOPT_SEEKDATA, &*req.upload);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.upload->length));
  } else if (method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.post_body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.post_body.size()));
  } else if (method == "DELETE") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
  } else {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  }

  CURLcode rc = curl_easy_perform(c);
  Response resp;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  curl_off_t length = -1;
  if (curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK) {
    resp.content_length = length;
  }
  curl_off_t filetime = -1;
  if (method == "HEAD" && curl_easy_getinfo(c, CURLINFO_FILETIME_T, &filetime) == CURLE_OK &&
      filetime >= 0) {
    resp.last_modified = absl::FromUnixSeconds(filetime);
  }
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, nullptr);
  Release(std::move(handle));

  if (!t.callback_error.ok()) {
    return absl::Status(t.callback_error.code(),
                        absl::StrCat(what, ": ", t.callback_error.message()));
  }
  if (req.upload.has_value() && !req.upload->error.ok()) {
    return absl::Status(req.upload->error.code(),
                        absl::StrCat(what, ": ", req.upload->error.message()));
  }
  if (rc != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat(what, ": ", curl_easy_strerror(rc),
                     errbuf[0] != '\0' ? absl::StrCat(" (", errbuf, ")") : ""));
  }
  if (resp.status < 200 || resp.status >= 300) {
    std::optional<std::string> code = s3xml::Text(t.body, "Code");
    std::optional<std::string> message = s3xml::Text(t.body, "Message");
    return absl::Status(
        CodeForHttp(resp.status),
        absl::StrCat(what, ": HTTP ", resp.status, code ? absl::StrCat(" ", *code) : "",
                     message ? absl::StrCat(": ", *message) : ""));
  }
  resp.body = std::move(t.body);
  resp.etag = std::move(t.etag);
  return resp;
}

absl::Status S3Client::CreateBucket() {
  Request req;
  req.method = "PUT";
  req.op = "CreateBucket";
  req.bucket_request = true;
  // us-east-1 takes no body; every other region wants its name.
  std::string body;
  if (options_.config.region != "us-east-1") {
    body = absl::StrCat(
        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<LocationConstraint>",
        s3xml::Escape(options_.config.region), "</LocationConstraint></CreateBucketConfiguration>");
  }
  req.payload_sha256 = Sha256Hex(body);
  req.upload.emplace();
  req.upload->memory = body;
  req.upload->length = static_cast<int64_t>(body.size());
  absl::StatusOr<Response> resp = Perform(req);
  if (resp.ok()) return absl::OkStatus();
  if (absl::IsFailedPrecondition(resp.status()) &&
      absl::StrContains(resp.status().message(), "BucketAlready")) {
    return absl::AlreadyExistsError(resp.status().message());
  }
  return resp.status();
}

absl::StatusOr<S3PutResult> S3Client::PutObject(absl::string_view key, absl::string_view bytes) {
  if (static_cast<int64_t>(bytes.size()) > kMaxSinglePut) {
    return absl::InvalidArgumentError("PutObject takes at most 5 GiB; use PutObjectFromFile");
  }
  Request req;
  req.method = "PUT";
  req.op = "PutObject";
  req.key = std::string(key);
  req.payload_sha256 = Sha256Hex(bytes);
  req.upload.emplace();
  req.upload->memory = bytes;
  req.upload->length = static_cast<int64_t>(bytes.size());
  ASSIGN_OR_RETURN(Response resp, Perform(req));
  return S3PutResult{resp.etag, 0};
}

absl::StatusOr<S3PutResult> S3Client::PutObjectFromFile(absl::string_view key,
                                                        const std::string& path,
                                                        absl::string_view sha256_hex) {
  if (!sha256_hex.empty() && !IsSha256Hex(sha256_hex)) {
    return absl::InvalidArgumentError("sha256 must be 64 lower-case hex digits");
  }
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("open ", path));
  absl::Cleanup close_fd = [fd] { close(fd); };
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoStatus(absl::StrCat("stat ", path));
  const int64_t size = st.st_size;
  if (size > kMaxObjectSize) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is larger than S3's 5 TiB limit"));
  }

  if (size > options_.multipart_threshold) {
    ASSIGN_OR_RETURN(std::string upload_id, CreateMultipartUpload(key));
    const int64_t part = PartSizeFor(size);
    std::vector<S3CompletedPart> parts;
    absl::Status failed;
    for (int64_t offset = 0; offset < size && failed.ok(); offset += part) {
      int number = static_cast<int>(offset / part) + 1;
      absl::StatusOr<std::string> etag =
          UploadPart(key, upload_id, number, path, offset, std::min(part, size - offset));
      if (etag.ok()) {
        parts.push_back({number, *etag});
      } else {
        failed = etag.status();
      }
    }
    absl::StatusOr<S3PutResult> done = failed.ok() ? CompleteMultipartUpload(key, upload_id, parts)
                                                   : absl::StatusOr<S3PutResult>(failed);
    if (!done.ok()) {
      // Best effort: parts of an abandoned upload cost storage until aborted
      // (a bucket lifecycle rule catches what this misses).
      AbortMultipartUpload(key, upload_id).IgnoreError();
      return done.status();
    }
    return done;
  }

  std::string sha(sha256_hex);
  if (sha.empty()) {
    ASSIGN_OR_RETURN(sha, Sha256File(path));
  }
  Request req;
  req.method = "PUT";
  req.op = "PutObject";
  req.key = std::string(key);
  req.payload_sha256 = sha;
  req.upload.emplace();
  req.upload->fd = fd;
  req.upload->length = size;
  ASSIGN_OR_RETURN(Response resp, Perform(req));
  return S3PutResult{resp.etag, 0};
}

absl::Status S3Client::GetObject(absl::string_view key, const ByteSink& sink,
                                 std::optional<S3ByteRange> range) {
  Request req;
  req.method = "GET";
  req.op = "GetObject";
  req.key = std::string(key);
  req.sink = &sink;
  if (range.has_value()) {
    if (range->offset < 0 || range->length < -1) {
      return absl::InvalidArgumentError("byte range needs offset >= 0 and length >= -1");
    }
    if (range->length == 0) {
      // HTTP cannot ask for zero bytes; still say whether the object exists.
      ASSIGN_OR_RETURN(S3ObjectInfo info, HeadObject(key));
      if (range->offset > info.size) {
        return absl::OutOfRangeError(absl::StrCat("offset ", range->offset, " is past the end of ",
                                                  key, " (", info.size, " bytes)"));
      }
      return absl::OkStatus();
    }
    req.headers.push_back(
        absl::StrCat("Range: bytes=", range->offset, "-",
                     range->length < 0 ? "" : absl::StrCat(range->offset + range->length - 1)));
    req.range_sent = true;
  }
  return Perform(req).status();
}

absl::Status S3Client::GetObjectToFile(absl::string_view key, const std::string& path,
                                       std::optional<S3ByteRange> range) {
  FILE* f = fopen(path.c_str(), "wbe");
  if (f == nullptr) return ErrnoStatus(absl::StrCat("open ", path));
  ByteSink sink = [f, &path](absl::string_view bytes) {
    if (fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
      return ErrnoStatus(absl::StrCat("write ", path));
    }
    return absl::OkStatus();
  };
  absl::Status s = GetObject(key, sink, range);
  if (fclose(f) != 0 && s.ok()) s = ErrnoStatus(absl::StrCat("close ", path));
  if (!s.ok()) unlink(path.c_str());
  return s;
}

absl::StatusOr<S3ObjectInfo> S3Client::HeadObject(absl::string_view key) {
  Request req;
  req.method = "HEAD";
  req.op = "HeadObject";
  req.key = std::string(key);
  ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.content_length < 0) {
    return absl::InternalError(absl::StrCat("S3 HeadObject ", key, ": no Content-Length"));
  }
  S3ObjectInfo info;
  info.key = std::string(key);
  info.size = resp.content_length;
  info.last_modified = resp.last_modified;
  info.etag = resp.etag;
  return info;
}

absl::Status S3Client::DeleteObject(absl::string_view key) {
  Request req;
  req.method = "DELETE";
  req.op = "DeleteObject";
  req.key = std::string(key);
  absl::Status s = Perform(req).status();
  // S3 answers 204 for an absent key; some servers say NoSuchKey instead.
  if (absl::IsNotFound(s) && !absl::StrContains(s.message(), "NoSuchBucket")) {
    return absl::OkStatus();
  }
  return s;
}

absl::StatusOr<S3ListPage> S3Client::ListObjectsPage(absl::string_view prefix,
                                                     absl::string_view continuation_token,
                                                     int max_keys) {
  if (max_keys < 1 || max_keys > 1000) {
    return absl::InvalidArgumentError("max_keys must be between 1 and 1000");
  }
  Request req;
  req.method = "GET";
  req.op = "ListObjectsV2";
  req.bucket_request = true;
  // Parameters in SigV4 canonical order (sorted by name, values encoded).
  if (!continuation_token.empty()) {
    absl::StrAppend(&req.query,
                    "continuation-token=", UriEncode(continuation_token, /*keep_slash=*/false),
                    "&");
  }
  absl::StrAppend(&req.query, "list-type=2&max-keys=", max_keys,
                  "&prefix=", UriEncode(prefix, /*keep_slash=*/false));
  ASSIGN_OR_RETURN(Response resp, Perform(req));

  S3ListPage page;
  for (absl::string_view c : s3xml::Elements(resp.body, "Contents")) {
    S3ObjectInfo info;
    std::optional<std::string> key = s3xml::Text(c, "Key");
    std::optional<std::string> size = s3xml::Text(c, "Size");
    std::optional<std::string> modified = s3xml::Text(c, "LastModified");
    if (!key || !size || !absl::SimpleAtoi(*size, &info.size) || !modified) {
      return absl::InternalError(
          "S3 ListObjectsV2: a <Contents> entry lacks Key, Size or "
          "LastModified");
    }
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, *modified, &info.last_modified, &err)) {
      return absl::InternalError(
          absl::StrCat("S3 ListObjectsV2: bad LastModified \"", *modified, "\": ", err));
    }
    info.key = std::move(*key);
    info.etag = StripQuotes(s3xml::Text(c, "ETag").value_or(""));
    page.objects.push_back(std::move(info));
  }
  if (s3xml::Text(resp.body, "IsTruncated").value_or("false") == "true") {
    page.next_continuation_token = s3xml::Text(resp.body, "NextContinuationToken").value_or("");
    if (page.next_continuation_token.empty()) {
      return absl::InternalError("S3 ListObjectsV2: truncated page without a continuation token");
    }
  }
  return page;
}

absl::Status S3Client::ListObjects(absl::string_view prefix, const ObjectVisitor& visit,
                                   int page_size) {
  std::string token;
  do {
    ASSIGN_OR_RETURN(S3ListPage page, ListObjectsPage(prefix, token, page_size));
    for (const S3ObjectInfo& info : page.objects) RETURN_IF_ERROR(visit(info));
    if (!page.next_continuation_token.empty() && page.next_continuation_token == token) {
      return absl::InternalError("S3 ListObjectsV2 returned the same continuation token twice");
    }
    token = std::move(page.next_continuation_token);
  } while (!token.empty());
  return absl::OkStatus();
}

absl::StatusOr<std::string> S3Client::CreateMultipartUpload(absl::string_view key) {
  Request req;
  req.method = "POST";
  req.op = "CreateMultipartUpload";
  req.key = std::string(key);
  // "uploads=" rather than "uploads": libcurl 7.88 signs the query as written
  // and the canonical form of a valueless parameter has the '='.
  req.query = "uploads=";
  // Without it curl would send (unsigned) application/x-www-form-urlencoded,
  // which S3 would keep as the object's type.
  req.headers.push_back("Content-Type: application/octet-stream");
  ASSIGN_OR_RETURN(Response resp, Perform(req));
  std::optional<std::string> id = s3xml::Text(resp.body, "UploadId");
  if (!id || id->empty()) {
    return absl::InternalError(absl::StrCat("S3 CreateMultipartUpload ", key, ": no UploadId"));
  }
  return *id;
}

absl::StatusOr<std::string> S3Client::UploadPart(absl::string_view key, absl::string_view upload_id,
                                                 int part_number, const std::string& path,
                                                 int64_t offset, int64_t length) {
  if (part_number < 1 || part_number > kMaxParts) {
    return absl::InvalidArgumentError("part numbers run from 1 to 10000");
  }
  if (offset < 0 || length < 0 || length > kMaxSinglePut) {
    return absl::InvalidArgumentError("bad part offset or length");
  }
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("open ", path));
  absl::Cleanup close_fd = [fd] { close(fd); };

  // The part's digest must be in its (signed) headers before the first byte
  // goes out: one read to hash, one to send (the second mostly from the page
  // cache).
  Sha256 hash;
  std::string buf(1 << 20, '\0');
  for (int64_t done = 0; done < length;) {
    size_t want = static_cast<size_t>(std::min<int64_t>(buf.size(), length - done));
    ssize_t n = pread(fd, buf.data(), want, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(absl::StrCat("read ", path));
    if (n == 0) return absl::DataLossError(absl::StrCat(path, " ends inside part ", part_number));
    hash.Update(absl::string_view(buf.data(), static_cast<size_t>(n)));
    done += n;
  }
  std::string().swap(buf);

  Request req;
  req.method = "PUT";
  req.op = absl::StrCat("UploadPart ", part_number);
  req.key = std::string(key);
  req.query = absl::StrCat("partNumber=", part_number,
                           "&uploadId=", UriEncode(upload_id, /*keep_slash=*/false));
  req.payload_sha256 = hash.HexDigest();
  req.upload.emplace();
  req.upload->fd = fd;
  req.upload->offset = offset;
  req.upload->length = length;
  ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.etag.empty()) {
    return absl::InternalError(
        absl::StrCat("S3 UploadPart ", part_number, " of ", key, ": no ETag in the answer"));
  }
  return resp.etag;
}

absl::StatusOr<S3PutResult> S3Client::CompleteMultipartUpload(
    absl::string_view key, absl::string_view upload_id, const std::vector<S3CompletedPart>& parts) {
  if (parts.empty()) return absl::InvalidArgumentError("a multipart upload needs a part");
  Request req;
  req.method = "POST";
  req.op = "CompleteMultipartUpload";
  req.key = std::string(key);
  req.query = absl::StrCat("uploadId=", UriEncode(upload_id, /*keep_slash=*/false));
  req.headers.push_back("Content-Type: application/xml");
  req.post_body = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">";
  for (const S3CompletedPart& p : parts) {
    absl::StrAppend(&req.post_body, "<Part><PartNumber>", p.number, "</PartNumber><ETag>\"",
                    s3xml::Escape(p.etag), "\"</ETag></Part>");
  }
  absl::StrAppend(&req.post_body, "</CompleteMultipartUpload>");
  req.payload_sha256 = Sha256Hex(req.post_body);
  ASSIGN_OR_RETURN(Response resp, Perform(req));
  // S3 may fail the assembly after it sent 200: the body is then an <Error>.
  if (!s3xml::Elements(resp.body, "Error").empty()) {
    std::string code = s3xml::Text(resp.body, "Code").value_or("");
    return absl::Status(
        CodeForS3Error(code),
        absl::StrCat("S3 CompleteMultipartUpload s3://", options_.config.bucket, "/", key, ": ",
                     code, ": ", s3xml::Text(resp.body, "Message").value_or("")));
  }
  return S3PutResult{StripQuotes(s3xml::Text(resp.body, "ETag").value_or(resp.etag)),
                     static_cast<int>(parts.size())};
}

absl::Status S3Client::AbortMultipartUpload(absl::string_view key, absl::string_view upload_id) {
  Request req;
  req.method = "DELETE";
  req.op = "AbortMultipartUpload";
  req.key = std::string(key);
  req.query = absl::StrCat("uploadId=", UriEncode(upload_id, /*keep_slash=*/false));
  return Perform(req).status();
}

}  // namespace compress::store
