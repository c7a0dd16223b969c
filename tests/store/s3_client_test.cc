// S3Client without an S3 server: config parsing, the XML reader, the exact
// requests the client sends (each one re-verified by the independent SigV4
// reference in s3_test_util.h, as S3 would verify it) and the mapping of
// S3's error answers to absl codes. A scripted HTTP server on 127.0.0.1
// plays S3.
#include "server/store/s3/s3_client.h"

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/s3/s3_config.h"
#include "server/store/s3/s3_xml.h"
#include "server/util/sha256.h"
#include "tests/store/s3_test_util.h"
#include "tests/test_util.h"

namespace compress::store {
namespace {

using ::compress::s3test::HttpRequest;
using ::compress::s3test::HttpResponse;
using ::compress::s3test::LoopbackHttpServer;
using ::compress::s3test::VerifyS3Signature;
using ::compress::testutil::ScopedTempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kKey[] = "AKIDEXAMPLE";
constexpr char kSecret[] = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
constexpr char kRegion[] = "eu-central-1";

// ---- S3Config ----

TEST(S3ConfigTest, ReadsUrlAndEnvironment) {
  std::map<std::string, std::string> env = {{"AWS_ACCESS_KEY_ID", "id"},
                                            {"AWS_SECRET_ACCESS_KEY", "secret"},
                                            {"AWS_REGION", "eu-west-3"},
                                            {"COMPRESSD_S3_ENDPOINT", "http://127.0.0.1:9000/"}};
  auto getenv = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  absl::StatusOr<S3Config> c = S3ConfigFromEnvironment("s3://my-bucket/models/prod/", getenv);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bucket, "my-bucket");
  EXPECT_EQ(c->prefix, "models/prod/");
  EXPECT_EQ(c->endpoint, "http://127.0.0.1:9000");
  EXPECT_EQ(c->region, "eu-west-3");
  EXPECT_EQ(c->access_key_id, "id");
  EXPECT_EQ(c->secret_access_key, "secret");
  EXPECT_EQ(c->session_token, "");

  // Defaults: us-east-1 and AWS's regional endpoint; no prefix.
  env.erase("AWS_REGION");
  env.erase("COMPRESSD_S3_ENDPOINT");
  c = S3ConfigFromEnvironment("s3://my-bucket", getenv);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->prefix, "");
  EXPECT_EQ(c->region, "us-east-1");
  EXPECT_EQ(c->endpoint, "https://s3.us-east-1.amazonaws.com");
  env["AWS_DEFAULT_REGION"] = "ap-south-1";
  EXPECT_EQ(S3ConfigFromEnvironment("s3://my-bucket", getenv)->region, "ap-south-1");

  env.erase("AWS_SECRET_ACCESS_KEY");
  c = S3ConfigFromEnvironment("s3://my-bucket", getenv);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("AWS_SECRET_ACCESS_KEY"));
}

TEST(S3ConfigTest, RejectsWhatS3WouldRefuse) {
  S3Config c;
  for (const char* bad :
       {"http://bucket/x", "s3://", "s3://ab", "s3://Upper", "s3://-dash", "s3://a..b",
        "s3://bucket/a//b", "s3://bucket/a/../b", "s3://bucket/./x", "s3://under_score"}) {
    EXPECT_EQ(ParseS3Url(bad, &c).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  ASSERT_TRUE(ParseS3Url("s3://a.b-c/x", &c).ok());
  EXPECT_EQ(c.prefix, "x/");

  S3Config good;
  good.endpoint = "http://127.0.0.1:1";
  good.bucket = "bucket";
  good.access_key_id = "a";
  good.secret_access_key = "b";
  EXPECT_TRUE(ValidateS3Config(good).ok());
  for (const char* endpoint : {"ftp://h", "http://", "http://h/path", "http://u@h", "h:9000"}) {
    S3Config c2 = good;
    c2.endpoint = endpoint;
    EXPECT_EQ(ValidateS3Config(c2).code(), absl::StatusCode::kInvalidArgument) << endpoint;
  }
}

// ---- XML ----

TEST(S3XmlTest, FindsElementsAndUnescapes) {
  const std::string xml =
      "<?xml version=\"1.0\"?><ListBucketResult xmlns=\"x\"><KeyCount>2</KeyCount>"
      "<Contents><Key>a&amp;b&lt;c&gt;&quot;&apos;&#233;&#x41;</Key><Size>3</Size></Contents>"
      "<Contents><Key>plain</Key><Size>0</Size><Owner/></Contents></ListBucketResult>";
  std::vector<absl::string_view> contents = s3xml::Elements(xml, "Contents");
  ASSERT_EQ(contents.size(), 2u);
  EXPECT_EQ(s3xml::Text(contents[0], "Key"),
            "a&b<c>\"'\xC3\xA9"
            "A");
  EXPECT_EQ(s3xml::Text(contents[1], "Key"), "plain");
  EXPECT_EQ(s3xml::Text(contents[1], "Owner"), "");  // <Owner/>
  EXPECT_EQ(s3xml::Text(xml, "KeyCount"), "2");      // not confused with <Key>
  EXPECT_EQ(s3xml::Text(xml, "Missing"), std::nullopt);
  EXPECT_EQ(s3xml::Escape("a&<>\"'"), "a&amp;&lt;&gt;&quot;&apos;");
}

TEST(S3XmlTest, MalformedInputYieldsLessNotMore) {
  // Unterminated element, entity soup, a billion-laughs-style entity that is
  // simply not expanded, out-of-range references.
  EXPECT_TRUE(s3xml::Elements("<Key>never closed", "Key").empty());
  EXPECT_TRUE(s3xml::Elements("<Key", "Key").empty());
  EXPECT_EQ(s3xml::Unescape("&lol9;&#0;&#x110000;&#xD800;&;&amp"),
            "&lol9;&#0;&#x110000;&#xD800;&;&amp");
  EXPECT_EQ(s3xml::Text("<!DOCTYPE x [<!ENTITY a \"b\">]><Code>&a;</Code>", "Code"), "&a;");
  std::string deep(1 << 20, '<');
  EXPECT_TRUE(s3xml::Elements(deep, "Key").empty());
}

// ---- The client against a scripted server ----

std::string ListPage(const std::vector<std::string>& keys, const std::string& next) {
  std::string xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult>";
  for (const std::string& k : keys) {
    absl::StrAppend(&xml, "<Contents><Key>", s3xml::Escape(k),
                    "</Key><LastModified>2024-05-06T07:08:09.123Z</LastModified>"
                    "<ETag>&quot;e&quot;</ETag><Size>42</Size></Contents>");
  }
  absl::StrAppend(&xml, "<IsTruncated>", next.empty() ? "false" : "true", "</IsTruncated>");
  if (!next.empty())
    absl::StrAppend(&xml, "<NextContinuationToken>", next, "</NextContinuationToken>");
  return xml + "</ListBucketResult>";
}

// Enough of S3 for the client's requests, with an upload id and a
// continuation token that need encoding.
HttpResponse FakeS3(const HttpRequest& r) {
  const std::string q = r.query();
  if (r.method == "POST" && q == "uploads=") {
    return {200,
            {},
            "<InitiateMultipartUploadResult><UploadId>up/load+id=1&amp;x</UploadId>"
            "</InitiateMultipartUploadResult>"};
  }
  if (r.method == "POST" && absl::StartsWith(q, "uploadId=")) {
    return {200,
            {},
            "<CompleteMultipartUploadResult><ETag>&quot;final-3&quot;</ETag>"
            "</CompleteMultipartUploadResult>"};
  }
  if (r.method == "PUT" && absl::StartsWith(q, "partNumber=")) {
    return {200, {{"ETag", absl::StrCat("\"part-", q.substr(11, 1), "\"")}}, ""};
  }
  if (r.method == "PUT") return {200, {{"ETag", "\"abc\""}}, ""};
  if (r.method == "DELETE") return {204, {}, ""};
  if (r.method == "HEAD") {
    return {200,
            {{"Content-Length", "1234"},
             {"Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"},
             {"ETag", "\"h\""}},
            ""};
  }
  if (r.method == "GET" && absl::StrContains(q, "list-type=2")) {
    if (!absl::StrContains(q, "continuation-token"))
      return {200, {}, ListPage({"p/a", "p/b&c"}, "tok+/=1")};
    return {200, {}, ListPage({"p/d"}, "")};
  }
  if (r.method == "GET") {
    const std::string object = "0123456789";
    if (r.Header("range") == "bytes=2-5") {
      return {206, {{"Content-Range", "bytes 2-5/10"}}, object.substr(2, 4)};
    }
    return {200, {}, object};
  }
  return {400, {}, "<Error><Code>BadRequest</Code></Error>"};
}

class S3ClientFakeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.ok());
    ASSERT_TRUE(dir_.ok());
    S3ClientOptions options;
    options.config.endpoint = server_.endpoint();
    options.config.bucket = "test-bucket";
    options.config.region = kRegion;
    options.config.access_key_id = kKey;
    options.config.secret_access_key = kSecret;
    options.config.session_token = "session/token+1";
    options.multipart_threshold = 5 << 20;
    options.part_size = 5 << 20;
    auto client = S3Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  // Every request so far passes S3's signature check.
  void ExpectAllSigned() {
    for (const HttpRequest& r : server_.requests()) {
      EXPECT_EQ(VerifyS3Signature(r, kKey, kSecret, kRegion), "") << r.method << " " << r.target;
      EXPECT_EQ(r.Header("x-amz-security-token"), "session/token+1");
      EXPECT_THAT(r.Header("authorization"), HasSubstr("x-amz-security-token"));
    }
  }

  LoopbackHttpServer server_{FakeS3};
  ScopedTempDir dir_;
  std::unique_ptr<S3Client> client_;
};

TEST_F(S3ClientFakeServerTest, ObjectRequestsAreCanonicalAndSigned) {
  const std::string key = "dir/a b+c~é.bin";
  const std::string encoded = "/test-bucket/dir/a%20b%2Bc~%C3%A9.bin";
  auto put = client_->PutObject(key, "hello");
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->etag, "abc");

  std::string got;
  S3Client::ByteSink sink = [&got](absl::string_view b) {
    got.append(b.data(), b.size());
    return absl::OkStatus();
  };
  ASSERT_TRUE(client_->GetObject(key, sink).ok());
  EXPECT_EQ(got, "0123456789");
  got.clear();
  ASSERT_TRUE(client_->GetObject(key, sink, S3ByteRange{2, 4}).ok());
  EXPECT_EQ(got, "2345");

  auto head = client_->HeadObject(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->size, 1234);
  EXPECT_EQ(head->etag, "h");
  EXPECT_EQ(head->last_modified, absl::FromUnixSeconds(1445412480));
  ASSERT_TRUE(client_->DeleteObject(key).ok());

  std::vector<HttpRequest> reqs = server_.requests();
  ASSERT_EQ(reqs.size(), 5u);
  for (const HttpRequest& r : reqs) EXPECT_EQ(r.path(), encoded);
  EXPECT_EQ(reqs[0].method, "PUT");
  EXPECT_EQ(reqs[0].body, "hello");
  EXPECT_EQ(reqs[0].Header("x-amz-content-sha256"), Sha256Hex("hello"));
  EXPECT_EQ(reqs[2].Header("range"), "bytes=2-5");
  EXPECT_THAT(reqs[2].Header("authorization"), HasSubstr("range"));
  EXPECT_EQ(reqs[3].method, "HEAD");
  EXPECT_EQ(reqs[4].method, "DELETE");
  ExpectAllSigned();
}

TEST_F(S3ClientFakeServerTest, ListingFollowsEncodedContinuationTokens) {
  std::vector<std::string> keys;
  absl::Status s = client_->ListObjects("p/ x", [&keys](const S3ObjectInfo& o) {
    keys.push_back(o.key);
    EXPECT_EQ(o.size, 42);
    EXPECT_EQ(o.etag, "e");
    EXPECT_EQ(o.last_modified, absl::FromUnixMillis(1714979289123));
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(keys, ElementsAre("p/a", "p/b&c", "p/d"));
  std::vector<HttpRequest> reqs = server_.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].target, "/test-bucket?list-type=2&max-keys=1000&prefix=p%2F%20x");
  EXPECT_EQ(
      reqs[1].target,
      "/test-bucket?continuation-token=tok%2B%2F%3D1&list-type=2&max-keys=1000&prefix=p%2F%20x");
  ExpectAllSigned();
}

TEST_F(S3ClientFakeServerTest, MultipartUploadSendsSignedPartsAndCompletes) {
  // 11 MiB with 5 MiB parts: 5 + 5 + 1.
  const std::string path = dir_.path() + "/big";
  std::string data(11 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131) >> 7);
  testutil::WriteFile(path, data);
  auto put = client_->PutObjectFromFile("big", path);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->parts, 3);
  EXPECT_EQ(put->etag, "final-3");

  std::vector<HttpRequest> reqs = server_.requests();
  ASSERT_EQ(reqs.size(), 5u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].query(), "uploads=");
  EXPECT_EQ(reqs[0].Header("content-type"), "application/octet-stream");
  const size_t starts[] = {0, 5 << 20, 10 << 20};
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(reqs[i].method, "PUT");
    EXPECT_EQ(reqs[i].query(), absl::StrCat("partNumber=", i, "&uploadId=up%2Fload%2Bid%3D1%26x"));
    EXPECT_EQ(reqs[i].body, data.substr(starts[i - 1], 5 << 20)) << "part " << i;
  }
  EXPECT_EQ(reqs[4].method, "POST");
  EXPECT_EQ(reqs[4].query(), "uploadId=up%2Fload%2Bid%3D1%26x");
  EXPECT_THAT(reqs[4].body,
              HasSubstr("<Part><PartNumber>1</PartNumber><ETag>\"part-1\"</ETag></Part>"
                        "<Part><PartNumber>2</PartNumber><ETag>\"part-2\"</ETag></Part>"
                        "<Part><PartNumber>3</PartNumber><ETag>\"part-3\"</ETag></Part>"));
  ExpectAllSigned();

  // At the threshold exactly: one PUT.
  server_.ClearRequests();
  data.resize(5 << 20);
  testutil::WriteFile(path, data);
  put = client_->PutObjectFromFile("small", path);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->parts, 0);
  ASSERT_EQ(server_.requests().size(), 1u);
  EXPECT_EQ(server_.requests()[0].body, data);
  ExpectAllSigned();
}

TEST_F(S3ClientFakeServerTest, TheVerifierRejectsWhatS3WouldReject) {
  // The reference verifier is not vacuous: each change S3 would notice
  // breaks it.
  ASSERT_TRUE(client_->ListObjectsPage("p", "t/1").ok());
  ASSERT_TRUE(client_->PutObject("k", "body").ok());
  std::vector<HttpRequest> reqs = server_.requests();
  ASSERT_EQ(reqs.size(), 2u);
  HttpRequest list = reqs[0], put = reqs[1];
  ASSERT_EQ(VerifyS3Signature(list, kKey, kSecret, kRegion), "");
  ASSERT_EQ(VerifyS3Signature(put, kKey, kSecret, kRegion), "");
  EXPECT_NE(VerifyS3Signature(list, kKey, "other-secret", kRegion), "");
  EXPECT_NE(VerifyS3Signature(list, kKey, kSecret, "us-east-1"), "");
  HttpRequest tampered = list;
  tampered.target = "/test-bucket?continuation-token=t%2F1&list-type=2&max-keys=1000&prefix=q";
  EXPECT_NE(VerifyS3Signature(tampered, kKey, kSecret, kRegion), "");
  tampered = put;
  tampered.body = "bodx";
  EXPECT_NE(VerifyS3Signature(tampered, kKey, kSecret, kRegion), "");
  tampered = put;
  tampered.target = "/test-bucket/K";
  EXPECT_NE(VerifyS3Signature(tampered, kKey, kSecret, kRegion), "");
  tampered = put;
  for (auto& [name, value] : tampered.headers) {
    if (absl::EqualsIgnoreCase(name, "x-amz-date")) value = "20200101T000000Z";
  }
  EXPECT_NE(VerifyS3Signature(tampered, kKey, kSecret, kRegion), "");
}

TEST_F(S3ClientFakeServerTest, AbortIsASignedDeleteOfTheUpload) {
  ASSERT_TRUE(client_->AbortMultipartUpload("k", "id/1").ok());
  ASSERT_EQ(server_.requests().size(), 1u);
  EXPECT_EQ(server_.requests()[0].method, "DELETE");
  EXPECT_EQ(server_.requests()[0].target, "/test-bucket/k?uploadId=id%2F1");
  ExpectAllSigned();
}

TEST_F(S3ClientFakeServerTest, PartSizeGrowsToStayWithinTenThousandParts) {
  EXPECT_EQ(client_->PartSizeFor(int64_t{11} << 20), 5 << 20);
  const int64_t huge = int64_t{100} << 30;  // 100 GiB / 10000 > 5 MiB
  int64_t part = client_->PartSizeFor(huge);
  EXPECT_LE((huge + part - 1) / part, 10000);
  EXPECT_EQ(part % (1 << 20), 0);
}

TEST_F(S3ClientFakeServerTest, ASinkErrorStopsTheDownload) {
  absl::Status s = client_->GetObject(
      "k", [](absl::string_view) { return absl::ResourceExhaustedError("disk full"); });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("disk full"));
}

TEST(S3ClientOptionsTest, RejectsPartsS3WouldRefuse) {
  S3ClientOptions options;
  options.config.endpoint = "http://127.0.0.1:1";
  options.config.bucket = "bucket";
  options.config.access_key_id = "a";
  options.config.secret_access_key = "b";
  options.part_size = 4 << 20;
  EXPECT_EQ(S3Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.part_size = 5 << 20;
  options.multipart_threshold = (int64_t{5} << 30) + 1;
  EXPECT_EQ(S3Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Errors ----

HttpResponse ErrorResponse(int status, const std::string& code, const std::string& message) {
  return {status,
          {{"Content-Type", "application/xml"}},
          absl::StrCat("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>", code,
                       "</Code><Message>", message, "</Message><RequestId>r</RequestId></Error>")};
}

HttpResponse FailingS3(const HttpRequest& r) {
  const std::string path = r.path();
  if (absl::EndsWith(path, "/missing")) {
    if (r.method == "HEAD") return {404, {}, ""};
    return ErrorResponse(404, "NoSuchKey", "The specified key does not exist.");
  }
  if (absl::EndsWith(path, "/forbidden"))
    return ErrorResponse(403, "AccessDenied", "Access Denied");
  if (absl::EndsWith(path, "/slow"))
    return ErrorResponse(503, "SlowDown", "Please reduce your request rate.");
  if (absl::EndsWith(path, "/broken"))
    return ErrorResponse(500, "InternalError", "We encountered an internal error.");
  if (absl::EndsWith(path, "/range"))
    return ErrorResponse(416, "InvalidRange", "The requested range is not satisfiable");
  if (absl::EndsWith(path, "/norange")) return {200, {}, "whole object"};
  if (absl::EndsWith(path, "/complete") && r.method == "POST") {
    return {200,
            {},
            "<?xml version=\"1.0\"?>\n<Error><Code>InternalError</Code>"
            "<Message>We encountered an internal error. Please try again.</Message></Error>"};
  }
  if (absl::EndsWith(path, "/bad")) return ErrorResponse(400, "InvalidArgument", "bad &amp; wrong");
  return {200, {}, ""};
}

class S3ClientErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.ok());
    S3ClientOptions options;
    options.config.endpoint = server_.endpoint();
    options.config.bucket = "b-1";
    options.config.access_key_id = kKey;
    options.config.secret_access_key = kSecret;
    client_ = std::move(S3Client::Create(options).value());
  }
  absl::Status Get(const std::string& key, std::optional<S3ByteRange> range = std::nullopt) {
    return client_->GetObject(
        key, [](absl::string_view) { return absl::OkStatus(); }, range);
  }

  LoopbackHttpServer server_{FailingS3};
  std::unique_ptr<S3Client> client_;
};

TEST_F(S3ClientErrorTest, HttpStatusesMapToAbslCodesWithS3Detail) {
  absl::Status s = Get("missing");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("s3://b-1/missing"));
  EXPECT_THAT(s.message(), HasSubstr("NoSuchKey: The specified key does not exist."));
  EXPECT_EQ(client_->HeadObject("missing").status().code(), absl::StatusCode::kNotFound);

  s = Get("forbidden");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("AccessDenied: Access Denied"));

  s = client_->PutObject("slow", "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("HTTP 503 SlowDown: Please reduce your request rate."));

  s = client_->DeleteObject("broken");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("InternalError"));

  s = Get("range", S3ByteRange{100, 5});
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);

  s = Get("bad");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("bad & wrong"));

  // A server that ignores Range would hand over the wrong bytes.
  s = Get("norange", S3ByteRange{3, 2});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);

  // 200 with an <Error> body: S3's way of failing a CompleteMultipartUpload.
  auto done = client_->CompleteMultipartUpload("complete", "u", {{1, "e"}});
  EXPECT_EQ(done.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(done.status().message(), HasSubstr("InternalError"));
}

TEST(S3ClientConnectionTest, NothingListeningIsUnavailable) {
  int port;
  {  // a port that was free a moment ago and has no listener now
    LoopbackHttpServer probe([](const HttpRequest&) { return HttpResponse{}; });
    port = probe.port();
  }
  S3ClientOptions options;
  options.config.endpoint = absl::StrCat("http://127.0.0.1:", port);
  options.config.bucket = "bucket";
  options.config.access_key_id = kKey;
  options.config.secret_access_key = kSecret;
  auto client = S3Client::Create(options);
  ASSERT_TRUE(client.ok());
  absl::StatusOr<S3ObjectInfo> head = (*client)->HeadObject("k");
  EXPECT_EQ(head.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(head.status().message(), HasSubstr("s3://bucket/k"));
}

}  // namespace
}  // namespace compress::store
