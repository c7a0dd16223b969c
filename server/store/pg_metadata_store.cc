#include "server/store/pg_metadata_store.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/store/rows.h"
#include "server/util/client_text.h"
#include "server/util/status_macros.h"

namespace compress::store {
namespace v1 = compress::v1;
using pg::Connection;
using pg::Param;
using pg::Result;
using rows::Parse;
using rows::ToNanos;

namespace {

// Schema versions, applied in order; never edit a shipped step. Version n is
// kMigrations[n - 1]. Text columns are COLLATE "C": ids compare bytewise, as
// on SQLite, so page tokens walk the same order on every locale.
constexpr const char* kMigrations[] = {
    R"sql(
    CREATE TABLE models (
      tenant TEXT COLLATE "C" NOT NULL, id TEXT COLLATE "C" NOT NULL,
      created_ns BIGINT NOT NULL, proto BYTEA NOT NULL, PRIMARY KEY (tenant, id));
    CREATE INDEX models_id ON models (id);
    CREATE INDEX models_page ON models (tenant, created_ns, id);
    CREATE TABLE datasets (
      tenant TEXT COLLATE "C" NOT NULL, id TEXT COLLATE "C" NOT NULL,
      created_ns BIGINT NOT NULL, proto BYTEA NOT NULL, PRIMARY KEY (tenant, id));
    CREATE INDEX datasets_id ON datasets (id);
    CREATE INDEX datasets_page ON datasets (tenant, created_ns, id);
    CREATE TABLE jobs (
      id TEXT COLLATE "C" PRIMARY KEY, tenant TEXT COLLATE "C" NOT NULL,
      request_id TEXT COLLATE "C", state BIGINT NOT NULL, kind BIGINT NOT NULL,
      created_ns BIGINT NOT NULL, proto BYTEA NOT NULL, UNIQUE (tenant, request_id));
    CREATE INDEX jobs_state ON jobs (state, created_ns);
    CREATE INDEX jobs_page ON jobs (tenant, created_ns, id);
    CREATE TABLE job_refs (
      job_id TEXT COLLATE "C" NOT NULL, tenant TEXT COLLATE "C" NOT NULL,
      ref_id TEXT COLLATE "C" NOT NULL, PRIMARY KEY (job_id, ref_id));
    CREATE INDEX job_refs_ref ON job_refs (tenant, ref_id);
    CREATE TABLE events (
      job_id TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, proto BYTEA NOT NULL,
      PRIMARY KEY (job_id, seq));
    CREATE TABLE artifacts (
      job_id TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL,
      sha256 TEXT COLLATE "C" NOT NULL, proto BYTEA NOT NULL, PRIMARY KEY (job_id, name));
    CREATE INDEX artifacts_sha ON artifacts (sha256);
    )sql",
    // 2: leases for the shared job queue (pg/pg_job_queue.h). device_kind is
    // 'any', 'cpu' or 'cuda' (rows from version 1 read as 'any'). Every
    // event insert NOTIFYs its job id (ids only: payloads are capped at
    // 8000 bytes); one notification per job and transaction.
    R"sql(
    ALTER TABLE jobs ADD COLUMN device_kind TEXT COLLATE "C" NOT NULL DEFAULT 'any',
      ADD COLUMN lease_owner TEXT COLLATE "C", ADD COLUMN lease_expires_at TIMESTAMPTZ,
      ADD COLUMN attempt INT NOT NULL DEFAULT 0,
      ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
    CREATE INDEX jobs_claim ON jobs (state, device_kind, created_ns, id);
    CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    CREATE FUNCTION compress_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_notify('compress_events', NEW.job_id);
      RETURN NULL;
    END $$;
    CREATE TRIGGER events_notify AFTER INSERT ON events
      FOR EACH ROW EXECUTE FUNCTION compress_notify_event();
    )sql",
};
constexpr int64_t kLatest = sizeof(kMigrations) / sizeof(kMigrations[0]);

// pg_advisory_xact_lock key of schema migrations ("compress" in ASCII):
// every replica takes it before reading the version.
constexpr int64_t kMigrationLock = 0x636f6d7072657373;

// Which rows a tenant sees: its own, and with `with_public` the public ones.
struct Visibility {
  std::string tenant;
  bool with_public = false;
  std::string other() const { return with_public ? kPublicTenant : tenant; }
};

template <typename T>
absl::StatusOr<std::vector<T>> ParseAll(const Result& r) {
  std::vector<T> out;
  out.reserve(static_cast<size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) {
    ASSIGN_OR_RETURN(T item, Parse<T>(r.Bytes(i, 0)));
    out.push_back(std::move(item));
  }
  return out;
}

// Lists a tenant's rows of a (tenant, id, created_ns, proto) table newest
// first, as SqliteMetadataStore does.
template <typename T>
absl::StatusOr<Page<T>> ListTable(pg::Pool& pool, const std::string& table, const Visibility& v,
                                  const std::string& extra_where, int page_size,
                                  const std::string& token) {
  ASSIGN_OR_RETURN(rows::Cursor cursor, rows::DecodeToken(token));
  const int n = rows::ClampPageSize(page_size);
  const std::string sql = absl::StrCat("SELECT proto, created_ns, id FROM ", table,
                                       " WHERE (created_ns, id) < ($1, $2) AND tenant IN ($4, $5)",
                                       extra_where, " ORDER BY created_ns DESC, id DESC LIMIT $3");
  return pool.RunRead([&](Connection& c) -> absl::StatusOr<Page<T>> {
    ASSIGN_OR_RETURN(Result r,
                     c.Exec(sql, {cursor.created_ns, cursor.id, n + 1, v.tenant, v.other()}));
    Page<T> page;
    for (int i = 0; i < r.rows(); ++i) {
      if (i == n) {
        page.next_page_token = rows::EncodeToken(r.Int(i - 1, 1), r.Bytes(i - 1, 2));
        break;
      }
      ASSIGN_OR_RETURN(T item, Parse<T>(r.Bytes(i, 0)));
      page.items.push_back(std::move(item));
    }
    return page;
  });
}

// Another tenant's row answers exactly like a missing one: NOT_FOUND.
template <typename T>
absl::StatusOr<T> GetById(pg::Pool& pool, const std::string& table, const std::string& what,
                          const Visibility& v, const std::string& id) {
  // ORDER BY tenant: of a public and an own row with one id, the public one,
  // as SQLite's (tenant, id) key order gives.
  const std::string sql = absl::StrCat("SELECT proto FROM ", table,
                                       " WHERE id = $1 AND tenant IN ($2, $3) ORDER BY tenant "
                                       "LIMIT 1");
  return pool.RunRead([&](Connection& c) -> absl::StatusOr<T> {
    ASSIGN_OR_RETURN(Result r, c.Exec(sql, {id, v.tenant, v.other()}));
    if (r.rows() == 0)
      return absl::NotFoundError(absl::StrCat(what, " ", QuoteClientText(id), " not found"));
    return Parse<T>(r.Bytes(0, 0));
  });
}

absl::Status DeleteById(pg::Pool& pool, const std::string& table, const std::string& what,
                        const std::string& tenant, const std::string& id) {
  const std::string sql = absl::StrCat("DELETE FROM ", table, " WHERE id = $1 AND tenant = $2");
  return pool.RunTransaction([&](Connection& c) -> absl::Status {
    ASSIGN_OR_RETURN(Result r, c.Exec(sql, {id, tenant}));
    if (r.affected_rows() == 0) {
      return absl::NotFoundError(absl::StrCat(what, " ", QuoteClientText(id), " not found"));
    }
    return absl::OkStatus();
  });
}

// Inserts a (tenant, id, created_ns, proto) row unless one exists; returns
// the stored row.
template <typename T>
absl::StatusOr<T> PutIfAbsent(pg::Pool& pool, const std::string& table, const std::string& what,
                              const std::string& tenant, const T& item) {
  const std::string insert =
      absl::StrCat("INSERT INTO ", table,
                   " (tenant, id, created_ns, proto) VALUES ($1, $2, $3, $4) "
                   "ON CONFLICT (tenant, id) DO NOTHING");
  const std::string select =
      absl::StrCat("SELECT proto FROM ", table, " WHERE tenant = $1 AND id = $2");
  return pool.RunTransaction([&](Connection& c) -> absl::StatusOr<T> {
    RETURN_IF_ERROR(c.Exec(insert, {tenant, item.id(), ToNanos(item.create_time()),
                                    Param::Bytes(item.SerializeAsString())})
                        .status());
    ASSIGN_OR_RETURN(Result r, c.Exec(select, {tenant, item.id()}));
    if (r.rows() == 0) return absl::InternalError(absl::StrCat(what, " ", item.id(), " vanished"));
    return Parse<T>(r.Bytes(0, 0));
  });
}

// Stores a job's state and message; NOT_FOUND when the row is missing.
absl::Status UpdateJobRow(Connection& c, const v1::Job& job) {
  ASSIGN_OR_RETURN(Result r, c.Exec("UPDATE jobs SET state = $2, proto = $3 WHERE id = $1",
                                    {job.id(), static_cast<int64_t>(job.state()),
                                     Param::Bytes(job.SerializeAsString())}));
  if (r.affected_rows() == 0)
    return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(job.id()), " not found"));
  return absl::OkStatus();
}

}  // namespace

std::string DeviceKind(const std::string& device) {
  if (device == "cpu") return "cpu";
  if (device == "cuda" || absl::StartsWith(device, "cuda:")) return "cuda";
  return "any";
}

int64_t PgMetadataStore::LatestSchemaVersion() { return kLatest; }

absl::StatusOr<std::unique_ptr<PgMetadataStore>> PgMetadataStore::Create(
    const PgMetadataStoreOptions& options) {
  pg::PoolOptions pool_options;
  pool_options.conninfo = options.url;
  pool_options.max_connections = options.max_connections;
  pool_options.acquire_timeout = options.acquire_timeout;
  ASSIGN_OR_RETURN(std::unique_ptr<pg::Pool> pool, pg::Pool::Create(pool_options));
  std::unique_ptr<PgMetadataStore> store(new PgMetadataStore(std::move(pool)));
  RETURN_IF_ERROR(options.migrate ? store->Migrate() : store->CheckSchema());
  return store;
}

absl::Status PgMetadataStore::CheckSchema() {
  return pool_->RunRead([&](Connection& c) -> absl::Status {
    ASSIGN_OR_RETURN(Result t, c.Exec("SELECT to_regclass('schema_migrations') IS NOT NULL"));
    int64_t version = 0;
    if (t.Int(0, 0) != 0) {
      ASSIGN_OR_RETURN(Result r, c.Exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      version = r.Int(0, 0);
    }
    if (version == kLatest) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "database schema version ", version, ", this server needs ", kLatest,
        version < kLatest ? ": run `compressd migrate` first (or start with --migrate_on_start)"
                          : ": the database is newer; use a newer compressd"));
  });
}

absl::Status PgMetadataStore::Migrate() {
  // One transaction under the advisory lock: a second replica waits, then
  // finds the versions applied. DDL is transactional in PostgreSQL, so a
  // failed step leaves the database as it was.
  return pool_->RunTransaction([&](Connection& c) -> absl::Status {
    RETURN_IF_ERROR(c.Exec("SELECT pg_advisory_xact_lock($1)", {kMigrationLock}).status());
    RETURN_IF_ERROR(c.ExecScript(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"));
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
    const int64_t version = r.Int(0, 0);
    if (version > kLatest) {
      return absl::FailedPreconditionError(
          absl::StrCat("database schema version ", version, " is newer than this server (", kLatest,
                       "): refusing to start; use a newer compressd"));
    }
    for (int64_t v = version; v < kLatest; ++v) {
      RETURN_IF_ERROR(c.ExecScript(kMigrations[v]));
      RETURN_IF_ERROR(
          c.Exec("INSERT INTO schema_migrations (version) VALUES ($1)", {v + 1}).status());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Model> PgMetadataStore::PutModel(const std::string& tenant,
                                                    const v1::Model& model) {
  return PutIfAbsent(*pool_, "models", "model", tenant, model);
}

absl::StatusOr<v1::Model> PgMetadataStore::GetModel(const std::string& tenant,
                                                    const std::string& id) {
  return GetById<v1::Model>(*pool_, "models", "model", {tenant}, id);
}

absl::StatusOr<Page<v1::Model>> PgMetadataStore::ListModels(const std::string& tenant,
                                                            int page_size,
                                                            const std::string& token) {
  return ListTable<v1::Model>(*pool_, "models", {tenant}, "", page_size, token);
}

absl::Status PgMetadataStore::DeleteModel(const std::string& tenant, const std::string& id) {
  return DeleteById(*pool_, "models", "model", tenant, id);
}

absl::StatusOr<v1::Dataset> PgMetadataStore::PutDataset(const std::string& tenant,
                                                        const v1::Dataset& dataset) {
  return PutIfAbsent(*pool_, "datasets", "dataset", tenant, dataset);
}

absl::StatusOr<v1::Dataset> PgMetadataStore::GetDataset(const std::string& tenant,
                                                        const std::string& id) {
  return GetById<v1::Dataset>(*pool_, "datasets", "dataset", {tenant, true}, id);
}

absl::StatusOr<Page<v1::Dataset>> PgMetadataStore::ListDatasets(const std::string& tenant,
                                                                int page_size,
                                                                const std::string& token) {
  return ListTable<v1::Dataset>(*pool_, "datasets", {tenant, true}, "", page_size, token);
}

absl::Status PgMetadataStore::DeleteDataset(const std::string& tenant, const std::string& id) {
  return DeleteById(*pool_, "datasets", "dataset", tenant, id);
}

absl::Status PgMetadataStore::InsertJob(const std::string& tenant, const v1::Job& job,
                                        const std::vector<std::string>& referenced_ids) {
  return pool_->RunTransaction([&](Connection& c) -> absl::Status {
    // A job without a request id stores NULL, which never collides.
    Param request_id = job.request_id().empty() ? Param::Null() : Param(job.request_id());
    RETURN_IF_ERROR(c.Exec("INSERT INTO jobs (id, tenant, request_id, state, kind, created_ns, "
                           "proto, device_kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                           {job.id(), tenant, request_id, static_cast<int64_t>(job.state()),
                            static_cast<int64_t>(job.kind()), ToNanos(job.create_time()),
                            Param::Bytes(job.SerializeAsString()), DeviceKind(job.device())})
                        .status());
    for (const std::string& id : referenced_ids) {
      RETURN_IF_ERROR(c.Exec("INSERT INTO job_refs (job_id, tenant, ref_id) VALUES ($1, $2, $3) "
                             "ON CONFLICT DO NOTHING",
                             {job.id(), tenant, id})
                          .status());
    }
    return absl::OkStatus();
  });
}

absl::Status PgMetadataStore::UpdateJob(const v1::Job& job) {
  return pool_->RunTransaction([&](Connection& c) { return UpdateJobRow(c, job); });
}

absl::StatusOr<v1::Job> PgMetadataStore::GetJob(const std::string& tenant, const std::string& id) {
  return GetById<v1::Job>(*pool_, "jobs", "job", {tenant}, id);
}

absl::StatusOr<v1::Job> PgMetadataStore::GetJobAnyTenant(const std::string& id) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<v1::Job> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT proto FROM jobs WHERE id = $1", {id}));
    if (r.rows() == 0)
      return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(id), " not found"));
    return Parse<v1::Job>(r.Bytes(0, 0));
  });
}

absl::StatusOr<std::string> PgMetadataStore::JobTenant(const std::string& id) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT tenant FROM jobs WHERE id = $1", {id}));
    if (r.rows() == 0)
      return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(id), " not found"));
    return r.Bytes(0, 0);
  });
}

absl::StatusOr<v1::Job> PgMetadataStore::GetJobByRequestId(const std::string& tenant,
                                                           const std::string& request_id) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<v1::Job> {
    ASSIGN_OR_RETURN(Result r,
                     c.Exec("SELECT proto FROM jobs WHERE request_id = $1 AND tenant = $2",
                            {request_id, tenant}));
    if (r.rows() == 0) return absl::NotFoundError("no job with that request id");
    return Parse<v1::Job>(r.Bytes(0, 0));
  });
}

absl::StatusOr<Page<v1::Job>> PgMetadataStore::ListJobs(const std::string& tenant,
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
  return ListTable<v1::Job>(*pool_, "jobs", {tenant}, where, page_size, token);
}

absl::StatusOr<std::vector<v1::Job>> PgMetadataStore::JobsInState(v1::JobState state) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<std::vector<v1::Job>> {
    ASSIGN_OR_RETURN(Result r,
                     c.Exec("SELECT proto FROM jobs WHERE state = $1 ORDER BY created_ns, id",
                            {static_cast<int64_t>(state)}));
    return ParseAll<v1::Job>(r);
  });
}

absl::StatusOr<bool> PgMetadataStore::IsReferencedByActiveJob(const std::string& tenant,
                                                              const std::string& id) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<bool> {
    ASSIGN_OR_RETURN(Result r,
                     c.Exec("SELECT 1 FROM job_refs r JOIN jobs j ON j.id = r.job_id "
                            "WHERE r.tenant = $4 AND r.ref_id = $3 AND j.state IN ($1, $2) "
                            "LIMIT 1",
                            {static_cast<int64_t>(v1::JOB_STATE_QUEUED),
                             static_cast<int64_t>(v1::JOB_STATE_RUNNING), id, tenant}));
    return r.rows() > 0;
  });
}

absl::Status PgMetadataStore::AppendEvent(const v1::JobEvent& event, const v1::Job* job) {
  return pool_->RunTransaction([&](Connection& c) -> absl::Status {
    // Appends to one job queue up on its row, so each sees the previous
    // one's commit (READ COMMITTED reads a fresh snapshot per statement).
    ASSIGN_OR_RETURN(Result locked,
                     c.Exec("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", {event.job_id()}));
    if (locked.rows() == 0) {
      // No job row (the contract allows events without one): queue up on
      // the id instead.
      RETURN_IF_ERROR(
          c.Exec("SELECT pg_advisory_xact_lock(hashtextextended('compressd.events:' || $1, 0))",
                 {event.job_id()})
              .status());
    }
    ASSIGN_OR_RETURN(Result last, c.Exec("SELECT COALESCE(MAX(seq), 0) FROM events "
                                         "WHERE job_id = $1",
                                         {event.job_id()}));
    const int64_t last_seq = last.Int(0, 0);
    if (event.sequence() != last_seq + 1) {
      return absl::AlreadyExistsError(
          absl::StrCat("event sequence ", event.sequence(), " does not follow ", last_seq));
    }
    RETURN_IF_ERROR(
        c.Exec("INSERT INTO events (job_id, seq, proto) VALUES ($1, $2, $3)",
               {event.job_id(), event.sequence(), Param::Bytes(event.SerializeAsString())})
            .status());
    if (job != nullptr) RETURN_IF_ERROR(UpdateJobRow(c, *job));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<v1::JobEvent>> PgMetadataStore::ListEvents(const std::string& job_id,
                                                                      int64_t after_sequence,
                                                                      int limit) {
  // A negative limit means none, as in SQLite (LIMIT NULL).
  Param limit_param = limit < 0 ? Param::Null() : Param(limit);
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<std::vector<v1::JobEvent>> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT proto FROM events WHERE job_id = $1 AND seq > $2 "
                                      "ORDER BY seq LIMIT $3",
                                      {job_id, after_sequence, limit_param}));
    return ParseAll<v1::JobEvent>(r);
  });
}

absl::Status PgMetadataStore::PutArtifact(const v1::Artifact& artifact) {
  return pool_->RunTransaction([&](Connection& c) -> absl::Status {
    return c
        .Exec(
            "INSERT INTO artifacts (job_id, name, sha256, proto) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (job_id, name) DO UPDATE SET sha256 = EXCLUDED.sha256, "
            "proto = EXCLUDED.proto",
            {artifact.job_id(), artifact.name(), artifact.sha256(),
             Param::Bytes(artifact.SerializeAsString())})
        .status();
  });
}

absl::StatusOr<v1::Artifact> PgMetadataStore::GetArtifact(const std::string& job_id,
                                                          const std::string& name) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<v1::Artifact> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT proto FROM artifacts WHERE job_id = $1 AND name = $2",
                                      {job_id, name}));
    if (r.rows() == 0) {
      return absl::NotFoundError(absl::StrCat("artifact ", QuoteClientText(name), " of job ",
                                              QuoteClientText(job_id), " not found"));
    }
    return Parse<v1::Artifact>(r.Bytes(0, 0));
  });
}

absl::StatusOr<std::vector<v1::Artifact>> PgMetadataStore::ListArtifacts(
    const std::string& job_id) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<std::vector<v1::Artifact>> {
    ASSIGN_OR_RETURN(
        Result r, c.Exec("SELECT proto FROM artifacts WHERE job_id = $1 ORDER BY name", {job_id}));
    return ParseAll<v1::Artifact>(r);
  });
}

absl::StatusOr<bool> PgMetadataStore::IsBlobReferenced(const std::string& sha256) {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<bool> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT 1 FROM artifacts WHERE sha256 = $1 UNION ALL "
                                      "SELECT 1 FROM models WHERE id = $1 UNION ALL "
                                      "SELECT 1 FROM datasets WHERE id = $1 LIMIT 1",
                                      {sha256}));
    return r.rows() > 0;
  });
}

absl::StatusOr<std::set<std::string>> PgMetadataStore::ReferencedBlobs() {
  return pool_->RunRead([&](Connection& c) -> absl::StatusOr<std::set<std::string>> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT sha256 FROM artifacts UNION SELECT id FROM models "
                                      "UNION SELECT id FROM datasets"));
    std::set<std::string> out;
    for (int i = 0; i < r.rows(); ++i) out.insert(r.Bytes(i, 0));
    return out;
  });
}

}  // namespace compress::store
