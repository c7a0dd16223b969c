// The libpq wrapper, the connection pool and what is PostgreSQL-specific
// in PgMetadataStore (several replicas on one database, migrations racing,
// connections killed by the server), on a real PostgreSQL 15 started for
// this binary (tests/pg_test_util.h). The MetadataStore contract itself is
// tests/store/metadata_store_test.cc, run on both backends.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/metadata_store.h"
#include "server/store/pg/connection.h"
#include "server/store/pg/pool.h"
#include "server/store/pg_metadata_store.h"
#include "tests/pg_test_util.h"
#include "tests/test_util.h"

namespace compress::store {
namespace {

namespace v1 = compress::v1;
using pg::Connection;
using pg::Param;
using pg::Pool;
using pg::PoolOptions;
using pg::Result;
using pg::Transaction;
using ::testing::HasSubstr;

// Each test gets a database of its own and an admin connection to it.
class PgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = testutil::TestPostgres::Get();
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = *pg;
    auto url = pg_->NewDatabase();
    ASSERT_TRUE(url.ok()) << url.status();
    url_ = *url;
    auto admin = Connection::Open(pg_->Url("postgres"));
    ASSERT_TRUE(admin.ok()) << admin.status();
    admin_ = std::move(*admin);
  }

  std::unique_ptr<Connection> Connect() {
    auto conn = Connection::Open(url_);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? std::move(*conn) : nullptr;
  }

  // Ends the server process behind `pid` and waits until it is gone.
  void Terminate(int pid) {
    auto r = admin_->Exec("SELECT pg_terminate_backend($1::int, 10000)", {pid});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->Int(0, 0), 1) << "backend " << pid << " did not end";
  }

  // The server processes serving this test's database.
  std::vector<int> Backends() {
    std::vector<int> pids;
    auto r = admin_->Exec("SELECT pid FROM pg_stat_activity WHERE datname = $1",
                          {url_.substr(url_.rfind('/') + 1)});
    EXPECT_TRUE(r.ok()) << r.status();
    for (int i = 0; r.ok() && i < r->rows(); ++i) pids.push_back(static_cast<int>(r->Int(i, 0)));
    return pids;
  }

  testutil::TestPostgres* pg_ = nullptr;
  std::string url_;
  std::unique_ptr<Connection> admin_;
};

// --- Connection -------------------------------------------------------------

TEST_F(PgTest, ParametersRoundTripAndAreNeverParsedAsSql) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  ASSERT_TRUE(conn->ExecScript("CREATE TABLE t (s TEXT, n BIGINT, b BYTEA)").ok());
  const std::string hostile = "x'); DROP TABLE t; --";
  const std::string bytes("\0\xff\x01'\\x00", 7);
  for (int64_t n : {int64_t{0}, int64_t{-1}, INT64_MIN, INT64_MAX}) {
    auto r = conn->Exec("INSERT INTO t VALUES ($1, $2, $3)", {hostile, n, Param::Bytes(bytes)});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->affected_rows(), 1);
  }
  ASSERT_TRUE(
      conn->Exec("INSERT INTO t VALUES ($1, $2, $3)", {Param::Null(), 7, Param::Null()}).ok());
  auto r = conn->Exec("SELECT s, n, b FROM t WHERE s IS NOT NULL ORDER BY n");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows(), 4);
  EXPECT_EQ(r->Int(0, 1), INT64_MIN);
  EXPECT_EQ(r->Int(1, 1), -1);
  EXPECT_EQ(r->Int(3, 1), INT64_MAX);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(r->Bytes(i, 0), hostile);
    EXPECT_EQ(r->Bytes(i, 2), bytes);
  }
  auto nulls = conn->Exec("SELECT s, b, n::int, (n > 0) FROM t WHERE s IS NULL");
  ASSERT_TRUE(nulls.ok());
  EXPECT_TRUE(nulls->IsNull(0, 0));
  EXPECT_TRUE(nulls->IsNull(0, 1));
  EXPECT_EQ(nulls->Int(0, 2), 7);  // integer, not bigint
  EXPECT_EQ(nulls->Int(0, 3), 1);  // boolean
  // PostgreSQL text cannot hold NUL: refused, never truncated.
  auto nul = conn->Exec("INSERT INTO t (s) VALUES ($1)", {std::string("a\0b", 3)});
  EXPECT_EQ(nul.status().code(), absl::StatusCode::kInvalidArgument) << nul.status();
  EXPECT_TRUE(conn->ok());
}

TEST_F(PgTest, SqlStatesMapToCodes) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  ASSERT_TRUE(conn->ExecScript("CREATE TABLE u (id TEXT PRIMARY KEY)").ok());
  ASSERT_TRUE(conn->Exec("INSERT INTO u VALUES ($1)", {"other-tenant-id"}).ok());
  auto dup = conn->Exec("INSERT INTO u VALUES ($1)", {"other-tenant-id"});
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists) << dup.status();
  // The message names the constraint, not the row (DETAIL would).
  EXPECT_THAT(dup.status().message(), HasSubstr("u_pkey"));
  EXPECT_THAT(std::string(dup.status().message()), ::testing::Not(HasSubstr("other-tenant-id")));
  EXPECT_EQ(pg::SqlState(dup.status()), "23505");
  EXPECT_FALSE(pg::IsConflict(dup.status()));

  // The server raises each SQLSTATE as it would for the real condition.
  const std::map<std::string, absl::StatusCode> expected = {
      {"40001", absl::StatusCode::kAborted},           // serialization_failure
      {"40P01", absl::StatusCode::kAborted},           // deadlock_detected
      {"57014", absl::StatusCode::kDeadlineExceeded},  // query_canceled
      {"23503", absl::StatusCode::kFailedPrecondition},
      {"22021", absl::StatusCode::kInvalidArgument},    // bad encoding
      {"53100", absl::StatusCode::kResourceExhausted},  // disk_full
      {"42501", absl::StatusCode::kPermissionDenied},
      {"XX000", absl::StatusCode::kInternal},
  };
  for (const auto& [state, code] : expected) {
    auto r = conn->Exec(
        absl::StrCat("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '", state, "'; END $$"));
    EXPECT_EQ(r.status().code(), code) << state << ": " << r.status();
    EXPECT_EQ(pg::SqlState(r.status()), state);
    EXPECT_EQ(pg::IsConflict(r.status()), state == "40001" || state == "40P01") << state;
    EXPECT_THAT(r.status().message(), HasSubstr("raised"));
  }
  auto syntax = conn->Exec("SELEKT 1");
  EXPECT_EQ(syntax.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(pg::SqlState(syntax.status()), "42601");
  // None of these broke the connection.
  EXPECT_TRUE(conn->ok());
  EXPECT_TRUE(conn->Exec("SELECT 1").ok());
  // Mapping without a server: the connection-class codes.
  EXPECT_EQ(pg::CodeForSqlState("08006"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(pg::CodeForSqlState("57P01"), absl::StatusCode::kUnavailable);
}

TEST_F(PgTest, TransactionRollsBackUnlessCommitted) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  ASSERT_TRUE(conn->ExecScript("CREATE TABLE t (id TEXT PRIMARY KEY)").ok());
  {
    auto tx = Transaction::Begin(*conn);
    ASSERT_TRUE(tx.ok()) << tx.status();
    ASSERT_TRUE(conn->Exec("INSERT INTO t VALUES ('dropped')").ok());
    EXPECT_TRUE(conn->in_transaction());
  }
  EXPECT_FALSE(conn->in_transaction());
  {
    auto tx = Transaction::Begin(*conn);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(conn->Exec("INSERT INTO t VALUES ('kept')").ok());
    EXPECT_EQ(Transaction::Begin(*conn).status().code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE(tx->Commit().ok());
  }
  {
    // A failed statement dooms the transaction: Commit says so (PostgreSQL
    // would answer COMMIT with ROLLBACK and no error).
    auto tx = Transaction::Begin(*conn);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(conn->Exec("INSERT INTO t VALUES ('doomed')").ok());
    EXPECT_FALSE(conn->Exec("INSERT INTO t VALUES ('kept')").ok());
    EXPECT_EQ(tx->Commit().code(), absl::StatusCode::kAborted);
    EXPECT_FALSE(conn->in_transaction());
  }
  auto r = conn->Exec("SELECT id FROM t ORDER BY id");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->rows(), 1);
  EXPECT_EQ(r->Bytes(0, 0), "kept");
}

TEST_F(PgTest, BadConnectionStringsAndUnreachableServers) {
  auto bad = Connection::Open("postgresql://[::1");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  auto bad_param = Connection::Open(url_ + "?no_such_option=1");
  EXPECT_EQ(bad_param.status().code(), absl::StatusCode::kInvalidArgument) << bad_param.status();
  // Nothing listens on a port just probed free (loopback only).
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  close(fd);
  const std::string url = absl::StrCat("postgresql://postgres:secret-pw@127.0.0.1:", port, "/x");
  auto down = Connection::Open(url);
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  EXPECT_THAT(down.status().message(), HasSubstr("127.0.0.1"));
  EXPECT_THAT(std::string(down.status().message()), ::testing::Not(HasSubstr("secret-pw")));
  auto store = OpenMetadataStore(url);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  // A missing database is the server refusing the login.
  auto missing = OpenMetadataStore(pg_->Url("no_such_database"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable) << missing.status();
}

// --- Pool -------------------------------------------------------------------

PoolOptions SmallPool(const std::string& url, int max, absl::Duration timeout) {
  PoolOptions options;
  options.conninfo = url;
  options.max_connections = max;
  options.acquire_timeout = timeout;
  return options;
}

TEST_F(PgTest, PoolWaitsForAConnectionThenTimesOut) {
  auto pool = Pool::Create(SmallPool(url_, 2, absl::Milliseconds(200)));
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto a = (*pool)->Acquire();
  auto b = (*pool)->Acquire();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->backend_pid(), (*b)->backend_pid());
  EXPECT_EQ((*pool)->stats().open, 2);

  const absl::Time start = absl::Now();
  auto c = (*pool)->Acquire();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_EQ((*pool)->stats().open, 2);  // never more than max_connections

  // A borrower waiting (with a longer timeout) gets the connection another
  // one returns.
  auto patient = Pool::Create(SmallPool(url_, 1, absl::Seconds(60)));
  ASSERT_TRUE(patient.ok());
  std::optional<Pool::Lease> held;
  {
    auto lease = (*patient)->Acquire();
    ASSERT_TRUE(lease.ok());
    held.emplace(std::move(*lease));
  }
  const int pid = (*held)->backend_pid();
  absl::Notification got;
  int got_pid = 0;
  std::thread waiter([&] {
    auto lease = (*patient)->Acquire();
    if (lease.ok()) got_pid = (*lease)->backend_pid();
    got.Notify();
  });
  EXPECT_FALSE(got.HasBeenNotified());
  held.reset();
  waiter.join();
  EXPECT_EQ(got_pid, pid);  // the same connection, reused
  EXPECT_EQ((*patient)->stats().opened, 1);
}

TEST_F(PgTest, ConnectionTerminatedWhileIdleIsReplaced) {
  auto pool = Pool::Create(SmallPool(url_, 1, absl::Seconds(10)));
  ASSERT_TRUE(pool.ok());
  int pid;
  {
    auto lease = (*pool)->Acquire();
    ASSERT_TRUE(lease.ok());
    pid = (*lease)->backend_pid();
  }
  Terminate(pid);
  auto lease = (*pool)->Acquire();
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_NE((*lease)->backend_pid(), pid);
  auto r = (*lease)->Exec("SELECT 1");
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*pool)->stats().discarded, 1);
  EXPECT_EQ((*pool)->stats().opened, 2);
}

TEST_F(PgTest, ConnectionTerminatedMidTransactionIsNeverReused) {
  ASSERT_TRUE(admin_->ok());
  {
    auto setup = Connect();
    ASSERT_TRUE(setup->ExecScript("CREATE TABLE t (id TEXT PRIMARY KEY)").ok());
  }
  auto pool = Pool::Create(SmallPool(url_, 1, absl::Seconds(10)));
  ASSERT_TRUE(pool.ok());
  int pid;
  {
    auto lease = (*pool)->Acquire();
    ASSERT_TRUE(lease.ok());
    pid = (*lease)->backend_pid();
    auto tx = Transaction::Begin(lease->conn());
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE((*lease)->Exec("INSERT INTO t VALUES ('lost')").ok());
    Terminate(pid);
    auto r = (*lease)->Exec("INSERT INTO t VALUES ('after')");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_TRUE(pg::IsConnectionLoss(r.status()));
    EXPECT_FALSE((*lease)->ok());
    EXPECT_EQ(tx->Commit().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ((*pool)->stats().discarded, 1);
  EXPECT_EQ((*pool)->stats().open, 0);
  auto lease = (*pool)->Acquire();
  ASSERT_TRUE(lease.ok());
  EXPECT_NE((*lease)->backend_pid(), pid);
  auto r = (*lease)->Exec("SELECT count(*) FROM t");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Int(0, 0), 0);
}

TEST_F(PgTest, RunTransactionRunsAgainOnlyWhenNothingCommitted) {
  {
    auto setup = Connect();
    ASSERT_TRUE(setup->ExecScript("CREATE TABLE t (id TEXT PRIMARY KEY)").ok());
  }
  auto pool = Pool::Create(SmallPool(url_, 2, absl::Seconds(10)));
  ASSERT_TRUE(pool.ok());

  // The connection dies mid-transaction: the first attempt's row is rolled
  // back by the server and the body runs again on a fresh connection.
  int attempts = 0;
  absl::Status s = (*pool)->RunTransaction([&](Connection& c) -> absl::Status {
    ++attempts;
    auto r = c.Exec("INSERT INTO t VALUES ($1)", {absl::StrCat("attempt-", attempts)});
    if (!r.ok()) return r.status();
    if (attempts == 1) Terminate(c.backend_pid());
    return c.Exec("SELECT 1").status();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(attempts, 2);

  // A conflict the server rolled back runs again too.
  attempts = 0;
  s = (*pool)->RunTransaction([&](Connection& c) -> absl::Status {
    if (++attempts == 1) {
      return c.Exec("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$").status();
    }
    return c.Exec("INSERT INTO t VALUES ('after-deadlock')").status();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(attempts, 2);

  // An answer (not a failure of the database) is returned as it is.
  attempts = 0;
  absl::StatusOr<int> answer = (*pool)->RunTransaction([&](Connection& c) -> absl::StatusOr<int> {
    ++attempts;
    auto r = c.Exec("INSERT INTO t VALUES ('attempt-2')");  // duplicate
    if (!r.ok()) return r.status();
    return 1;
  });
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(attempts, 1);

  // Conflicts that never end give up after max_attempts (default 4).
  attempts = 0;
  s = (*pool)->RunTransaction([&](Connection& c) -> absl::Status {
    ++attempts;
    return c.Exec("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$").status();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(attempts, 4);

  auto check = Connect();
  auto r = check->Exec("SELECT id FROM t ORDER BY id");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->rows(), 2);
  EXPECT_EQ(r->Bytes(0, 0), "after-deadlock");
  EXPECT_EQ(r->Bytes(1, 0), "attempt-2");
}

// --- PgMetadataStore ----------------------------------------------------------

v1::Job Job(const std::string& id) {
  v1::Job j;
  j.set_id(id);
  j.set_kind(v1::JOB_KIND_INSPECT);
  j.set_state(v1::JOB_STATE_RUNNING);
  j.mutable_create_time()->set_seconds(1);
  return j;
}

absl::StatusOr<std::unique_ptr<PgMetadataStore>> OpenStore(const std::string& url,
                                                           int max_connections = 4) {
  PgMetadataStoreOptions options;
  options.url = url;
  options.max_connections = max_connections;
  return PgMetadataStore::Create(options);
}

TEST_F(PgTest, ConcurrentAppendsFromSeveralReplicasStayGapless) {
  // Four stores (four pools, as four replicas would have) append to ONE job,
  // each taking the next number from the job row and retrying when another
  // replica took it first.
  constexpr int kReplicas = 4;
  constexpr int kEventsEach = 40;
  std::vector<std::unique_ptr<PgMetadataStore>> stores;
  for (int i = 0; i < kReplicas; ++i) {
    auto store = OpenStore(url_);
    ASSERT_TRUE(store.ok()) << store.status();
    stores.push_back(std::move(*store));
  }
  ASSERT_TRUE(stores[0]->InsertJob(kDefaultTenant, Job("shared"), {}).ok());
  absl::Barrier* start = new absl::Barrier(kReplicas);
  std::vector<std::thread> threads;
  std::vector<int> collisions(kReplicas, 0);
  std::vector<std::string> errors(kReplicas);
  for (int t = 0; t < kReplicas; ++t) {
    threads.emplace_back([&, t] {
      if (start->Block()) delete start;
      for (int done = 0; done < kEventsEach;) {
        auto job = stores[t]->GetJobAnyTenant("shared");
        if (!job.ok()) {
          errors[t] = job.status().ToString();
          return;
        }
        v1::JobEvent e;
        e.set_job_id("shared");
        e.set_sequence(job->last_sequence() + 1);
        e.mutable_log()->set_message(absl::StrCat("replica-", t));
        job->set_last_sequence(e.sequence());
        absl::Status s = stores[t]->AppendEvent(e, &*job);
        if (s.ok()) {
          ++done;
        } else if (absl::IsAlreadyExists(s)) {
          ++collisions[t];  // another replica appended since we read the row
        } else {
          errors[t] = s.ToString();
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kReplicas; ++t) EXPECT_EQ(errors[t], "") << t;

  auto events = stores[0]->ListEvents("shared", 0, 10000);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), static_cast<size_t>(kReplicas * kEventsEach));
  std::map<std::string, int> per_replica;
  for (size_t i = 0; i < events->size(); ++i) {
    EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i + 1));
    ++per_replica[(*events)[i].log().message()];
  }
  for (int t = 0; t < kReplicas; ++t)
    EXPECT_EQ(per_replica[absl::StrCat("replica-", t)], kEventsEach);
  // The job row moved with every event, in the same transactions.
  EXPECT_EQ(stores[1]->GetJobAnyTenant("shared")->last_sequence(), kReplicas * kEventsEach);
  // Same-number races: of several appends of one number, exactly one wins.
  std::atomic<int> wins{0};
  std::vector<std::thread> racers;
  for (int t = 0; t < kReplicas; ++t) {
    racers.emplace_back([&, t] {
      v1::JobEvent e;
      e.set_job_id("shared");
      e.set_sequence(kReplicas * kEventsEach + 1);
      if (stores[t]->AppendEvent(e).ok()) ++wins;
    });
  }
  for (auto& th : racers) th.join();
  EXPECT_EQ(wins.load(), 1);
}

TEST_F(PgTest, AppendEventQueuesUpOnTheJobRow) {
  // Another replica holds the job row and has appended event 1 but not yet
  // committed. An append of event 2 must wait for that commit and then see
  // event 1, not read the log around it and refuse 2.
  auto store = OpenStore(url_);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->InsertJob(kDefaultTenant, Job("j"), {}).ok());
  auto other = Connect();
  auto tx = Transaction::Begin(*other);
  ASSERT_TRUE(tx.ok());
  ASSERT_TRUE(other->Exec("SELECT 1 FROM jobs WHERE id = 'j' FOR UPDATE").ok());
  v1::JobEvent first;
  first.set_job_id("j");
  first.set_sequence(1);
  ASSERT_TRUE(other
                  ->Exec("INSERT INTO events (job_id, seq, proto) VALUES ('j', 1, $1)",
                         {Param::Bytes(first.SerializeAsString())})
                  .ok());

  absl::Status appended = absl::UnknownError("not run");
  std::thread append([&] {
    v1::JobEvent second;
    second.set_job_id("j");
    second.set_sequence(2);
    appended = (*store)->AppendEvent(second);
  });
  // The append is parked on the row lock (bounded polling, not a sleep).
  const std::string db = url_.substr(url_.rfind('/') + 1);
  EXPECT_TRUE(testutil::WaitFor([&] {
    auto r = admin_->Exec(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        {db});
    return r.ok() && r->Int(0, 0) == 1;
  }));
  ASSERT_TRUE(tx->Commit().ok());
  append.join();
  EXPECT_TRUE(appended.ok()) << appended;
  auto events = (*store)->ListEvents("j", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].sequence(), 2);
}

TEST_F(PgTest, ReplicasMigratingOneDatabaseAtOnceLeaveOneSchema) {
  constexpr int kReplicas = 4;
  absl::Barrier* start = new absl::Barrier(kReplicas);
  std::vector<absl::Status> results(kReplicas);
  std::vector<std::unique_ptr<PgMetadataStore>> stores(kReplicas);
  std::vector<std::thread> threads;
  for (int t = 0; t < kReplicas; ++t) {
    threads.emplace_back([&, t] {
      if (start->Block()) delete start;
      auto store = OpenStore(url_, 1);
      results[t] = store.status();
      if (store.ok()) stores[t] = std::move(*store);
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kReplicas; ++t) EXPECT_TRUE(results[t].ok()) << t << ": " << results[t];

  auto conn = Connect();
  auto versions = conn->Exec("SELECT count(*), min(version), max(version) FROM schema_migrations");
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_EQ(versions->Int(0, 0), PgMetadataStore::LatestSchemaVersion());  // each applied once
  EXPECT_EQ(versions->Int(0, 1), 1);
  EXPECT_EQ(versions->Int(0, 2), PgMetadataStore::LatestSchemaVersion());
  auto tables = conn->Exec(
      "SELECT string_agg(table_name::text, ',' ORDER BY table_name) FROM information_schema.tables "
      "WHERE table_schema = 'public'");
  ASSERT_TRUE(tables.ok());
  EXPECT_EQ(tables->Bytes(0, 0),
            "artifacts,datasets,events,job_refs,jobs,models,schema_migrations");
  // Every replica works on the one schema.
  ASSERT_TRUE(stores[0]->InsertJob(kDefaultTenant, Job("j"), {"m"}).ok());
  for (int t = 0; t < kReplicas; ++t) {
    ASSERT_NE(stores[t], nullptr);
    EXPECT_TRUE(*stores[t]->IsReferencedByActiveJob(kDefaultTenant, "m")) << t;
  }
}

TEST_F(PgTest, RefusesNewerSchema) {
  { ASSERT_TRUE(OpenStore(url_).ok()); }
  auto conn = Connect();
  ASSERT_TRUE(conn->ExecScript("INSERT INTO schema_migrations (version) VALUES (99)").ok());
  auto store = OpenStore(url_);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("99"));
}

TEST_F(PgTest, RowsOutliveTheStoreAndCorruptRowsAreDataLoss) {
  {
    auto store = OpenMetadataStore(url_);
    ASSERT_TRUE(store.ok()) << store.status();
    v1::Model m;
    m.set_id("m1");
    m.set_name("kept");
    ASSERT_TRUE((*store)->PutModel(kDefaultTenant, m).ok());
    ASSERT_TRUE((*store)->InsertJob(kDefaultTenant, Job("j1"), {}).ok());
    v1::JobEvent e;
    e.set_job_id("j1");
    e.set_sequence(1);
    ASSERT_TRUE((*store)->AppendEvent(e).ok());
    v1::Model bad;
    bad.set_id("m2");
    ASSERT_TRUE((*store)->PutModel(kDefaultTenant, bad).ok());
  }
  auto conn = Connect();
  ASSERT_TRUE(conn->ExecScript("UPDATE models SET proto = '\\xffffffff' WHERE id = 'm2'").ok());
  auto store = OpenMetadataStore(url_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->GetModel(kDefaultTenant, "m1")->name(), "kept");
  // Numbering continues from the stored log.
  v1::JobEvent again;
  again.set_job_id("j1");
  again.set_sequence(1);
  EXPECT_EQ((*store)->AppendEvent(again).code(), absl::StatusCode::kAlreadyExists);
  again.set_sequence(2);
  EXPECT_TRUE((*store)->AppendEvent(again).ok());
  EXPECT_EQ((*store)->GetModel(kDefaultTenant, "m2").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ((*store)->ListModels(kDefaultTenant, 10, "").status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(PgTest, IdsOrderBytewiseWhateverTheDatabaseCollation) {
  // A database whose default collation is not bytewise (ICU English sorts
  // 'a' before 'B' and ignores punctuation at first).
  ASSERT_TRUE(admin_
                  ->Exec("CREATE DATABASE icu_en TEMPLATE template0 LOCALE_PROVIDER icu "
                         "ICU_LOCALE 'en-US' LOCALE 'C'")
                  .ok());
  const std::string url = pg_->Url("icu_en");
  {
    auto conn = Connection::Open(url);
    ASSERT_TRUE(conn.ok()) << conn.status();
    auto plain = (*conn)->Exec("SELECT string_agg(x, ',' ORDER BY x) FROM "
                               "(VALUES ('B'), ('a'), ('_x'), ('a-b'), ('ab')) t(x)");
    ASSERT_TRUE(plain.ok()) << plain.status();
    ASSERT_NE(plain->Bytes(0, 0), "B,_x,a,a-b,ab") << "the database collation is bytewise";
  }
  auto store = OpenMetadataStore(url);
  ASSERT_TRUE(store.ok()) << store.status();
  for (const char* id : {"a", "ab", "B", "a-b", "_x"}) {
    v1::Model m;
    m.set_id(id);
    m.mutable_create_time()->set_seconds(7);  // one time: the id decides
    ASSERT_TRUE((*store)->PutModel(kDefaultTenant, m).ok());
  }
  // Newest first, then id descending in byte order, one row a page (each
  // page token compares ids in the database).
  std::vector<std::string> seen;
  std::string token;
  do {
    auto page = (*store)->ListModels(kDefaultTenant, 1, token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& m : page->items) seen.push_back(m.id());
    token = page->next_page_token;
  } while (!token.empty() && seen.size() < 10);
  EXPECT_THAT(seen, ::testing::ElementsAre("ab", "a-b", "a", "_x", "B"));
}

TEST_F(PgTest, StoreReplacesTerminatedConnectionsAndTheNextCallSucceeds) {
  auto store = OpenStore(url_, 2);
  ASSERT_TRUE(store.ok()) << store.status();
  PgMetadataStore& s = **store;
  v1::Model m;
  m.set_id("m");
  ASSERT_TRUE(s.PutModel(kDefaultTenant, m).ok());
  const int64_t discarded = s.pool().stats().discarded;
  const std::vector<int> pids = Backends();
  ASSERT_FALSE(pids.empty());
  for (int pid : pids) Terminate(pid);

  // A read, then a write, each straight after the kill.
  auto got = s.GetModel(kDefaultTenant, "m");
  EXPECT_TRUE(got.ok()) << got.status();
  for (int pid : Backends()) Terminate(pid);
  EXPECT_TRUE(s.InsertJob(kDefaultTenant, Job("after-kill"), {}).ok());
  EXPECT_TRUE(s.GetJob(kDefaultTenant, "after-kill").ok());
  EXPECT_GE(s.pool().stats().discarded, discarded + 2);
  EXPECT_LE(s.pool().stats().open, 2);
}

TEST_F(PgTest, TextThatPostgresCannotHoldIsInvalidArgument) {
  auto store = OpenMetadataStore(url_);
  ASSERT_TRUE(store.ok());
  v1::Job job = Job("j");
  job.set_request_id(std::string("r\0x", 3));
  EXPECT_EQ((*store)->InsertJob(kDefaultTenant, job, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->GetJobByRequestId(kDefaultTenant, job.request_id()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->GetJob(kDefaultTenant, "j").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace compress::store
