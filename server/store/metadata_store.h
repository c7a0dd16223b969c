// MetadataStore: models, datasets, jobs, events and artifacts as rows.
//
// An interface with two backends behind one contract (tests/store runs the
// same suite against both):
//   SqliteMetadataStore  one SQLite file (WAL); the single-node default.
//   PgMetadataStore      PostgreSQL 15, shared by several replicas.
// OpenMetadataStore picks one from the --database string.
//
// Rows keep the resource as a serialized compress.v1 message plus the columns
// that queries filter or order by. Every write is one transaction, so a crash
// (kill -9) leaves either the old or the new row. Implementations are
// thread-safe.
//
// Paging: lists are newest first; a page token is opaque to clients.
//
// Tenants: every model, dataset and job row has an owning tenant, and the
// lookups that serve RPCs take the caller's tenant: another tenant's row is
// NOT_FOUND, exactly like a missing one. The same bytes uploaded by two
// tenants are two rows (each with its own name and time) over one blob.
// Builtin datasets belong to kPublicTenant, which every tenant sees. Events
// and artifacts hang off a job: check the job's tenant first.
//
// Errors: NOT_FOUND, ALREADY_EXISTS and INVALID_ARGUMENT (a page token) as
// documented per method; DATA_LOSS for a row that does not parse;
// UNAVAILABLE when the database cannot be reached (PostgreSQL), ABORTED when
// a transaction lost a conflict after its retries; INTERNAL otherwise.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<MetadataStore> store,
//                    OpenMetadataStore("/var/lib/compressd/compressd.db"));
//   ASSIGN_OR_RETURN(v1::Model model, store->GetModel(tenant, id));
#ifndef COMPRESS_STORE_METADATA_STORE_H_
#define COMPRESS_STORE_METADATA_STORE_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "compress/v1/compress.pb.h"

namespace compress::store {

// The tenant of single-tenant servers (no token file), and the owner of
// every row written before tenants existed.
inline constexpr char kDefaultTenant[] = "default";
// Owner of rows every tenant sees (the builtin datasets).
inline constexpr char kPublicTenant[] = "";

template <typename T>
struct Page {
  std::vector<T> items;
  std::string next_page_token;  // empty on the last page
};

struct JobFilter {
  compress::v1::JobState state = compress::v1::JOB_STATE_UNSPECIFIED;  // any
  compress::v1::JobKind kind = compress::v1::JOB_KIND_UNSPECIFIED;     // any
};

class MetadataStore {
 public:
  virtual ~MetadataStore() = default;

  // Models of one tenant. PutModel keeps an existing row with the same
  // tenant and id (dedup) and returns the stored one.
  virtual absl::StatusOr<compress::v1::Model> PutModel(const std::string& tenant,
                                                       const compress::v1::Model& model) = 0;
  virtual absl::StatusOr<compress::v1::Model> GetModel(const std::string& tenant,
                                                       const std::string& id) = 0;
  virtual absl::StatusOr<Page<compress::v1::Model>> ListModels(const std::string& tenant,
                                                               int page_size,
                                                               const std::string& token) = 0;
  virtual absl::Status DeleteModel(const std::string& tenant, const std::string& id) = 0;

  // Datasets, same rules; Get and List include the public (builtin) ones.
  virtual absl::StatusOr<compress::v1::Dataset> PutDataset(
      const std::string& tenant, const compress::v1::Dataset& dataset) = 0;
  virtual absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& tenant,
                                                           const std::string& id) = 0;
  virtual absl::StatusOr<Page<compress::v1::Dataset>> ListDatasets(const std::string& tenant,
                                                                   int page_size,
                                                                   const std::string& token) = 0;
  virtual absl::Status DeleteDataset(const std::string& tenant, const std::string& id) = 0;

  // Jobs. Ids are unique across tenants; request ids within a tenant.
  // InsertJob fails with ALREADY_EXISTS on a duplicate id or request id.
  // `referenced_ids` are the models and datasets the job reads (its kind's
  // handler lists them): IsReferencedByActiveJob answers from them.
  virtual absl::Status InsertJob(const std::string& tenant, const compress::v1::Job& job,
                                 const std::vector<std::string>& referenced_ids) = 0;
  // Stores the job's state and message; NOT_FOUND when no such job.
  virtual absl::Status UpdateJob(const compress::v1::Job& job) = 0;
  virtual absl::StatusOr<compress::v1::Job> GetJob(const std::string& tenant,
                                                   const std::string& id) = 0;
  // The job whoever owns it: for the job layer (recovery, running jobs),
  // never for answering a caller.
  virtual absl::StatusOr<compress::v1::Job> GetJobAnyTenant(const std::string& id) = 0;
  virtual absl::StatusOr<std::string> JobTenant(const std::string& id) = 0;
  // NOT_FOUND when no job of the tenant has this request id.
  virtual absl::StatusOr<compress::v1::Job> GetJobByRequestId(const std::string& tenant,
                                                              const std::string& request_id) = 0;
  virtual absl::StatusOr<Page<compress::v1::Job>> ListJobs(const std::string& tenant,
                                                           const JobFilter& filter, int page_size,
                                                           const std::string& token) = 0;
  // Jobs in `state` of every tenant, oldest first (restart recovery).
  virtual absl::StatusOr<std::vector<compress::v1::Job>> JobsInState(
      compress::v1::JobState state) = 0;
  // True when a non-terminal job of the tenant references the model or
  // dataset id.
  virtual absl::StatusOr<bool> IsReferencedByActiveJob(const std::string& tenant,
                                                       const std::string& id) = 0;

  // Events. AppendEvent requires event.sequence() == last + 1 for the job
  // (ALREADY_EXISTS otherwise) and, in the same transaction, stores `job`
  // when given (its last_sequence/progress/state move with the event).
  // Appends to one job are serialised: of two concurrent appends with the
  // same sequence exactly one succeeds.
  virtual absl::Status AppendEvent(const compress::v1::JobEvent& event,
                                   const compress::v1::Job* job = nullptr) = 0;
  // Events with sequence > after_sequence, ascending, at most `limit`.
  virtual absl::StatusOr<std::vector<compress::v1::JobEvent>> ListEvents(const std::string& job_id,
                                                                         int64_t after_sequence,
                                                                         int limit) = 0;

  // Artifacts (one row per job and name; a re-run replaces it).
  virtual absl::Status PutArtifact(const compress::v1::Artifact& artifact) = 0;
  virtual absl::StatusOr<compress::v1::Artifact> GetArtifact(const std::string& job_id,
                                                             const std::string& name) = 0;
  virtual absl::StatusOr<std::vector<compress::v1::Artifact>> ListArtifacts(
      const std::string& job_id) = 0;
  // True when any artifact, model or dataset of any tenant refers to the
  // blob digest.
  virtual absl::StatusOr<bool> IsBlobReferenced(const std::string& sha256) = 0;
  // Every blob digest that any artifact, model or dataset of any tenant
  // refers to: the mark phase of blob garbage collection (`compressd gc`).
  virtual absl::StatusOr<std::set<std::string>> ReferencedBlobs() = 0;

 protected:
  MetadataStore() = default;
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;
};

// Connection settings of the PostgreSQL backend (SQLite ignores them).
struct MetadataStoreOptions {
  // Most connections the store opens at once. Default 8.
  int max_connections = 8;
  // How long a call waits for a free connection before RESOURCE_EXHAUSTED.
  // Default 10 s.
  absl::Duration acquire_timeout = absl::Seconds(10);
  // PostgreSQL: migrate the schema at open (false: only check it is current).
  // SQLite always migrates: one process owns the file.
  bool migrate = true;
};

// Opens the store named by `database` and brings its schema up to date:
//   "postgresql://user@host:5432/db?sslmode=..."  (or "postgres://") a
//       PostgreSQL database, which must exist; see PgMetadataStore.
//   anything else: a SQLite file, created if missing (":memory:" for tests).
// A schema newer than this binary knows is FAILED_PRECONDITION.
absl::StatusOr<std::unique_ptr<MetadataStore>> OpenMetadataStore(
    const std::string& database, const MetadataStoreOptions& options = {});

// True when `database` names a PostgreSQL database rather than a file.
bool IsPostgresUrl(const std::string& database);

}  // namespace compress::store

#endif  // COMPRESS_STORE_METADATA_STORE_H_
