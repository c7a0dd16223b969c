#include "server/store/sqlite_metadata_store.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/store/rows.h"
#include "server/store/storage_error.h"
#include "server/util/client_text.h"
#include "server/util/status_macros.h"

namespace compress::store {
namespace v1 = compress::v1;
using rows::ClampPageSize;
using rows::Cursor;
using rows::DecodeToken;
using rows::EncodeToken;
using rows::Parse;
using rows::ToNanos;

namespace {

// Schema versions, applied in order; never edit a shipped step.
constexpr const char* kMigrations[] = {
    R"sql(
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
    )sql",
    // Tenants: every model, dataset and job row gets an owner. Rows written
    // before tenants existed belong to the single-tenant "default" tenant,
    // builtin datasets to everyone (''). Request ids become unique per tenant.
    R"sql(
    CREATE TABLE models_v2 (
      tenant TEXT NOT NULL, id TEXT NOT NULL, created_ns INTEGER NOT NULL,
      proto BLOB NOT NULL, PRIMARY KEY (tenant, id)) WITHOUT ROWID;
    INSERT INTO models_v2 SELECT 'default', id, created_ns, proto FROM models;
    DROP TABLE models;
    ALTER TABLE models_v2 RENAME TO models;
    CREATE INDEX models_id ON models(id);
    CREATE TABLE datasets_v2 (
      tenant TEXT NOT NULL, id TEXT NOT NULL, created_ns INTEGER NOT NULL,
      proto BLOB NOT NULL, PRIMARY KEY (tenant, id)) WITHOUT ROWID;
    INSERT INTO datasets_v2
      SELECT CASE WHEN id LIKE 'builtin:%' THEN '' ELSE 'default' END, id, created_ns, proto
      FROM datasets;
    DROP TABLE datasets;
    ALTER TABLE datasets_v2 RENAME TO datasets;
    CREATE INDEX datasets_id ON datasets(id);
    CREATE TABLE jobs_v2 (
      id TEXT PRIMARY KEY, tenant TEXT NOT NULL, request_id TEXT, state INTEGER NOT NULL,
      kind INTEGER NOT NULL, created_ns INTEGER NOT NULL, model_id TEXT,
      dataset_ids TEXT, proto BLOB NOT NULL, UNIQUE (tenant, request_id));
    INSERT INTO jobs_v2
      SELECT id, 'default', request_id, state, kind, created_ns, model_id, dataset_ids, proto
      FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v2 RENAME TO jobs;
    CREATE INDEX jobs_state ON jobs(state, created_ns);
    CREATE INDEX jobs_tenant ON jobs(tenant, created_ns);
    )sql",
    // The models and datasets a job reads, as rows the job layer hands over
    // (the store does not read specs). Backfilled from the space-separated
    // jobs.dataset_ids of earlier versions, which is no longer written.
    R"sql(
    CREATE TABLE job_refs (
      job_id TEXT NOT NULL, tenant TEXT NOT NULL, ref_id TEXT NOT NULL,
      PRIMARY KEY (job_id, ref_id)) WITHOUT ROWID;
    CREATE INDEX job_refs_ref ON job_refs(tenant, ref_id);
    WITH RECURSIVE split(job_id, tenant, rest, ref_id) AS (
      SELECT id, tenant, trim(COALESCE(dataset_ids, '')) || ' ', '' FROM jobs
      UNION ALL
      SELECT job_id, tenant, substr(rest, instr(rest, ' ') + 1),
             substr(rest, 1, instr(rest, ' ') - 1)
      FROM split WHERE rest <> '')
    INSERT OR IGNORE INTO job_refs SELECT job_id, tenant, ref_id FROM split WHERE ref_id <> '';
    )sql",
};

// RAII prepared statement with 1-based binds.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return SqliteStorageError(rc_, "read the metadata store", sqlite3_errmsg(db_));
  }
  Stmt& Bind(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& BindNull(int i) {
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  absl::Status Run() {
    int rc = Step();
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return absl::OkStatus();
    if (rc == SQLITE_CONSTRAINT) {
      return absl::AlreadyExistsError(absl::StrCat("constraint: ", sqlite3_errmsg(db_)));
    }
    return Failure();
  }
  std::string Text(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), n) : std::string();
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Error() const { return sqlite3_errmsg(db_); }
  // The status of the last failed step (see storage_error.h).
  absl::Status Failure() const {
    return SqliteStorageError(sqlite3_extended_errcode(db_), "use the metadata store", Error());
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// Which rows a tenant sees: its own, and with `with_public` the public ones.
struct Visibility {
  std::string tenant;
  bool with_public = false;
  std::string other() const { return with_public ? kPublicTenant : tenant; }
};

// Lists a tenant's rows of a (tenant, id, created_ns, proto) table newest first.
template <typename T>
absl::StatusOr<Page<T>> ListTable(sqlite3* db, const std::string& table, const Visibility& v,
                                  const std::string& extra_where, int page_size,
                                  const std::string& token) {
  ASSIGN_OR_RETURN(Cursor cursor, DecodeToken(token));
  int n = ClampPageSize(page_size);
  std::string sql = absl::StrCat("SELECT proto, created_ns, id FROM ", table,
                                 " WHERE (created_ns, id) < (?1, ?2) AND tenant IN (?4, ?5)",
                                 extra_where, " ORDER BY created_ns DESC, id DESC LIMIT ?3");
  Stmt st(db, sql.c_str());
  RETURN_IF_ERROR(st.status());
  st.Bind(1, cursor.created_ns).Bind(2, cursor.id).Bind(3, static_cast<int64_t>(n + 1));
  st.Bind(4, v.tenant).Bind(5, v.other());
  Page<T> page;
  int rc;
  int64_t last_ns = 0;
  std::string last_id;
  while ((rc = st.Step()) == SQLITE_ROW) {
    if (static_cast<int>(page.items.size()) == n) {
      page.next_page_token = EncodeToken(last_ns, last_id);
      break;
    }
    ASSIGN_OR_RETURN(T item, Parse<T>(st.Text(0)));
    page.items.push_back(std::move(item));
    last_ns = st.Int(1);
    last_id = st.Text(2);
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return st.Failure();
  }
  return page;
}

// Another tenant's row answers exactly like a missing one: NOT_FOUND.
template <typename T>
absl::StatusOr<T> GetById(sqlite3* db, const std::string& table, const std::string& what,
                          const Visibility& v, const std::string& id) {
  std::string sql =
      absl::StrCat("SELECT proto FROM ", table, " WHERE id = ?1 AND tenant IN (?2, ?3) LIMIT 1");
  Stmt st(db, sql.c_str());
  RETURN_IF_ERROR(st.status());
  st.Bind(1, id).Bind(2, v.tenant).Bind(3, v.other());
  int rc = st.Step();
  if (rc == SQLITE_DONE)
    return absl::NotFoundError(absl::StrCat(what, " ", QuoteClientText(id), " not found"));
  if (rc != SQLITE_ROW) return st.Failure();
  return Parse<T>(st.Text(0));
}

absl::Status DeleteById(sqlite3* db, const std::string& table, const std::string& what,
                        const std::string& tenant, const std::string& id) {
  std::string sql = absl::StrCat("DELETE FROM ", table, " WHERE id = ?1 AND tenant = ?2");
  Stmt st(db, sql.c_str());
  RETURN_IF_ERROR(st.status());
  st.Bind(1, id).Bind(2, tenant);
  RETURN_IF_ERROR(st.Run());
  if (sqlite3_changes(db) == 0)
    return absl::NotFoundError(absl::StrCat(what, " ", QuoteClientText(id), " not found"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteMetadataStore>> SqliteMetadataStore::Create(
    const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("cannot open database ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<SqliteMetadataStore> store(new SqliteMetadataStore(db));
  {
    absl::MutexLock lock(&store->mu_);
    // WAL + NORMAL: durable across process crashes (kill -9); only an OS
    // crash can lose the last commits, which a restart then re-runs.
    RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
    RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=NORMAL"));
    RETURN_IF_ERROR(store->Exec("PRAGMA foreign_keys=ON"));
  }
  RETURN_IF_ERROR(store->Migrate());
  return store;
}

SqliteMetadataStore::~SqliteMetadataStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status SqliteMetadataStore::Exec(const char* sql) {
  char* err = nullptr;
  if (const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err); rc != SQLITE_OK) {
    std::string msg = err ? err : "unknown";
    sqlite3_free(err);
    return SqliteStorageError(sqlite3_extended_errcode(db_), "use the metadata store", msg);
  }
  return absl::OkStatus();
}

absl::Status SqliteMetadataStore::Migrate() {
  absl::MutexLock lock(&mu_);
  int64_t version;
  {
    // Finalized before migrating: an open statement would lock the tables
    // a migration drops.
    Stmt version_stmt(db_, "PRAGMA user_version");
    RETURN_IF_ERROR(version_stmt.status());
    if (version_stmt.Step() != SQLITE_ROW) return absl::InternalError("cannot read user_version");
    version = version_stmt.Int(0);
  }
  constexpr int64_t kLatest = sizeof(kMigrations) / sizeof(kMigrations[0]);
  if (version > kLatest) {
    return absl::FailedPreconditionError(absl::StrCat(
        "database schema version ", version, " is newer than this server (", kLatest,
        "): refusing to start; use a newer compressd"));
  }
  for (int64_t v = version; v < kLatest; ++v) {
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::Status s = Exec(kMigrations[v]);
    if (s.ok()) s = Exec(absl::StrCat("PRAGMA user_version = ", v + 1).c_str());
    if (!s.ok()) {
      Exec("ROLLBACK").IgnoreError();
      return s;
    }
    RETURN_IF_ERROR(Exec("COMMIT"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Model> SqliteMetadataStore::PutModel(const std::string& tenant,
                                                        const v1::Model& model) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_,
          "INSERT OR IGNORE INTO models (tenant, id, created_ns, proto) VALUES (?1, ?2, ?3, ?4)");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, tenant).Bind(2, model.id()).Bind(3, ToNanos(model.create_time()));
  st.BindBlob(4, model.SerializeAsString());
  RETURN_IF_ERROR(st.Run());
  return GetById<v1::Model>(db_, "models", "model", {tenant}, model.id());
}

absl::StatusOr<v1::Model> SqliteMetadataStore::GetModel(const std::string& tenant,
                                                        const std::string& id) {
  absl::MutexLock lock(&mu_);
  return GetById<v1::Model>(db_, "models", "model", {tenant}, id);
}

absl::StatusOr<Page<v1::Model>> SqliteMetadataStore::ListModels(const std::string& tenant,
                                                                int page_size,
                                                                const std::string& token) {
  absl::MutexLock lock(&mu_);
  return ListTable<v1::Model>(db_, "models", {tenant}, "", page_size, token);
}

absl::Status SqliteMetadataStore::DeleteModel(const std::string& tenant, const std::string& id) {
  absl::MutexLock lock(&mu_);
  return DeleteById(db_, "models", "model", tenant, id);
}

absl::StatusOr<v1::Dataset> SqliteMetadataStore::PutDataset(const std::string& tenant,
                                                            const v1::Dataset& dataset) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_,
          "INSERT OR IGNORE INTO datasets (tenant, id, created_ns, proto) VALUES (?1, ?2, ?3, ?4)");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, tenant).Bind(2, dataset.id()).Bind(3, ToNanos(dataset.create_time()));
  st.BindBlob(4, dataset.SerializeAsString());
  RETURN_IF_ERROR(st.Run());
  return GetById<v1::Dataset>(db_, "datasets", "dataset", {tenant}, dataset.id());
}

absl::StatusOr<v1::Dataset> SqliteMetadataStore::GetDataset(const std::string& tenant,
                                                            const std::string& id) {
  absl::MutexLock lock(&mu_);
  return GetById<v1::Dataset>(db_, "datasets", "dataset", {tenant, true}, id);
}

absl::StatusOr<Page<v1::Dataset>> SqliteMetadataStore::ListDatasets(const std::string& tenant,
                                                                    int page_size,
                                                                    const std::string& token) {
  absl::MutexLock lock(&mu_);
  return ListTable<v1::Dataset>(db_, "datasets", {tenant, true}, "", page_size, token);
}

absl::Status SqliteMetadataStore::DeleteDataset(const std::string& tenant, const std::string& id) {
  absl::MutexLock lock(&mu_);
  return DeleteById(db_, "datasets", "dataset", tenant, id);
}

absl::Status SqliteMetadataStore::PutJobLocked(const std::string* tenant, const v1::Job& job) {
  const bool insert = tenant != nullptr;
  const char* sql =
      insert ? "INSERT INTO jobs (id, request_id, state, kind, created_ns, proto, tenant) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?8)"
             : "UPDATE jobs SET state = ?3, proto = ?7 WHERE id = ?1";
  Stmt st(db_, sql);
  RETURN_IF_ERROR(st.status());
  st.Bind(1, job.id());
  if (insert) {
    if (job.request_id().empty()) {
      st.BindNull(2);
    } else {
      st.Bind(2, job.request_id());
    }
    st.Bind(4, static_cast<int64_t>(job.kind()))
        .Bind(5, ToNanos(job.create_time()))
        .Bind(8, *tenant);
  }
  st.Bind(3, static_cast<int64_t>(job.state())).BindBlob(7, job.SerializeAsString());
  RETURN_IF_ERROR(st.Run());
  if (!insert && sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(job.id()), " not found"));
  }
  return absl::OkStatus();
}

absl::Status SqliteMetadataStore::InsertJob(const std::string& tenant, const v1::Job& job,
                                            const std::vector<std::string>& referenced_ids) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::Status s = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    RETURN_IF_ERROR(PutJobLocked(&tenant, job));
    for (const std::string& id : referenced_ids) {
      Stmt st(db_, "INSERT OR IGNORE INTO job_refs (job_id, tenant, ref_id) VALUES (?1, ?2, ?3)");
      RETURN_IF_ERROR(st.status());
      st.Bind(1, job.id()).Bind(2, tenant).Bind(3, id);
      RETURN_IF_ERROR(st.Run());
    }
    return absl::OkStatus();
  }();
  if (!s.ok()) {
    Exec("ROLLBACK").IgnoreError();
    return s;
  }
  return Exec("COMMIT");
}

absl::Status SqliteMetadataStore::UpdateJob(const v1::Job& job) {
  absl::MutexLock lock(&mu_);
  return PutJobLocked(nullptr, job);
}

absl::StatusOr<v1::Job> SqliteMetadataStore::GetJob(const std::string& tenant,
                                                    const std::string& id) {
  absl::MutexLock lock(&mu_);
  return GetById<v1::Job>(db_, "jobs", "job", {tenant}, id);
}

absl::StatusOr<v1::Job> SqliteMetadataStore::GetJobAnyTenant(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::string proto, JobColumnLocked("proto", id));
  return Parse<v1::Job>(proto);
}

absl::StatusOr<std::string> SqliteMetadataStore::JobTenant(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return JobColumnLocked("tenant", id);
}

absl::StatusOr<std::string> SqliteMetadataStore::JobColumnLocked(const char* column,
                                                                 const std::string& id) {
  Stmt st(db_, absl::StrCat("SELECT ", column, " FROM jobs WHERE id = ?1").c_str());
  RETURN_IF_ERROR(st.status());
  st.Bind(1, id);
  int rc = st.Step();
  if (rc == SQLITE_DONE)
    return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(id), " not found"));
  if (rc != SQLITE_ROW) return st.Failure();
  return st.Text(0);
}

absl::StatusOr<v1::Job> SqliteMetadataStore::GetJobByRequestId(const std::string& tenant,
                                                               const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT proto FROM jobs WHERE request_id = ?1 AND tenant = ?2");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, request_id).Bind(2, tenant);
  int rc = st.Step();
  if (rc == SQLITE_DONE) return absl::NotFoundError("no job with that request id");
  if (rc != SQLITE_ROW) return st.Failure();
  return Parse<v1::Job>(st.Text(0));
}

absl::StatusOr<Page<v1::Job>> SqliteMetadataStore::ListJobs(const std::string& tenant,
                                                            const JobFilter& filter, int page_size,
                                                            const std::string& token) {
  std::string where;
  // Enum values are integers from a closed proto enum: safe to inline.
  if (filter.state != v1::JOB_STATE_UNSPECIFIED) {
    absl::StrAppend(&where, " AND state = ", static_cast<int>(filter.state));
  }
  if (filter.kind != v1::JOB_KIND_UNSPECIFIED) {
    absl::StrAppend(&where, " AND kind = ", static_cast<int>(filter.kind));
  }
  absl::MutexLock lock(&mu_);
  return ListTable<v1::Job>(db_, "jobs", {tenant}, where, page_size, token);
}

absl::StatusOr<std::vector<v1::Job>> SqliteMetadataStore::JobsInState(v1::JobState state) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT proto FROM jobs WHERE state = ?1 ORDER BY created_ns, id");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, static_cast<int64_t>(state));
  std::vector<v1::Job> jobs;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    ASSIGN_OR_RETURN(v1::Job job, Parse<v1::Job>(st.Text(0)));
    jobs.push_back(std::move(job));
  }
  if (rc != SQLITE_DONE) return st.Failure();
  return jobs;
}

absl::StatusOr<bool> SqliteMetadataStore::IsReferencedByActiveJob(const std::string& tenant,
                                                                  const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_,
          "SELECT 1 FROM job_refs r JOIN jobs j ON j.id = r.job_id "
          "WHERE r.tenant = ?4 AND r.ref_id = ?3 AND j.state IN (?1, ?2) LIMIT 1");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED))
      .Bind(2, static_cast<int64_t>(v1::JOB_STATE_RUNNING))
      .Bind(3, id)
      .Bind(4, tenant);
  int rc = st.Step();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return st.Failure();
  }
  return rc == SQLITE_ROW;
}

absl::Status SqliteMetadataStore::AppendEvent(const v1::JobEvent& event, const v1::Job* job) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::Status s = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    Stmt last(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?1");
    RETURN_IF_ERROR(last.status());
    last.Bind(1, event.job_id());
    if (last.Step() != SQLITE_ROW) return absl::InternalError("sqlite: max(seq)");
    if (event.sequence() != last.Int(0) + 1) {
      return absl::AlreadyExistsError(absl::StrCat("event sequence ", event.sequence(),
                                                   " does not follow ", last.Int(0)));
    }
    Stmt st(db_, "INSERT INTO events (job_id, seq, proto) VALUES (?1, ?2, ?3)");
    RETURN_IF_ERROR(st.status());
    st.Bind(1, event.job_id()).Bind(2, event.sequence()).BindBlob(3, event.SerializeAsString());
    RETURN_IF_ERROR(st.Run());
    if (job != nullptr) RETURN_IF_ERROR(PutJobLocked(nullptr, *job));
    return absl::OkStatus();
  }();
  if (!s.ok()) {
    Exec("ROLLBACK").IgnoreError();
    return s;
  }
  return Exec("COMMIT");
}

absl::StatusOr<std::vector<v1::JobEvent>> SqliteMetadataStore::ListEvents(const std::string& job_id,
                                                                          int64_t after_sequence,
                                                                          int limit) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT proto FROM events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, job_id).Bind(2, after_sequence).Bind(3, static_cast<int64_t>(limit));
  std::vector<v1::JobEvent> events;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    ASSIGN_OR_RETURN(v1::JobEvent e, Parse<v1::JobEvent>(st.Text(0)));
    events.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return st.Failure();
  return events;
}

absl::Status SqliteMetadataStore::PutArtifact(const v1::Artifact& artifact) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_,
          "INSERT OR REPLACE INTO artifacts (job_id, name, sha256, proto) VALUES (?1, ?2, ?3, ?4)");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, artifact.job_id())
      .Bind(2, artifact.name())
      .Bind(3, artifact.sha256())
      .BindBlob(4, artifact.SerializeAsString());
  return st.Run();
}

absl::StatusOr<v1::Artifact> SqliteMetadataStore::GetArtifact(const std::string& job_id,
                                                              const std::string& name) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT proto FROM artifacts WHERE job_id = ?1 AND name = ?2");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, job_id).Bind(2, name);
  int rc = st.Step();
  if (rc == SQLITE_DONE) {
    return absl::NotFoundError(absl::StrCat("artifact ", QuoteClientText(name), " of job ",
                                            QuoteClientText(job_id), " not found"));
  }
  if (rc != SQLITE_ROW) return st.Failure();
  return Parse<v1::Artifact>(st.Text(0));
}

absl::StatusOr<std::vector<v1::Artifact>> SqliteMetadataStore::ListArtifacts(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT proto FROM artifacts WHERE job_id = ?1 ORDER BY name");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, job_id);
  std::vector<v1::Artifact> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    ASSIGN_OR_RETURN(v1::Artifact a, Parse<v1::Artifact>(st.Text(0)));
    out.push_back(std::move(a));
  }
  if (rc != SQLITE_DONE) return st.Failure();
  return out;
}

absl::StatusOr<bool> SqliteMetadataStore::IsBlobReferenced(const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_,
          "SELECT 1 FROM artifacts WHERE sha256 = ?1 UNION ALL "
          "SELECT 1 FROM models WHERE id = ?1 UNION ALL "
          "SELECT 1 FROM datasets WHERE id = ?1 LIMIT 1");
  RETURN_IF_ERROR(st.status());
  st.Bind(1, sha256);
  int rc = st.Step();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return st.Failure();
  }
  return rc == SQLITE_ROW;
}

absl::StatusOr<std::set<std::string>> SqliteMetadataStore::ReferencedBlobs() {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT sha256 FROM artifacts UNION SELECT id FROM models UNION "
               "SELECT id FROM datasets");
  RETURN_IF_ERROR(st.status());
  std::set<std::string> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.insert(st.Text(0));
  if (rc != SQLITE_DONE) return st.Failure();
  return out;
}

}  // namespace compress::store
