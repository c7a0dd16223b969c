#include "server/catalog/catalog.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/catalog/engine_describer.h"
#include "server/util/sha256.h"
#include "tests/test_util.h"
#include "tests/zip_util.h"

namespace compress::catalog {
namespace {

using store::BlobStore;
using store::kDefaultTenant;
using store::MetadataStore;
using store::OpenMetadataStore;

namespace v1 = compress::v1;
using ::compress::testutil::FilesUnder;
using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

const std::string kTenant = kDefaultTenant;

constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

const nlohmann::json& Expected() {
  static const nlohmann::json* expected = [] {
    std::ifstream in(FixturePath("expected.json"));
    return new nlohmann::json(nlohmann::json::parse(in));
  }();
  return *expected;
}

// Example count of a gzipped IDX label file, read independently of the
// engine: the gzip trailer holds the uncompressed size, which is an 8-byte
// header plus one byte per label.
int64_t IdxLabelCount(const std::string& path) {
  std::string gz = ReadFile(path);
  if (gz.size() < 18) return -1;
  const unsigned char* t = reinterpret_cast<const unsigned char*>(gz.data() + gz.size() - 4);
  int64_t isize =
      int64_t{t[0]} | (int64_t{t[1]} << 8) | (int64_t{t[2]} << 16) | (int64_t{t[3]} << 24);
  return isize - 8;
}

v1::UploadHeader Header(const std::string& bytes, const std::string& name = "upload") {
  v1::UploadHeader h;
  h.set_name(name);
  h.set_size_bytes(static_cast<int64_t>(bytes.size()));
  h.set_sha256(Sha256Hex(bytes));
  return h;
}

class CatalogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    auto blobs = BlobStore::Create(dir_.path() + "/data");
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = std::move(*blobs);
    auto metadata = OpenMetadataStore(dir_.path() + "/meta.db");
    ASSERT_TRUE(metadata.ok()) << metadata.status();
    metadata_ = std::move(*metadata);
    options_.max_model_bytes = 1 << 20;
    options_.max_dataset_bytes = 2 << 20;
    options_.fashion_mnist_dir = kFashionMnistDir;
    auto catalog = Catalog::Create(options_, blobs_.get(), metadata_.get(), &describer_);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    catalog_ = std::move(*catalog);
  }

  // Streams `bytes` in chunks under `header`.
  absl::StatusOr<std::unique_ptr<Catalog::Upload>> Stream(ResourceKind kind,
                                                          const v1::UploadHeader& header,
                                                          const std::string& bytes,
                                                          size_t chunk = 1000) {
    auto up = catalog_->BeginUpload(kTenant, kind, header);
    if (!up.ok()) return up.status();
    for (size_t p = 0; p < bytes.size(); p += chunk) {
      absl::Status s = (*up)->Append(absl::string_view(bytes).substr(p, chunk));
      if (!s.ok()) return s;
    }
    return up;
  }
  absl::StatusOr<v1::Model> UploadModel(const std::string& bytes, const std::string& name) {
    auto up = Stream(ResourceKind::kModel, Header(bytes, name), bytes);
    if (!up.ok()) return up.status();
    return catalog_->FinishModelUpload(std::move(*up));
  }
  absl::StatusOr<v1::Dataset> UploadDataset(const std::string& bytes, const std::string& name) {
    auto up = Stream(ResourceKind::kDataset, Header(bytes, name), bytes);
    if (!up.ok()) return up.status();
    return catalog_->FinishDatasetUpload(std::move(*up));
  }
  std::vector<std::string> BlobFiles() const { return FilesUnder(dir_.path() + "/data/blobs"); }
  std::vector<std::string> TmpFiles() const { return FilesUnder(dir_.path() + "/data/tmp"); }
  void ExpectNothingLeft() {
    EXPECT_THAT(BlobFiles(), IsEmpty());
    EXPECT_THAT(TmpFiles(), IsEmpty());
  }
  // Puts a job referencing the ids into the store directly (as JobManager
  // does with the ids its kind handler lists).
  v1::Job InsertJobUsing(const std::string& job_id, const std::string& model_id,
                         const std::string& dataset_id, v1::JobState state) {
    v1::Job job;
    job.set_id(job_id);
    job.set_kind(v1::JOB_KIND_INSPECT);
    job.set_state(state);
    job.mutable_spec()->mutable_inspect()->set_model_id(model_id);
    job.mutable_spec()->mutable_inspect()->set_dataset_id(dataset_id);
    std::vector<std::string> ids;
    for (const std::string& id : {model_id, dataset_id}) {
      if (!id.empty()) ids.push_back(id);
    }
    EXPECT_TRUE(metadata_->InsertJob(kTenant, job, ids).ok());
    return job;
  }

  ScopedTempDir dir_;
  CatalogOptions options_;
  EngineDescriber describer_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<MetadataStore> metadata_;
  std::unique_ptr<Catalog> catalog_;
};

// --- Header validation ----------------------------------------------------

TEST_F(CatalogTest, BeginUploadValidatesHeader) {
  const std::string sha = Sha256Hex("x");
  struct Case {
    int64_t size;
    std::string sha;
    absl::StatusCode code;
    const char* field;
  };
  const Case cases[] = {
      {0, sha, absl::StatusCode::kInvalidArgument, "size_bytes"},
      {-5, sha, absl::StatusCode::kInvalidArgument, "size_bytes"},
      {10, "", absl::StatusCode::kInvalidArgument, "sha256"},
      {10, sha.substr(1), absl::StatusCode::kInvalidArgument, "sha256"},
      {10, sha + "0", absl::StatusCode::kInvalidArgument, "sha256"},
      {10, absl::AsciiStrToUpper(sha), absl::StatusCode::kInvalidArgument, "sha256"},
      {10, std::string(64, 'g'), absl::StatusCode::kInvalidArgument, "sha256"},
      {(1 << 20) + 1, sha, absl::StatusCode::kResourceExhausted, "size_bytes"},
  };
  for (const Case& c : cases) {
    v1::UploadHeader h;
    h.set_size_bytes(c.size);
    h.set_sha256(c.sha);
    auto up = catalog_->BeginUpload(kTenant, ResourceKind::kModel, h);
    EXPECT_EQ(up.status().code(), c.code) << c.size << " " << c.sha;
    EXPECT_THAT(std::string(up.status().message()), HasSubstr(c.field));
  }
  EXPECT_THAT(TmpFiles(), IsEmpty());

  // The limit itself is fine; each kind has its own limit.
  v1::UploadHeader at_limit;
  at_limit.set_size_bytes(1 << 20);
  at_limit.set_sha256(sha);
  EXPECT_TRUE(catalog_->BeginUpload(kTenant, ResourceKind::kModel, at_limit).ok());
  at_limit.set_size_bytes((1 << 20) + 1);
  EXPECT_TRUE(catalog_->BeginUpload(kTenant, ResourceKind::kDataset, at_limit).ok());
  at_limit.set_size_bytes((2 << 20) + 1);
  EXPECT_EQ(catalog_->BeginUpload(kTenant, ResourceKind::kDataset, at_limit).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(TmpFiles(), IsEmpty());  // abandoned uploads leave no temp files
}

// Names are listed with every model and dataset: bounded, UTF-8 (the
// catalog may be called with bytes gRPC never parsed) and printable.
TEST_F(CatalogTest, BeginUploadChecksTheName) {
  v1::UploadHeader h;
  h.set_size_bytes(10);
  h.set_sha256(Sha256Hex("x"));
  auto message = [&](const std::string& name) {
    h.set_name(name);
    auto up = catalog_->BeginUpload(kTenant, ResourceKind::kDataset, h);
    EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument) << name.substr(0, 80);
    return std::string(up.status().message());
  };
  EXPECT_EQ(message(std::string(3500000, 'n')),
            "header.name: 3500000 bytes is over the server limit of 256 (--max_name_bytes)");
  EXPECT_EQ(message("calib\xff.pt"), "header.name: not valid UTF-8 (byte 5 of \"calib\\xff.pt\")");
  EXPECT_EQ(message("a\nb"),
            "header.name: control character at byte 1 of \"a\\nb\"; names are printable text");
  EXPECT_THAT(message("x\x1b[2J"), HasSubstr("control character at byte 1"));
  EXPECT_THAT(message("x\xc2\x9b"
                      "2J"),
              HasSubstr("control character at byte 1"));  // C1 CSI
  EXPECT_THAT(message("tab\there"), HasSubstr("control character at byte 3"));
  // The error repeats a bounded prefix of a long bad name.
  EXPECT_LT(message(std::string(200, 'a') + "\x01").size(), 200u);

  for (const std::string& ok :
       {std::string(256, 'k'), std::string(""), std::string("r\u00e9seau \u4e2d (v2).pt")}) {
    h.set_name(ok);
    EXPECT_TRUE(catalog_->BeginUpload(kTenant, ResourceKind::kDataset, h).ok()) << ok;
  }
  EXPECT_THAT(TmpFiles(), IsEmpty());
}

TEST_F(CatalogTest, AppendBeyondDeclaredSizeIsInvalidArgument) {
  std::string bytes(100, 'a');
  auto up = catalog_->BeginUpload(kTenant, ResourceKind::kModel, Header(bytes));
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Append(bytes.substr(0, 60)).ok());
  ASSERT_TRUE((*up)->Append(bytes.substr(60, 40)).ok());
  EXPECT_EQ((*up)->received(), 100);
  absl::Status s = (*up)->Append("b");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("size_bytes"));
  EXPECT_EQ((*up)->received(), 100);
  up->reset();
  ExpectNothingLeft();

  // One oversized chunk is refused whole.
  auto up2 = catalog_->BeginUpload(kTenant, ResourceKind::kDataset, Header(bytes));
  ASSERT_TRUE(up2.ok());
  EXPECT_EQ((*up2)->Append(bytes + "c").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*up2)->received(), 0);
}

// --- Models ---------------------------------------------------------------

TEST_F(CatalogTest, ModelUploadDescribesTheModel) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  ASSERT_FALSE(bytes.empty());
  auto model = UploadModel(bytes, "tiny_mlp.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->id(), Sha256Hex(bytes));
  EXPECT_EQ(model->id(), *Sha256File(FixturePath("tiny_mlp.pt")));
  EXPECT_EQ(model->name(), "tiny_mlp.pt");
  EXPECT_EQ(model->size_bytes(), static_cast<int64_t>(bytes.size()));
  EXPECT_EQ(model->format(), v1::MODEL_FORMAT_TORCHSCRIPT);
  EXPECT_GT(model->create_time().seconds(), 1600000000);

  const nlohmann::json& want = Expected()["models"]["tiny_mlp.pt"];
  EXPECT_EQ(model->num_parameters(), want["num_parameters"].get<int64_t>());
  ASSERT_EQ(model->layers_size(), static_cast<int>(want["layers"].size()));
  for (int i = 0; i < model->layers_size(); ++i) {
    const v1::Layer& got = model->layers(i);
    const nlohmann::json& exp = want["layers"][i];
    EXPECT_EQ(got.name(), exp["name"].get<std::string>());
    EXPECT_EQ(got.kind(), exp["kind"].get<std::string>());
    EXPECT_EQ(got.numel(), exp["numel"].get<int64_t>());
    ASSERT_EQ(got.parameters_size(), static_cast<int>(exp["parameters"].size()));
    for (int p = 0; p < got.parameters_size(); ++p) {
      EXPECT_EQ(got.parameters(p).name(), exp["parameters"][p]["name"].get<std::string>());
      EXPECT_EQ(got.parameters(p).numel(), exp["parameters"][p]["numel"].get<int64_t>());
      EXPECT_THAT(got.parameters(p).shape(),
                  ElementsAreArray(exp["parameters"][p]["shape"].get<std::vector<int64_t>>()));
      EXPECT_EQ(got.parameters(p).dtype(), exp["parameters"][p]["dtype"].get<std::string>());
    }
  }

  // Stored: bytes under the digest, row readable, listed.
  EXPECT_EQ(catalog_->ModelPath(model->id()), blobs_->PathFor(model->id()));
  EXPECT_EQ(ReadFile(catalog_->ModelPath(model->id())), bytes);
  EXPECT_THAT(BlobFiles(), SizeIs(1));
  EXPECT_THAT(TmpFiles(), IsEmpty());
  auto got = catalog_->GetModel(kTenant, model->id());
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, *model));
  auto list = catalog_->ListModels(kTenant, 10, "");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->items.size(), 1u);
  EXPECT_EQ(list->items[0].id(), model->id());
}

TEST_F(CatalogTest, SameModelBytesTwiceIsOneModel) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  auto first = UploadModel(bytes, "first.pt");
  ASSERT_TRUE(first.ok()) << first.status();
  // Different chunking, different name: same model.
  auto up = Stream(ResourceKind::kModel, Header(bytes, "second.pt"), bytes, 7);
  ASSERT_TRUE(up.ok());
  auto second = catalog_->FinishModelUpload(std::move(*up));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->id(), first->id());
  EXPECT_TRUE(MessageDifferencer::Equals(*second, *first));
  EXPECT_THAT(BlobFiles(), SizeIs(1));
  EXPECT_THAT(TmpFiles(), IsEmpty());
  EXPECT_EQ(catalog_->ListModels(kTenant, 10, "")->items.size(), 1u);
}

TEST_F(CatalogTest, ConcurrentUploadsOfTheSameModel) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  constexpr int kThreads = 3;
  std::vector<absl::StatusOr<v1::Model>> results(kThreads, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { results[t] = UploadModel(bytes, absl::StrCat("t", t)); });
  }
  for (auto& th : threads) th.join();
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->id(), Sha256Hex(bytes));
  }
  EXPECT_EQ(catalog_->ListModels(kTenant, 10, "")->items.size(), 1u);
  EXPECT_THAT(BlobFiles(), SizeIs(1));
  EXPECT_THAT(TmpFiles(), IsEmpty());
}

TEST_F(CatalogTest, StreamEndedEarlyLeavesNothing) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  auto up = Stream(ResourceKind::kModel, Header(bytes), bytes.substr(0, bytes.size() - 10));
  ASSERT_TRUE(up.ok());
  auto model = catalog_->FinishModelUpload(std::move(*up));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("stream ended early"));
  ExpectNothingLeft();
  EXPECT_EQ(catalog_->GetModel(kTenant, Sha256Hex(bytes)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CatalogTest, DigestMismatchLeavesNothing) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  std::string tampered = bytes;
  tampered[tampered.size() / 2] ^= 0x01;
  // Header describes `bytes`, the stream carries `tampered` (same size).
  auto up = Stream(ResourceKind::kModel, Header(bytes), tampered);
  ASSERT_TRUE(up.ok());
  auto model = catalog_->FinishModelUpload(std::move(*up));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("sha256"));
  ExpectNothingLeft();
  EXPECT_EQ(catalog_->GetModel(kTenant, Sha256Hex(bytes)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(catalog_->GetModel(kTenant, Sha256Hex(tampered)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CatalogTest, NotTorchScriptLeavesNothing) {
  for (const char* name : {"not_a_model.bin", "not_a_model.zip", "plain_pickle.pkl",
                           "tiny.safetensors", "tiny_torchsave.pt"}) {
    SCOPED_TRACE(name);
    const std::string bytes = ReadFile(FixturePath(name));
    ASSERT_FALSE(bytes.empty());
    auto model = UploadModel(bytes, name);
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(model.status().message()), HasSubstr("TorchScript"));
    ExpectNothingLeft();
    EXPECT_EQ(catalog_->GetModel(kTenant, Sha256Hex(bytes)).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_THAT(catalog_->ListModels(kTenant, 10, "")->items, IsEmpty());
}

TEST_F(CatalogTest, FailedModelUploadKeepsBlobOfADatasetWithTheSameBytes) {
  const std::string bytes = ReadFile(FixturePath("tiny.safetensors"));
  auto dataset = UploadDataset(bytes, "tiny.safetensors");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  auto model = UploadModel(bytes, "tiny.safetensors");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(blobs_->Contains(dataset->id()));
  EXPECT_EQ(ReadFile(catalog_->DatasetPath(dataset->id())), bytes);
}

TEST_F(CatalogTest, FinishWithTheWrongKindIsRefused) {
  const std::string bytes = ReadFile(FixturePath("tiny.safetensors"));
  auto up = Stream(ResourceKind::kDataset, Header(bytes), bytes);
  ASSERT_TRUE(up.ok());
  EXPECT_FALSE(catalog_->FinishModelUpload(std::move(*up)).ok());
  ExpectNothingLeft();
}

TEST_F(CatalogTest, DeleteModel) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  auto model = UploadModel(bytes, "m.pt");
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(catalog_->DeleteModel(kTenant, "no-such-model").code(), absl::StatusCode::kNotFound);

  v1::Job job = InsertJobUsing("job-1", model->id(), "", v1::JOB_STATE_QUEUED);
  absl::Status s = catalog_->DeleteModel(kTenant, model->id());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  job.set_state(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(metadata_->UpdateJob(job).ok());
  EXPECT_EQ(catalog_->DeleteModel(kTenant, model->id()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(catalog_->GetModel(kTenant, model->id()).ok());
  EXPECT_TRUE(blobs_->Contains(model->id()));

  job.set_state(v1::JOB_STATE_SUCCEEDED);
  ASSERT_TRUE(metadata_->UpdateJob(job).ok());
  EXPECT_TRUE(catalog_->DeleteModel(kTenant, model->id()).ok());
  EXPECT_EQ(catalog_->GetModel(kTenant, model->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(blobs_->Contains(model->id()));
  ExpectNothingLeft();
  EXPECT_EQ(catalog_->DeleteModel(kTenant, model->id()).code(), absl::StatusCode::kNotFound);

  // Uploading again after a delete works.
  auto again = UploadModel(bytes, "m.pt");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), model->id());
}

TEST_F(CatalogTest, DeleteModelKeepsBlobStillUsedByAnArtifact) {
  const std::string bytes = ReadFile(FixturePath("tiny_mlp.pt"));
  auto model = UploadModel(bytes, "m.pt");
  ASSERT_TRUE(model.ok());
  v1::Artifact a;
  a.set_job_id("job-x");
  a.set_name("model.pt");
  a.set_sha256(model->id());
  ASSERT_TRUE(metadata_->PutArtifact(a).ok());
  EXPECT_TRUE(catalog_->DeleteModel(kTenant, model->id()).ok());
  EXPECT_EQ(catalog_->GetModel(kTenant, model->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(blobs_->Contains(model->id()));
}

// --- Datasets -------------------------------------------------------------

TEST_F(CatalogTest, DatasetUploadDescribesTheDataset) {
  const std::string bytes = ReadFile(FixturePath("tiny.safetensors"));
  auto dataset = UploadDataset(bytes, "tiny.safetensors");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  const nlohmann::json& want = Expected()["datasets"]["tiny.safetensors"];
  EXPECT_EQ(dataset->id(), Sha256Hex(bytes));
  EXPECT_EQ(dataset->name(), "tiny.safetensors");
  EXPECT_EQ(dataset->size_bytes(), static_cast<int64_t>(bytes.size()));
  EXPECT_EQ(dataset->format(), v1::DATASET_FORMAT_SAFETENSORS);
  EXPECT_FALSE(dataset->builtin());
  EXPECT_EQ(dataset->num_examples(), want["num_examples"].get<int64_t>());
  EXPECT_THAT(dataset->input_shape(),
              ElementsAreArray(want["input_shape"].get<std::vector<int64_t>>()));
  EXPECT_EQ(dataset->input_dtype(), want["input_dtype"].get<std::string>());
  EXPECT_EQ(dataset->has_targets(), want["has_targets"].get<bool>());
  EXPECT_THAT(dataset->target_shape(),
              ElementsAreArray(want["target_shape"].get<std::vector<int64_t>>()));
  EXPECT_EQ(dataset->target_dtype(), want["target_dtype"].get<std::string>());
  EXPECT_EQ(catalog_->DatasetPath(dataset->id()), blobs_->PathFor(dataset->id()));
  EXPECT_EQ(ReadFile(catalog_->DatasetPath(dataset->id())), bytes);

  // Dedup.
  auto again = UploadDataset(bytes, "other name");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id(), dataset->id());
  EXPECT_EQ(again->name(), "tiny.safetensors");
  EXPECT_THAT(BlobFiles(), SizeIs(1));
}

TEST_F(CatalogTest, TorchSaveDataset) {
  const std::string bytes = ReadFile(FixturePath("tiny_torchsave.pt"));
  auto dataset = UploadDataset(bytes, "tiny_torchsave.pt");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  const nlohmann::json& want = Expected()["datasets"]["tiny_torchsave.pt"];
  EXPECT_EQ(dataset->format(), v1::DATASET_FORMAT_TORCH_SAVE);
  EXPECT_EQ(dataset->num_examples(), want["num_examples"].get<int64_t>());
  EXPECT_THAT(dataset->target_shape(),
              ElementsAreArray(want["target_shape"].get<std::vector<int64_t>>()));
}

TEST_F(CatalogTest, InvalidDatasetsLeaveNothing) {
  for (const char* name : {"missing_inputs.safetensors", "mismatched_targets.safetensors",
                           "not_a_model.bin", "plain_pickle.pkl", "not_a_model.zip"}) {
    SCOPED_TRACE(name);
    const std::string bytes = ReadFile(FixturePath(name));
    ASSERT_FALSE(bytes.empty());
    auto dataset = UploadDataset(bytes, name);
    EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument);
    ExpectNothingLeft();
    EXPECT_EQ(catalog_->GetDataset(kTenant, Sha256Hex(bytes)).status().code(), absl::StatusCode::kNotFound);
  }
}

TEST_F(CatalogTest, DeleteDatasetRefusedWhileAJobUsesIt) {
  const std::string bytes = ReadFile(FixturePath("tiny.safetensors"));
  auto dataset = UploadDataset(bytes, "d");
  ASSERT_TRUE(dataset.ok());
  v1::Job job = InsertJobUsing("job-1", "some-model", dataset->id(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(catalog_->DeleteDataset(kTenant, dataset->id()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(blobs_->Contains(dataset->id()));
  job.set_state(v1::JOB_STATE_FAILED);
  ASSERT_TRUE(metadata_->UpdateJob(job).ok());
  EXPECT_TRUE(catalog_->DeleteDataset(kTenant, dataset->id()).ok());
  EXPECT_EQ(catalog_->GetDataset(kTenant, dataset->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(blobs_->Contains(dataset->id()));
  EXPECT_EQ(catalog_->DeleteDataset(kTenant, dataset->id()).code(), absl::StatusCode::kNotFound);
}

// --- Builtin datasets -----------------------------------------------------

TEST_F(CatalogTest, BuiltinFashionMnistRegistered) {
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "no " << kFashionMnistDir;
  struct Split {
    const char* name;
    const char* labels;
  };
  for (const Split& split :
       {Split{"train", "train-labels-idx1-ubyte.gz"}, Split{"test", "t10k-labels-idx1-ubyte.gz"}}) {
    SCOPED_TRACE(split.name);
    std::string id = absl::StrCat("builtin:fashion-mnist/", split.name);
    auto d = catalog_->GetDataset(kTenant, id);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->builtin());
    EXPECT_EQ(d->format(), v1::DATASET_FORMAT_IDX);
    int64_t count = IdxLabelCount(absl::StrCat(kFashionMnistDir, "/", split.labels));
    EXPECT_EQ(d->num_examples(), count);
    EXPECT_EQ(d->num_examples(),
              Expected()["builtin_fashion_mnist"][split.name]["num_examples"].get<int64_t>());
    EXPECT_THAT(d->input_shape(), ElementsAre(1, 28, 28));
    EXPECT_TRUE(d->has_targets());
    EXPECT_THAT(d->target_shape(), IsEmpty());
    EXPECT_EQ(catalog_->DatasetPath(id), id);

    EXPECT_EQ(catalog_->DeleteDataset(kTenant, id).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(catalog_->GetDataset(kTenant, id).ok());
  }
  EXPECT_EQ(catalog_->ListDatasets(kTenant, 10, "")->items.size(), 2u);
  EXPECT_EQ(catalog_->fashion_mnist_dir(), kFashionMnistDir);

  // A second Create on the same store does not duplicate them.
  auto again = Catalog::Create(options_, blobs_.get(), metadata_.get(), &describer_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->ListDatasets(kTenant, 10, "")->items.size(), 2u);
}

TEST_F(CatalogTest, NoBuiltinsWithoutDirectory) {
  for (const std::string& dir : {std::string(), dir_.path() + "/no-such-dir"}) {
    auto metadata = OpenMetadataStore(":memory:");
    ASSERT_TRUE(metadata.ok());
    CatalogOptions options;
    options.fashion_mnist_dir = dir;
    auto catalog = Catalog::Create(options, blobs_.get(), metadata->get(), &describer_);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    EXPECT_THAT((*catalog)->ListDatasets(kTenant, 10, "")->items, IsEmpty());
  }
}


// --- Archive members and hostile content -----------------------------------

using ::compress::testutil::Deflated;
using ::compress::testutil::DeflateStored;
using ::compress::testutil::Stored;
using ::compress::testutil::Unzip;
using ::compress::testutil::Zip;
using ::compress::testutil::ZipFile;

// A fixture's members plus one more, deflated, that declares `declared`
// bytes (its stream holds far fewer: the catalog must refuse before anyone
// inflates it).
std::string WithDeclaredMember(const std::string& fixture, const std::string& member,
                               uint64_t declared) {
  std::vector<ZipFile> files = Unzip(ReadFile(FixturePath(fixture)));
  files.insert(files.begin(), Deflated(member, DeflateStored(std::string(1000, '\0')), declared, 0));
  return Zip(files);
}

TEST_F(CatalogTest, RepackedArchivesStillLoad) {
  // The helper's own archives are readable by LibTorch when honest, deflated
  // members included: what the tests below refuse is the lie, not the form.
  std::vector<ZipFile> files = Unzip(ReadFile(FixturePath("tiny_torchsave.pt")));
  ASSERT_EQ(files.size(), 4u);
  ZipFile& data = files[1];
  ASSERT_EQ(data.name, "tiny_torchsave/data/0");
  data = Deflated(data.name, DeflateStored(data.data), data.size, data.crc);
  auto dataset = UploadDataset(Zip(files), "repacked.pt");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->num_examples(), Expected()["datasets"]["tiny_torchsave.pt"]["num_examples"].get<int64_t>());

  auto model = UploadModel(Zip(Unzip(ReadFile(FixturePath("tiny_mlp.pt")))), "repacked_mlp.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->num_parameters(), Expected()["models"]["tiny_mlp.pt"]["num_parameters"].get<int64_t>());
}

TEST_F(CatalogTest, MinizInflatesNoMoreThanADeclaredSize) {
  // Why the catalog may trust declared sizes. A member whose stream holds
  // far more than it declares loads as its declared bytes: miniz inflates
  // into a buffer of the declared size and stops when it is full. One whose
  // stream holds fewer bytes does not load. (The CRC is right for the
  // declared bytes, so only the size is in question.)
  std::vector<ZipFile> files = Unzip(ReadFile(FixturePath("tiny_torchsave.pt")));
  const ZipFile original = files[1];
  ASSERT_EQ(original.name, "tiny_torchsave/data/0");
  files[1] = Deflated(original.name, DeflateStored(original.data + std::string(1 << 20, '\1')),
                      original.size, original.crc);
  auto dataset = UploadDataset(Zip(files), "surplus.pt");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->num_examples(),
            Expected()["datasets"]["tiny_torchsave.pt"]["num_examples"].get<int64_t>());
  ASSERT_TRUE(catalog_->DeleteDataset(kTenant, dataset->id()).ok());

  files[1] = Deflated(original.name, DeflateStored(original.data.substr(0, 40)), original.size,
                      original.crc);
  auto short_one = UploadDataset(Zip(files), "short.pt");
  EXPECT_EQ(short_one.status().code(), absl::StatusCode::kInvalidArgument) << short_one.status();
  ExpectNothingLeft();
}

TEST_F(CatalogTest, ZipBombsAreRefusedNamingTheMemberAndTheLimit) {
  // 1.5 GiB declared by one member of a few-KB archive, as model and as dataset.
  const uint64_t kBomb = uint64_t{3} << 29;
  auto model = UploadModel(WithDeclaredMember("tiny_mlp.pt", "tiny_mlp/data/9", kBomb), "bomb.pt");
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("archive member \"tiny_mlp/data/9\" declares 1610612736 uncompressed"));
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("--max_model_bytes"));
  ExpectNothingLeft();

  auto dataset = UploadDataset(
      WithDeclaredMember("tiny_torchsave.pt", "tiny_torchsave/data/9", kBomb), "bomb.pt");
  ASSERT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument) << dataset.status();
  EXPECT_THAT(std::string(dataset.status().message()), HasSubstr("\"tiny_torchsave/data/9\""));
  EXPECT_THAT(std::string(dataset.status().message()), HasSubstr("--max_dataset_bytes"));
  ExpectNothingLeft();
}

TEST_F(CatalogTest, ArchiveMembersAreBoundedInSum) {
  // The rule: members may declare, in all, at most 4 x the archive + 16 MiB
  // and at most the upload limit (here --max_model_bytes = 1 MiB).
  const std::string fits = WithDeclaredMember("tiny_mlp.pt", "tiny_mlp/extra", 512 << 10);
  EXPECT_TRUE(UploadModel(fits, "fits.pt").ok());
  std::vector<ZipFile> files = Unzip(ReadFile(FixturePath("tiny_mlp.pt")));
  for (int i = 0; i < 3; ++i) {  // each alone fits, three do not
    files.push_back(Deflated(absl::StrCat("tiny_mlp/extra", i), DeflateStored("x"), 400 << 10, 0));
  }
  auto model = UploadModel(Zip(files), "sum.pt");
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("\"tiny_mlp/extra2\""));
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("--max_model_bytes = 1048576"));
}

// Safetensors bytes: an 8-byte header length, the JSON header, `data` zeros.
std::string Safetensors(const std::string& header, size_t data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xFF));
  return out + header + std::string(data, '\0');
}

TEST_F(CatalogTest, BadUploadsNeverNameAServerPath) {
  std::vector<std::pair<std::string, std::string>> datasets = {
      {"neither", ReadFile(FixturePath("not_a_model.bin"))},
      {"pickle", ReadFile(FixturePath("plain_pickle.pkl"))},
      {"no inputs", ReadFile(FixturePath("missing_inputs.safetensors"))},
      {"zero dim", Safetensors(R"({"inputs":{"dtype":"F32","shape":[4,0],"data_offsets":[0,0]}})", 0)},
      {"2^63", Safetensors(R"({"inputs":{"dtype":"F32","shape":[1,0,9223372036854775808],)"
                           R"("data_offsets":[0,0]}})", 0)},
      {"short data", Safetensors(R"({"inputs":{"dtype":"F32","shape":[4,2],"data_offsets":[0,32]}})", 8)},
      {"model as data", ReadFile(FixturePath("tiny_mlp.pt"))},
      {"bomb", WithDeclaredMember("tiny_torchsave.pt", "tiny_torchsave/data/9", uint64_t{1} << 40)},
      {"cut archive", ReadFile(FixturePath("tiny_torchsave.pt")).substr(0, 700)}};
  std::vector<std::pair<std::string, std::string>> models = {
      {"neither", ReadFile(FixturePath("not_a_model.bin"))},
      {"zip", ReadFile(FixturePath("not_a_model.zip"))},
      {"dataset as model", ReadFile(FixturePath("tiny_torchsave.pt"))},
      {"cut archive", ReadFile(FixturePath("tiny_mlp.pt")).substr(0, 5000)},
      {"bomb", WithDeclaredMember("tiny_mlp.pt", "tiny_mlp/data/9", uint64_t{1} << 40)}};
  std::vector<std::string> messages;
  for (const auto& [what, bytes] : datasets) {
    auto d = UploadDataset(bytes, what);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << what << ": " << d.status();
    messages.push_back(absl::StrCat("dataset ", what, ": ", d.status().message()));
  }
  for (const auto& [what, bytes] : models) {
    auto m = UploadModel(bytes, what);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << what << ": " << m.status();
    messages.push_back(absl::StrCat("model ", what, ": ", m.status().message()));
  }
  for (const std::string& m : messages) {
    EXPECT_THAT(m, ::testing::Not(HasSubstr(dir_.path()))) << m;
    EXPECT_THAT(m, ::testing::Not(HasSubstr("/blobs/"))) << m;
  }
  ExpectNothingLeft();
}

}  // namespace
}  // namespace compress::catalog
