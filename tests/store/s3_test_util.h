// Test helpers for the S3 tests: a one-thread HTTP/1.1 server on 127.0.0.1
// that records requests and answers from a handler, and an AWS Signature
// Version 4 reference written from the spec with OpenSSL (canonical request
// -> string to sign -> signing key -> signature), independent of libcurl's.
#ifndef COMPRESS_TESTS_STORE_S3_TEST_UTIL_H_
#define COMPRESS_TESTS_STORE_S3_TEST_UTIL_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

namespace compress::s3test {

struct HttpRequest {
  std::string method;
  std::string target;                                        // path and query, as sent
  std::vector<std::pair<std::string, std::string>> headers;  // in order, as sent
  std::string body;

  std::string path() const { return target.substr(0, target.find('?')); }
  std::string query() const {
    size_t q = target.find('?');
    return q == std::string::npos ? "" : target.substr(q + 1);
  }
  // The first header of that name (any case), or "".
  std::string Header(absl::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (absl::EqualsIgnoreCase(k, name)) return v;
    }
    return "";
  }
};

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// Listens on 127.0.0.1 (port chosen by the kernel) before the constructor
// returns, so a client may connect at once; one connection at a time, each
// answered once and closed.
class LoopbackHttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  explicit LoopbackHttpServer(Handler handler) : handler_(std::move(handler)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd_, 16) != 0) {
      close(fd_);
      fd_ = -1;
      return;
    }
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (pipe2(wake_, O_CLOEXEC) != 0) wake_[0] = wake_[1] = -1;
    thread_ = std::thread([this] { Serve(); });
  }

  ~LoopbackHttpServer() {
    if (thread_.joinable()) {
      char c = 'x';
      (void)!write(wake_[1], &c, 1);
      thread_.join();
    }
    for (int fd : {fd_, wake_[0], wake_[1]}) {
      if (fd >= 0) close(fd);
    }
  }
  LoopbackHttpServer(const LoopbackHttpServer&) = delete;
  LoopbackHttpServer& operator=(const LoopbackHttpServer&) = delete;

  bool ok() const { return fd_ >= 0; }
  int port() const { return port_; }
  std::string endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }

  std::vector<HttpRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  void ClearRequests() {
    absl::MutexLock lock(&mu_);
    requests_.clear();
  }

 private:
  void Serve() {
    while (true) {
      pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents != 0) return;
      int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn < 0) continue;
      HandleConnection(conn);
      close(conn);
    }
  }

  // Reads until `buf` holds `want` bytes; false on EOF or error.
  static bool ReadAtLeast(int fd, std::string* buf, size_t want) {
    char chunk[65536];
    while (buf->size() < want) {
      ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) return false;
      buf->append(chunk, static_cast<size_t>(n));
    }
    return true;
  }

  static void SendAll(int fd, absl::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  void HandleConnection(int conn) {
    std::string buf;
    size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (!ReadAtLeast(conn, &buf, buf.size() + 1)) return;
    }
    HttpRequest req;
    std::vector<std::string> lines = absl::StrSplit(absl::string_view(buf).substr(0, end), "\r\n");
    std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
    if (first.size() < 2) return;
    req.method = first[0];
    req.target = first[1];
    size_t content_length = 0;
    bool expect_continue = false;
    for (size_t i = 1; i < lines.size(); ++i) {
      size_t colon = lines[i].find(':');
      if (colon == std::string::npos) continue;
      std::string name = lines[i].substr(0, colon);
      std::string value(absl::StripAsciiWhitespace(absl::string_view(lines[i]).substr(colon + 1)));
      if (absl::EqualsIgnoreCase(name, "content-length")) {
        (void)absl::SimpleAtoi(value, &content_length);
      }
      if (absl::EqualsIgnoreCase(name, "expect") && absl::EqualsIgnoreCase(value, "100-continue")) {
        expect_continue = true;
      }
      req.headers.emplace_back(std::move(name), std::move(value));
    }
    buf.erase(0, end + 4);
    if (expect_continue && buf.size() < content_length) {
      SendAll(conn, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    if (!ReadAtLeast(conn, &buf, content_length)) return;
    req.body = buf.substr(0, content_length);

    HttpResponse resp = handler_(req);
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(req);
    }
    std::string out = absl::StrCat("HTTP/1.1 ", resp.status, " ", Reason(resp.status), "\r\n");
    bool has_length = false;
    for (const auto& [k, v] : resp.headers) {
      if (absl::EqualsIgnoreCase(k, "content-length")) has_length = true;
      absl::StrAppend(&out, k, ": ", v, "\r\n");
    }
    if (!has_length) absl::StrAppend(&out, "Content-Length: ", resp.body.size(), "\r\n");
    absl::StrAppend(&out, "Connection: close\r\n\r\n");
    if (req.method != "HEAD") out += resp.body;
    SendAll(conn, out);
  }

  static const char* Reason(int status) {
    switch (status) {
      case 200:
        return "OK";
      case 204:
        return "No Content";
      case 206:
        return "Partial Content";
      case 400:
        return "Bad Request";
      case 403:
        return "Forbidden";
      case 404:
        return "Not Found";
      case 416:
        return "Range Not Satisfiable";
      case 500:
        return "Internal Server Error";
      case 503:
        return "Service Unavailable";
      default:
        return "Status";
    }
  }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  int wake_[2] = {-1, -1};
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::vector<HttpRequest> requests_ ABSL_GUARDED_BY(mu_);
};

// ---- SigV4, from the spec (docs.aws.amazon.com, "Create a signed AWS API
// request"), with OpenSSL primitives only.

inline std::string Sha256HexOf(absl::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(md), len));
}

// Streaming SHA-256 straight from OpenSSL (not server/util/sha256.h).
class Sha256Stream {
 public:
  Sha256Stream() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256Stream() { EVP_MD_CTX_free(ctx_); }
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(absl::string_view data) { EVP_DigestUpdate(ctx_, data.data(), data.size()); }
  std::string HexDigest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(md), len));
  }

 private:
  EVP_MD_CTX* ctx_;
};

inline std::string HmacSha256(absl::string_view key, absl::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len);
  return std::string(reinterpret_cast<char*>(md), len);
}

// Hex signature of `canonical_request` for the scope date/region/service.
inline std::string SigV4Signature(absl::string_view secret, absl::string_view amz_date,
                                  absl::string_view region, absl::string_view service,
                                  absl::string_view canonical_request) {
  std::string date(amz_date.substr(0, 8));
  std::string scope = absl::StrCat(date, "/", region, "/", service, "/aws4_request");
  std::string string_to_sign = absl::StrCat("AWS4-HMAC-SHA256\n", amz_date, "\n", scope, "\n",
                                            Sha256HexOf(canonical_request));
  std::string k = HmacSha256(absl::StrCat("AWS4", secret), date);
  k = HmacSha256(k, region);
  k = HmacSha256(k, service);
  k = HmacSha256(k, "aws4_request");
  return absl::BytesToHexString(HmacSha256(k, string_to_sign));
}

// SigV4's URI encoding (RFC 3986 unreserved kept, upper-case %XX).
inline std::string AwsUriEncode(absl::string_view s, bool keep_slash) {
  std::string out;
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

inline std::string PercentDecode(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && absl::ascii_isxdigit(s[i + 1]) &&
        absl::ascii_isxdigit(s[i + 2])) {
      int v = 0;
      (void)absl::SimpleHexAtoi(s.substr(i + 1, 2), &v);
      out.push_back(static_cast<char>(v));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// What an S3 server does with a request that claims SigV4: rebuilds the
// canonical request from what it received (S3 rules: the path is used as
// sent, which must already be the encoded form; query decoded, re-encoded and
// sorted; signed headers trimmed, with repeated ones joined by ','), then
// compares signatures. Returns "" when it verifies, else what is wrong.
inline std::string VerifyS3Signature(const HttpRequest& req, absl::string_view access_key,
                                     absl::string_view secret, absl::string_view region) {
  const std::string header = req.Header("authorization");
  absl::string_view auth = header;
  if (!absl::ConsumePrefix(&auth, "AWS4-HMAC-SHA256 ")) return "no SigV4 Authorization header";
  std::map<std::string, std::string> parts;
  for (absl::string_view p : absl::StrSplit(auth, ',')) {
    p = absl::StripAsciiWhitespace(p);
    size_t eq = p.find('=');
    if (eq == absl::string_view::npos) return "malformed Authorization";
    parts[std::string(p.substr(0, eq))] = std::string(p.substr(eq + 1));
  }
  std::string amz_date = req.Header("x-amz-date");
  std::string date = amz_date.substr(0, 8);
  std::string expected_credential =
      absl::StrCat(access_key, "/", date, "/", region, "/s3/aws4_request");
  if (parts["Credential"] != expected_credential) {
    return "Credential is " + parts["Credential"] + ", expected " + expected_credential;
  }
  std::vector<std::string> signed_headers = absl::StrSplit(parts["SignedHeaders"], ';');
  for (const char* must : {"host", "x-amz-content-sha256", "x-amz-date"}) {
    if (std::find(signed_headers.begin(), signed_headers.end(), must) == signed_headers.end()) {
      return absl::StrCat("SignedHeaders lacks ", must);
    }
  }
  std::string payload = req.Header("x-amz-content-sha256");
  if (payload != Sha256HexOf(req.body)) {
    return "x-amz-content-sha256 " + payload + " is not the sha256 of the body";
  }
  // Path: S3 signs the URI-encoded path once; what was sent must be that.
  std::string path = req.path();
  if (AwsUriEncode(PercentDecode(path), /*keep_slash=*/true) != path) {
    return "path " + path + " is not in canonical (encoded) form";
  }
  std::vector<std::pair<std::string, std::string>> params;
  std::string query = req.query();
  if (!query.empty()) {
    for (absl::string_view kv : absl::StrSplit(query, '&')) {
      size_t eq = kv.find('=');
      std::string k = PercentDecode(kv.substr(0, eq));
      std::string v = eq == absl::string_view::npos ? "" : PercentDecode(kv.substr(eq + 1));
      params.emplace_back(AwsUriEncode(k, false), AwsUriEncode(v, false));
    }
  }
  std::sort(params.begin(), params.end());
  std::vector<std::string> q;
  for (const auto& [k, v] : params) q.push_back(absl::StrCat(k, "=", v));
  std::string canonical_headers;
  for (const std::string& name : signed_headers) {
    std::vector<std::string> values;
    for (const auto& [k, v] : req.headers) {
      if (absl::AsciiStrToLower(k) != name) continue;
      std::vector<absl::string_view> words =
          absl::StrSplit(v, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      values.push_back(absl::StrJoin(words, " "));
    }
    if (values.empty()) return "signed header " + name + " was not sent";
    absl::StrAppend(&canonical_headers, name, ":", absl::StrJoin(values, ","), "\n");
  }
  std::string creq = absl::StrCat(req.method, "\n", path, "\n", absl::StrJoin(q, "&"), "\n",
                                  canonical_headers, "\n", parts["SignedHeaders"], "\n", payload);
  std::string want = SigV4Signature(secret, amz_date, region, "s3", creq);
  if (parts["Signature"] != want) {
    return "signature " + parts["Signature"] + " != " + want + " for canonical request:\n" + creq;
  }
  return "";
}

}  // namespace compress::s3test

#endif  // COMPRESS_TESTS_STORE_S3_TEST_UTIL_H_
