#include "server/store/metadata_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/util/sha256.h"
#include "tests/pg_test_util.h"
#include "tests/test_util.h"

namespace compress::store {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::ScopedTempDir;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;

const std::string kTenant = kDefaultTenant;

google::protobuf::Timestamp Ts(int64_t seconds, int32_t nanos = 0) {
  google::protobuf::Timestamp t;
  t.set_seconds(seconds);
  t.set_nanos(nanos);
  return t;
}

v1::Model MakeModel(const std::string& id, int64_t seconds, const std::string& name = "m") {
  v1::Model m;
  m.set_id(id);
  m.set_name(name);
  m.set_size_bytes(1234);
  m.set_format(v1::MODEL_FORMAT_TORCHSCRIPT);
  *m.mutable_create_time() = Ts(seconds);
  m.set_num_parameters(67);
  v1::Layer* l = m.add_layers();
  l->set_name("0");
  l->set_kind("Linear");
  l->set_numel(40);
  return m;
}

v1::Dataset MakeDataset(const std::string& id, int64_t seconds) {
  v1::Dataset d;
  d.set_id(id);
  d.set_name("d");
  d.set_format(v1::DATASET_FORMAT_SAFETENSORS);
  *d.mutable_create_time() = Ts(seconds);
  d.set_num_examples(6);
  d.add_input_shape(1);
  d.add_input_shape(8);
  d.add_input_shape(8);
  return d;
}

v1::Job MakeInspectJob(const std::string& id, int64_t seconds, v1::JobState state,
                       const std::string& model_id = "model-a",
                       const std::string& dataset_id = "") {
  v1::Job j;
  j.set_id(id);
  j.set_kind(v1::JOB_KIND_INSPECT);
  j.set_state(state);
  j.mutable_spec()->mutable_inspect()->set_model_id(model_id);
  j.mutable_spec()->mutable_inspect()->set_dataset_id(dataset_id);
  *j.mutable_create_time() = Ts(seconds);
  return j;
}

v1::JobEvent LogEvent(const std::string& job_id, int64_t seq, const std::string& message) {
  v1::JobEvent e;
  e.set_job_id(job_id);
  e.set_sequence(seq);
  e.mutable_log()->set_level("INFO");
  e.mutable_log()->set_message(message);
  return e;
}

// The contract of MetadataStore, run against each backend: an in-memory
// SQLite database, and a fresh database on the test binary's PostgreSQL.
enum class Backend { kSqlite, kPostgres };

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "sqlite" : "postgresql";
}

void PrintTo(Backend backend, std::ostream* os) {
  *os << (backend == Backend::kSqlite ? "sqlite" : "postgresql");
}

class MetadataStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    std::string database = ":memory:";
    if (GetParam() == Backend::kPostgres) {
      auto pg = testutil::TestPostgres::Get();
      ASSERT_TRUE(pg.ok()) << pg.status();
      auto url = (*pg)->NewDatabase();
      ASSERT_TRUE(url.ok()) << url.status();
      database = *url;
    }
    auto store = OpenMetadataStore(database);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  std::unique_ptr<MetadataStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, MetadataStoreTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres), BackendName);

TEST_P(MetadataStoreTest, ModelRoundTripAndDedup) {
  v1::Model m = MakeModel("abc123", 1700000000, "first.pt");
  auto put = store_->PutModel(kTenant, m);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*put, m));
  auto got = store_->GetModel(kTenant, "abc123");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*got, m)) << got->DebugString();

  // Same id again keeps the first row.
  auto again = store_->PutModel(kTenant, MakeModel("abc123", 1800000000, "second.pt"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->name(), "first.pt");
  EXPECT_EQ(again->create_time().seconds(), 1700000000);
  EXPECT_EQ(store_->ListModels(kTenant, 10, "")->items.size(), 1u);

  EXPECT_EQ(store_->GetModel(kTenant, "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->DeleteModel(kTenant, "abc123").ok());
  EXPECT_EQ(store_->GetModel(kTenant, "abc123").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteModel(kTenant, "abc123").code(), absl::StatusCode::kNotFound);
}

TEST_P(MetadataStoreTest, DatasetRoundTripAndDedup) {
  v1::Dataset d = MakeDataset("ds1", 100);
  ASSERT_TRUE(store_->PutDataset(kTenant, d).ok());
  auto got = store_->GetDataset(kTenant, "ds1");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, d));
  v1::Dataset other = MakeDataset("ds1", 200);
  other.set_name("other");
  EXPECT_EQ(store_->PutDataset(kTenant, other)->name(), "d");
  EXPECT_EQ(store_->GetDataset(kTenant, "x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->DeleteDataset(kTenant, "ds1").ok());
  EXPECT_EQ(store_->DeleteDataset(kTenant, "ds1").code(), absl::StatusCode::kNotFound);
  // Models and datasets are separate tables.
  ASSERT_TRUE(store_->PutModel(kTenant, MakeModel("shared-id", 1)).ok());
  EXPECT_EQ(store_->GetDataset(kTenant, "shared-id").status().code(), absl::StatusCode::kNotFound);
}

// Expected newest-first order, computed independently of the database.
std::vector<std::string> NewestFirst(std::vector<std::tuple<int64_t, std::string>> rows) {
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a > b; });
  std::vector<std::string> ids;
  for (const auto& r : rows) ids.push_back(std::get<1>(r));
  return ids;
}

TEST_P(MetadataStoreTest, ModelPagingWalksAllNewestFirst) {
  std::vector<std::tuple<int64_t, std::string>> rows;
  for (int i = 0; i < 120; ++i) {
    // Ids in an order unrelated to time; three rows share each second so the
    // id breaks ties.
    std::string id = Sha256Hex(absl::StrCat("model-", i));
    int64_t seconds = 1000 + i / 3;
    ASSERT_TRUE(store_->PutModel(kTenant, MakeModel(id, seconds)).ok());
    rows.emplace_back(seconds * 1000000000LL, id);
  }
  std::vector<std::string> expected = NewestFirst(rows);

  std::vector<std::string> seen;
  std::vector<size_t> page_sizes;
  std::string token;
  do {
    auto page = store_->ListModels(kTenant, 50, token);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->items.size());
    for (const v1::Model& m : page->items) seen.push_back(m.id());
    token = page->next_page_token;
    ASSERT_LE(page_sizes.size(), 10u) << "paging does not terminate";
  } while (!token.empty());
  EXPECT_THAT(page_sizes, ElementsAre(50, 50, 20));
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 120u);
}

TEST_P(MetadataStoreTest, PagingExactMultipleHasNoEmptyTrailingPage) {
  std::vector<std::tuple<int64_t, std::string>> rows;
  for (int i = 0; i < 120; ++i) {
    std::string id = absl::StrCat("ds-", i);
    ASSERT_TRUE(store_->PutDataset(kTenant, MakeDataset(id, 5000 - i)).ok());
    rows.emplace_back((5000 - i) * 1000000000LL, id);
  }
  std::vector<std::string> seen;
  std::vector<size_t> page_sizes;
  std::string token;
  do {
    auto page = store_->ListDatasets(kTenant, 40, token);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->items.size());
    for (const v1::Dataset& d : page->items) seen.push_back(d.id());
    token = page->next_page_token;
    ASSERT_LE(page_sizes.size(), 10u);
  } while (!token.empty());
  EXPECT_THAT(page_sizes, ElementsAre(40, 40, 40));
  EXPECT_EQ(seen, NewestFirst(rows));
}

TEST_P(MetadataStoreTest, PageSizeDefaultsAndCap) {
  for (int i = 0; i < 1005; ++i) {
    ASSERT_TRUE(store_->PutDataset(kTenant, MakeDataset(absl::StrCat("d", i), i)).ok());
  }
  auto def = store_->ListDatasets(kTenant, 0, "");
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(def->items.size(), 50u);  // default
  EXPECT_FALSE(def->next_page_token.empty());
  auto negative = store_->ListDatasets(kTenant, -3, "");
  ASSERT_TRUE(negative.ok());
  EXPECT_EQ(negative->items.size(), 50u);
  auto big = store_->ListDatasets(kTenant, 100000, "");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->items.size(), 1000u);  // cap
  auto rest = store_->ListDatasets(kTenant, 100000, big->next_page_token);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(rest->items.size(), 5u);
  EXPECT_TRUE(rest->next_page_token.empty());
  EXPECT_EQ(rest->items.back().id(), "d0");
}

TEST_P(MetadataStoreTest, PagingIsStableWhenNewerRowsArrive) {
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(store_->PutModel(kTenant, MakeModel(absl::StrCat("m", i), i)).ok());
  auto first = store_->ListModels(kTenant, 4, "");
  ASSERT_TRUE(first.ok());
  // A newer upload between pages must not shift the walk.
  ASSERT_TRUE(store_->PutModel(kTenant, MakeModel("newest", 100)).ok());
  std::vector<std::string> seen;
  for (const auto& m : first->items) seen.push_back(m.id());
  std::string token = first->next_page_token;
  while (!token.empty()) {
    auto page = store_->ListModels(kTenant, 4, token);
    ASSERT_TRUE(page.ok());
    for (const auto& m : page->items) seen.push_back(m.id());
    token = page->next_page_token;
  }
  EXPECT_THAT(seen, ElementsAre("m9", "m8", "m7", "m6", "m5", "m4", "m3", "m2", "m1", "m0"));
}

TEST_P(MetadataStoreTest, BadPageTokenIsInvalidArgument) {
  ASSERT_TRUE(store_->PutModel(kTenant, MakeModel("m", 1)).ok());
  for (const std::string& token :
       {std::string("not base64 !!"), absl::WebSafeBase64Escape("no colon"),
        absl::WebSafeBase64Escape("abc:id")}) {
    EXPECT_EQ(store_->ListModels(kTenant, 10, token).status().code(), absl::StatusCode::kInvalidArgument)
        << token;
    EXPECT_EQ(store_->ListDatasets(kTenant, 10, token).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->ListJobs(kTenant, {}, 10, token).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_P(MetadataStoreTest, JobsInsertGetAndUniqueness) {
  v1::Job a = MakeInspectJob("job-a", 10, v1::JOB_STATE_QUEUED);
  a.set_request_id("req-1");
  ASSERT_TRUE(store_->InsertJob(kTenant, a, {}).ok());
  auto got = store_->GetJob(kTenant, "job-a");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, a));
  auto by_req = store_->GetJobByRequestId(kTenant, "req-1");
  ASSERT_TRUE(by_req.ok());
  EXPECT_EQ(by_req->id(), "job-a");
  EXPECT_EQ(store_->GetJobByRequestId(kTenant, "req-2").status().code(), absl::StatusCode::kNotFound);

  // Duplicate id, duplicate request id.
  EXPECT_EQ(store_->InsertJob(kTenant, MakeInspectJob("job-a", 11, v1::JOB_STATE_QUEUED), {}).code(),
            absl::StatusCode::kAlreadyExists);
  v1::Job b = MakeInspectJob("job-b", 11, v1::JOB_STATE_QUEUED);
  b.set_request_id("req-1");
  EXPECT_EQ(store_->InsertJob(kTenant, b, {}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetJob(kTenant, "job-b").status().code(), absl::StatusCode::kNotFound);
  // Jobs without a request id do not collide with each other.
  b.clear_request_id();
  EXPECT_TRUE(store_->InsertJob(kTenant, b, {}).ok());
  EXPECT_TRUE(store_->InsertJob(kTenant, MakeInspectJob("job-c", 12, v1::JOB_STATE_QUEUED), {}).ok());
  EXPECT_EQ(store_->GetJobByRequestId(kTenant, "").status().code(), absl::StatusCode::kNotFound);

  // Update.
  a.set_state(v1::JOB_STATE_SUCCEEDED);
  a.mutable_result()->set_summary("done");
  ASSERT_TRUE(store_->UpdateJob(a).ok());
  EXPECT_EQ(store_->GetJob(kTenant, "job-a")->result().summary(), "done");
  EXPECT_EQ(store_->UpdateJob(MakeInspectJob("ghost", 1, v1::JOB_STATE_QUEUED)).code(),
            absl::StatusCode::kNotFound);
}

TEST_P(MetadataStoreTest, ListJobsFiltersAndPages) {
  std::vector<std::tuple<int64_t, std::string>> queued_rows;
  std::vector<std::tuple<int64_t, std::string>> all_rows;
  for (int i = 0; i < 120; ++i) {
    v1::JobState state = i % 3 == 0 ? v1::JOB_STATE_QUEUED : v1::JOB_STATE_SUCCEEDED;
    std::string id = absl::StrCat("job-", Sha256Hex(absl::StrCat(i)).substr(0, 8));
    v1::Job j = MakeInspectJob(id, 100 + i / 4, state);
    if (i % 5 == 0) {
      j.set_kind(v1::JOB_KIND_ANALYZE);
      j.mutable_spec()->mutable_analyze()->set_model_id("model-a");
    }
    ASSERT_TRUE(store_->InsertJob(kTenant, j, {}).ok());
    int64_t ns = (100 + i / 4) * 1000000000LL;
    all_rows.emplace_back(ns, id);
    if (state == v1::JOB_STATE_QUEUED) queued_rows.emplace_back(ns, id);
  }
  auto walk = [&](const JobFilter& filter, int page_size) {
    std::vector<std::string> ids;
    std::string token;
    int pages = 0;
    do {
      auto page = store_->ListJobs(kTenant, filter, page_size, token);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      for (const auto& j : page->items) ids.push_back(j.id());
      token = page->next_page_token;
    } while (!token.empty() && ++pages < 100);
    return ids;
  };
  EXPECT_EQ(walk({}, 50), NewestFirst(all_rows));
  JobFilter queued;
  queued.state = v1::JOB_STATE_QUEUED;
  EXPECT_EQ(walk(queued, 7), NewestFirst(queued_rows));
  JobFilter analyze;
  analyze.kind = v1::JOB_KIND_ANALYZE;
  EXPECT_EQ(walk(analyze, 50).size(), 24u);
  JobFilter both;
  both.state = v1::JOB_STATE_QUEUED;
  both.kind = v1::JOB_KIND_ANALYZE;
  EXPECT_EQ(walk(both, 3).size(), 8u);  // i % 15 == 0
}

TEST_P(MetadataStoreTest, JobsInStateOldestFirst) {
  ASSERT_TRUE(store_->InsertJob(kTenant, MakeInspectJob("j3", 30, v1::JOB_STATE_RUNNING), {}).ok());
  ASSERT_TRUE(store_->InsertJob(kTenant, MakeInspectJob("j1", 10, v1::JOB_STATE_RUNNING), {}).ok());
  ASSERT_TRUE(store_->InsertJob(kTenant, MakeInspectJob("j2", 20, v1::JOB_STATE_QUEUED), {}).ok());
  ASSERT_TRUE(store_->InsertJob(kTenant, MakeInspectJob("j0", 5, v1::JOB_STATE_FAILED), {}).ok());
  auto running = store_->JobsInState(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(running.ok());
  std::vector<std::string> ids;
  for (const auto& j : *running) ids.push_back(j.id());
  EXPECT_THAT(ids, ElementsAre("j1", "j3"));
  EXPECT_THAT(*store_->JobsInState(v1::JOB_STATE_CANCELLED), IsEmpty());
}

TEST_P(MetadataStoreTest, ReferencedByActiveJobMatchesWholeIds) {
  // The store keeps the ids it is given; it does not read specs.
  ASSERT_TRUE(store_->InsertJob(kTenant, MakeInspectJob("j1", 1, v1::JOB_STATE_QUEUED),
                                {"model-a", "data-b"})
                  .ok());
  v1::Job analyze = MakeInspectJob("j2", 2, v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(store_->InsertJob(kTenant, analyze, {"model-c", "data-d"}).ok());
  ASSERT_TRUE(
      store_->InsertJob(kTenant, MakeInspectJob("j3", 3, v1::JOB_STATE_QUEUED), {"model-e", "data-f"})
          .ok());
  ASSERT_TRUE(
      store_->InsertJob(kTenant, MakeInspectJob("j4", 1, v1::JOB_STATE_SUCCEEDED), {"model-z"}).ok());
  // Another tenant's active job does not hold this tenant's ids.
  ASSERT_TRUE(
      store_->InsertJob("alpha", MakeInspectJob("j5", 1, v1::JOB_STATE_QUEUED), {"model-y"}).ok());

  for (const char* id : {"model-a", "data-b", "model-c", "data-d", "model-e", "data-f"}) {
    auto r = store_->IsReferencedByActiveJob(kTenant, id);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(*r) << id;
  }
  // Finished jobs and partial ids do not count.
  for (const char* id : {"model-z", "model", "a", "odel-a", "model-a-2", "j1", "model-y"}) {
    auto r = store_->IsReferencedByActiveJob(kTenant, id);
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(*r) << "'" << id << "'";
  }
  // Once j1 ends, its ids are free.
  v1::Job j1 = *store_->GetJob(kTenant, "j1");
  j1.set_state(v1::JOB_STATE_CANCELLED);
  ASSERT_TRUE(store_->UpdateJob(j1).ok());
  EXPECT_FALSE(*store_->IsReferencedByActiveJob(kTenant, "model-a"));
  EXPECT_FALSE(*store_->IsReferencedByActiveJob(kTenant, "data-b"));
}

TEST_P(MetadataStoreTest, AppendEventRequiresNextSequence) {
  v1::Job job = MakeInspectJob("j", 1, v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(store_->InsertJob(kTenant, job, {}).ok());
  EXPECT_EQ(store_->AppendEvent(LogEvent("j", 0, "zero")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->AppendEvent(LogEvent("j", 2, "gap")).code(), absl::StatusCode::kAlreadyExists);
  for (int seq = 1; seq <= 5; ++seq) {
    ASSERT_TRUE(store_->AppendEvent(LogEvent("j", seq, absl::StrCat("e", seq))).ok()) << seq;
  }
  EXPECT_EQ(store_->AppendEvent(LogEvent("j", 5, "dup")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->AppendEvent(LogEvent("j", 7, "gap")).code(), absl::StatusCode::kAlreadyExists);
  // Another job has its own numbering.
  EXPECT_TRUE(store_->AppendEvent(LogEvent("other", 1, "o1")).ok());

  auto all = store_->ListEvents("j", 0, 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ((*all)[i].sequence(), i + 1);
    EXPECT_EQ((*all)[i].log().message(), absl::StrCat("e", i + 1));
  }
  auto middle = store_->ListEvents("j", 2, 2);
  ASSERT_TRUE(middle.ok());
  ASSERT_EQ(middle->size(), 2u);
  EXPECT_EQ((*middle)[0].sequence(), 3);
  EXPECT_EQ((*middle)[1].sequence(), 4);
  EXPECT_THAT(*store_->ListEvents("j", 5, 10), IsEmpty());
  EXPECT_THAT(*store_->ListEvents("nobody", 0, 10), IsEmpty());
}

TEST_P(MetadataStoreTest, AppendEventStoresJobInSameTransaction) {
  v1::Job job = MakeInspectJob("j", 1, v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(store_->InsertJob(kTenant, job, {}).ok());
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_last_sequence(1);
  v1::JobEvent e;
  e.set_job_id("j");
  e.set_sequence(1);
  e.mutable_state_change()->set_from(v1::JOB_STATE_QUEUED);
  e.mutable_state_change()->set_to(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(store_->AppendEvent(e, &job).ok());
  EXPECT_EQ(store_->GetJob(kTenant, "j")->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(store_->GetJob(kTenant, "j")->last_sequence(), 1);
  EXPECT_THAT(*store_->JobsInState(v1::JOB_STATE_QUEUED), IsEmpty());

  // A rejected event leaves the job row alone.
  v1::Job bad = job;
  bad.set_state(v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(store_->AppendEvent(LogEvent("j", 3, "gap"), &bad).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetJob(kTenant, "j")->state(), v1::JOB_STATE_RUNNING);

  // A job row that cannot be written rolls the event back.
  v1::Job ghost = MakeInspectJob("ghost", 1, v1::JOB_STATE_RUNNING);
  EXPECT_FALSE(store_->AppendEvent(LogEvent("ghost", 1, "x"), &ghost).ok());
  EXPECT_THAT(*store_->ListEvents("ghost", 0, 10), IsEmpty());
  // ... and the store is still usable (no transaction left open).
  EXPECT_TRUE(store_->AppendEvent(LogEvent("j", 2, "after"), &job).ok());
  EXPECT_TRUE(store_->AppendEvent(LogEvent("ghost", 1, "x")).ok());
}

TEST_P(MetadataStoreTest, ConcurrentAppendsStayGapless) {
  constexpr int kThreads = 4;
  constexpr int kEvents = 50;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(
        store_->InsertJob(kTenant, MakeInspectJob(absl::StrCat("j", t), t, v1::JOB_STATE_QUEUED), {}).ok());
  }
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::string id = absl::StrCat("j", t);
      for (int seq = 1; seq <= kEvents; ++seq) {
        v1::Job job = *store_->GetJob(kTenant, id);
        job.set_last_sequence(seq);
        if (!store_->AppendEvent(LogEvent(id, seq, "x"), &job).ok()) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[t], 0);
    std::string id = absl::StrCat("j", t);
    auto events = store_->ListEvents(id, 0, 1000);
    ASSERT_TRUE(events.ok());
    ASSERT_EQ(events->size(), static_cast<size_t>(kEvents));
    for (int i = 0; i < kEvents; ++i) EXPECT_EQ((*events)[i].sequence(), i + 1);
    EXPECT_EQ(store_->GetJob(kTenant, id)->last_sequence(), kEvents);
  }
}

TEST_P(MetadataStoreTest, Artifacts) {
  v1::Artifact a;
  a.set_job_id("j");
  a.set_name("report.json");
  a.set_size_bytes(3);
  a.set_sha256(Sha256Hex("abc"));
  a.set_content_type("application/json");
  ASSERT_TRUE(store_->PutArtifact(a).ok());
  v1::Artifact b = a;
  b.set_name("model.pt");
  b.set_sha256(Sha256Hex("model"));
  ASSERT_TRUE(store_->PutArtifact(b).ok());

  auto got = store_->GetArtifact("j", "report.json");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, a));
  EXPECT_EQ(store_->GetArtifact("j", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetArtifact("k", "report.json").status().code(), absl::StatusCode::kNotFound);

  // A re-run replaces the row.
  a.set_sha256(Sha256Hex("abd"));
  ASSERT_TRUE(store_->PutArtifact(a).ok());
  auto list = store_->ListArtifacts("j");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name(), "model.pt");
  EXPECT_EQ((*list)[1].name(), "report.json");
  EXPECT_EQ((*list)[1].sha256(), Sha256Hex("abd"));
  EXPECT_THAT(*store_->ListArtifacts("k"), IsEmpty());

  EXPECT_FALSE(*store_->IsBlobReferenced(Sha256Hex("abc")));  // replaced
  EXPECT_TRUE(*store_->IsBlobReferenced(Sha256Hex("abd")));
  EXPECT_TRUE(*store_->IsBlobReferenced(Sha256Hex("model")));
  ASSERT_TRUE(store_->PutModel(kTenant, MakeModel(Sha256Hex("m"), 1)).ok());
  ASSERT_TRUE(store_->PutDataset(kTenant, MakeDataset(Sha256Hex("d"), 1)).ok());
  EXPECT_TRUE(*store_->IsBlobReferenced(Sha256Hex("m")));
  EXPECT_TRUE(*store_->IsBlobReferenced(Sha256Hex("d")));
  EXPECT_FALSE(*store_->IsBlobReferenced(Sha256Hex("nothing")));
  // The mark phase of garbage collection: exactly those four digests.
  auto referenced = store_->ReferencedBlobs();
  ASSERT_TRUE(referenced.ok()) << referenced.status();
  EXPECT_EQ(*referenced, (std::set<std::string>{Sha256Hex("abd"), Sha256Hex("model"),
                                                Sha256Hex("m"), Sha256Hex("d")}));
}

// --- SQLite file behaviour (WAL, user_version migrations) --------------

class MetadataStoreFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    path_ = dir_.path() + "/meta.db";
  }
  // Runs SQL on the file through a second, plain SQLite connection.
  std::string RawQuery(const std::string& sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    std::string out;
    auto cb = [](void* arg, int n, char** values, char**) {
      auto* s = static_cast<std::string*>(arg);
      for (int i = 0; i < n; ++i) absl::StrAppend(s, values[i] ? values[i] : "NULL", ";");
      return 0;
    };
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), cb, &out, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(db);
    return out;
  }

  ScopedTempDir dir_;
  std::string path_;
};

TEST_P(MetadataStoreTest, TenantsSeeOnlyTheirOwnRows) {
  ASSERT_TRUE(store_->PutModel("alpha", MakeModel("m", 1, "alpha.pt")).ok());
  ASSERT_TRUE(store_->PutModel("beta", MakeModel("m", 2, "beta.pt")).ok());
  EXPECT_EQ(store_->GetModel("alpha", "m")->name(), "alpha.pt");
  EXPECT_EQ(store_->GetModel("beta", "m")->name(), "beta.pt");
  EXPECT_THAT(store_->ListModels("alpha", 10, "")->items, SizeIs(1));
  EXPECT_THAT(store_->ListModels("gamma", 10, "")->items, IsEmpty());
  ASSERT_TRUE(store_->DeleteModel("beta", "m").ok());
  EXPECT_TRUE(store_->GetModel("alpha", "m").ok());
  EXPECT_TRUE(*store_->IsBlobReferenced("m"));
  EXPECT_EQ(store_->DeleteModel("beta", "m").code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(store_->PutDataset(kPublicTenant, MakeDataset("builtin:x", 1)).ok());
  ASSERT_TRUE(store_->PutDataset("alpha", MakeDataset("d", 2)).ok());
  EXPECT_THAT(store_->ListDatasets("alpha", 10, "")->items, SizeIs(2));
  EXPECT_THAT(store_->ListDatasets("beta", 10, "")->items, SizeIs(1));
  EXPECT_EQ(store_->DeleteDataset("beta", "builtin:x").code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(
      store_->InsertJob("alpha", MakeInspectJob("j", 1, v1::JOB_STATE_QUEUED, "m"), {"m"}).ok());
  // Another tenant's job answers exactly like a missing one.
  EXPECT_EQ(store_->GetJob("beta", "j").status(), absl::NotFoundError("job j not found"));
  EXPECT_EQ(store_->GetJob("beta", "nope").status(), absl::NotFoundError("job nope not found"));
  EXPECT_TRUE(store_->GetJob("alpha", "j").ok());
  EXPECT_TRUE(store_->GetJobAnyTenant("j").ok());
  EXPECT_EQ(*store_->JobTenant("j"), "alpha");
  EXPECT_THAT(store_->ListJobs("beta", {}, 10, "")->items, IsEmpty());
  EXPECT_TRUE(*store_->IsReferencedByActiveJob("alpha", "m"));
  EXPECT_FALSE(*store_->IsReferencedByActiveJob("beta", "m"));
}

TEST_F(MetadataStoreFileTest, SurvivesReopenAndUsesWal) {
  {
    auto store = OpenMetadataStore(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->PutModel(kTenant, MakeModel("m1", 1)).ok());
    ASSERT_TRUE((*store)->InsertJob(kTenant, MakeInspectJob("j1", 1, v1::JOB_STATE_QUEUED), {}).ok());
    ASSERT_TRUE((*store)->AppendEvent(LogEvent("j1", 1, "hello")).ok());
    EXPECT_EQ(RawQuery("PRAGMA journal_mode"), "wal;");
  }
  auto store = OpenMetadataStore(path_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->GetModel(kTenant, "m1")->id(), "m1");
  EXPECT_EQ((*store)->GetJob(kTenant, "j1")->state(), v1::JOB_STATE_QUEUED);
  auto events = (*store)->ListEvents("j1", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].log().message(), "hello");
  // Numbering continues from the stored log.
  EXPECT_EQ((*store)->AppendEvent(LogEvent("j1", 1, "again")).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE((*store)->AppendEvent(LogEvent("j1", 2, "next")).ok());
}

TEST_F(MetadataStoreFileTest, RefusesNewerSchema) {
  { ASSERT_TRUE(OpenMetadataStore(path_).ok()); }
  EXPECT_EQ(RawQuery("PRAGMA user_version"), "3;");
  RawQuery("PRAGMA user_version = 99");
  auto store = OpenMetadataStore(path_);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
}

std::string SqlBlob(const google::protobuf::Message& m) {
  return absl::StrCat("x'", absl::BytesToHexString(m.SerializeAsString()), "'");
}

TEST_F(MetadataStoreFileTest, DatabaseFromBeforeTenantsKeepsEverything) {
  // A data directory written by a server without tenants: schema version 1,
  // as shipped.
  v1::Job job = MakeInspectJob("j1", 10, v1::JOB_STATE_QUEUED, "m1");
  job.set_request_id("r1");
  v1::Dataset builtin = MakeDataset("builtin:fashion-mnist/test", 1);
  RawQuery(absl::StrCat(R"sql(
    CREATE TABLE models (
      id TEXT PRIMARY KEY, created_ns INTEGER NOT NULL, proto BLOB NOT NULL);
    CREATE TABLE datasets (
      id TEXT PRIMARY KEY, created_ns INTEGER NOT NULL, proto BLOB NOT NULL);
    CREATE TABLE jobs (
      id TEXT PRIMARY KEY, request_id TEXT UNIQUE, state INTEGER NOT NULL,
      kind INTEGER NOT NULL, created_ns INTEGER NOT NULL, model_id TEXT,
      dataset_ids TEXT, proto BLOB NOT NULL);
    CREATE INDEX jobs_state ON jobs(state, created_ns);
    CREATE TABLE events (
      job_id TEXT NOT NULL, seq INTEGER NOT NULL, proto BLOB NOT NULL,
      PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
    CREATE TABLE artifacts (
      job_id TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
      proto BLOB NOT NULL, PRIMARY KEY (job_id, name)) WITHOUT ROWID;
    CREATE INDEX artifacts_sha ON artifacts(sha256);
    PRAGMA user_version = 1;)sql",
      "INSERT INTO models VALUES ('m1', 5, ", SqlBlob(MakeModel("m1", 5)), ");",
      "INSERT INTO datasets VALUES ('d1', 6, ", SqlBlob(MakeDataset("d1", 6)), ");",
      "INSERT INTO datasets VALUES ('builtin:fashion-mnist/test', 1, ", SqlBlob(builtin), ");",
      "INSERT INTO jobs VALUES ('j1', 'r1', ", static_cast<int>(v1::JOB_STATE_QUEUED), ", ",
      static_cast<int>(v1::JOB_KIND_INSPECT), ", 10, NULL, ' m1 d1 ', ", SqlBlob(job), ");",
      "INSERT INTO events VALUES ('j1', 1, ", SqlBlob(LogEvent("j1", 1, "old")), ");"));

  auto store = OpenMetadataStore(path_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(RawQuery("PRAGMA user_version"), "3;");
  MetadataStore& s = **store;
  // Everything belongs to the single-tenant "default" tenant...
  EXPECT_EQ(s.GetModel(kDefaultTenant, "m1")->name(), "m");
  EXPECT_TRUE(s.GetDataset(kDefaultTenant, "d1").ok());
  EXPECT_EQ(s.GetJob(kDefaultTenant, "j1")->request_id(), "r1");
  EXPECT_EQ(s.GetJobByRequestId(kDefaultTenant, "r1")->id(), "j1");
  EXPECT_EQ(*s.JobTenant("j1"), kDefaultTenant);
  EXPECT_THAT(*s.ListEvents("j1", 0, 10), SizeIs(1));
  EXPECT_THAT(*s.JobsInState(v1::JOB_STATE_QUEUED), SizeIs(1));
  // The space-separated ids of old rows became job_refs rows.
  EXPECT_TRUE(*s.IsReferencedByActiveJob(kDefaultTenant, "m1"));
  EXPECT_TRUE(*s.IsReferencedByActiveJob(kDefaultTenant, "d1"));
  EXPECT_FALSE(*s.IsReferencedByActiveJob(kDefaultTenant, "m"));
  EXPECT_EQ(RawQuery("SELECT ref_id FROM job_refs ORDER BY ref_id"), "d1;m1;");
  // ... except the builtin datasets, which every tenant sees.
  EXPECT_TRUE(s.GetDataset("alpha", "builtin:fashion-mnist/test").ok());
  EXPECT_EQ(s.GetModel("alpha", "m1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.GetDataset("alpha", "d1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.GetJob("alpha", "j1").status().code(), absl::StatusCode::kNotFound);
  // Request ids are now unique per tenant.
  v1::Job other = MakeInspectJob("j2", 11, v1::JOB_STATE_QUEUED);
  other.set_request_id("r1");
  EXPECT_TRUE(s.InsertJob("alpha", other, {}).ok());
  other.set_id("j3");
  EXPECT_EQ(s.InsertJob("alpha", other, {}).code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(MetadataStoreFileTest, CorruptRowIsDataLoss) {
  {
    auto store = OpenMetadataStore(path_);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->PutModel(kTenant, MakeModel("m1", 1)).ok());
  }
  RawQuery("UPDATE models SET proto = x'ffffffff' WHERE id = 'm1'");
  auto store = OpenMetadataStore(path_);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->GetModel(kTenant, "m1").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ((*store)->ListModels(kTenant, 10, "").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(MetadataStoreFileTest, UnopenablePathIsAnError) {
  auto store = OpenMetadataStore(dir_.path() + "/missing/dir/meta.db");
  EXPECT_FALSE(store.ok());
}

}  // namespace
}  // namespace compress::store
