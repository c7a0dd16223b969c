// MetadataStore: models, datasets, jobs, events and artifacts in SQLite (WAL).
//
// Rows keep the resource as a serialized compress.v1 message plus the columns
// that queries filter or order by. Every write is one transaction, so a crash
// (kill -9) leaves either the old or the new row. Thread-safe: one connection
// behind a mutex (SQLite serialises writers anyway).
//
// Paging: lists are newest first; a page token is opaque to clients.
//
// Tenants: every model, dataset and job row has an owning tenant, and the
// lookups that serve RPCs take the caller's tenant: another tenant's row is
// NOT_FOUND, exactly like a missing one. The same bytes uploaded by two
// tenants are two rows (each with its own name and time) over one blob.
// Builtin datasets belong to kPublicTenant, which every tenant sees. Events
// and artifacts hang off a job: check the job's tenant first.
#ifndef COMPRESS_STORE_METADATA_STORE_H_
#define COMPRESS_STORE_METADATA_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "compress/v1/compress.pb.h"

struct sqlite3;

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
  // Opens (creating if needed) the database file and migrates the schema.
  // ":memory:" works for tests.
  static absl::StatusOr<std::unique_ptr<MetadataStore>> Create(const std::string& path);
  ~MetadataStore();
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;

  // Models of one tenant. PutModel keeps an existing row with the same
  // tenant and id (dedup) and returns the stored one.
  absl::StatusOr<compress::v1::Model> PutModel(const std::string& tenant,
                                               const compress::v1::Model& model)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Model> GetModel(const std::string& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Page<compress::v1::Model>> ListModels(const std::string& tenant, int page_size,
                                                       const std::string& token)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteModel(const std::string& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Datasets, same rules; Get and List include the public (builtin) ones.
  absl::StatusOr<compress::v1::Dataset> PutDataset(const std::string& tenant,
                                                   const compress::v1::Dataset& dataset)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& tenant,
                                                   const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Page<compress::v1::Dataset>> ListDatasets(const std::string& tenant,
                                                           int page_size,
                                                           const std::string& token)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteDataset(const std::string& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Jobs. Ids are unique across tenants; request ids within a tenant.
  // InsertJob fails with ALREADY_EXISTS on a duplicate id or request id.
  // `referenced_ids` are the models and datasets the job reads (its kind's
  // handler lists them): IsReferencedByActiveJob answers from them.
  absl::Status InsertJob(const std::string& tenant, const compress::v1::Job& job,
                         const std::vector<std::string>& referenced_ids)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status UpdateJob(const compress::v1::Job& job) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Job> GetJob(const std::string& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The job whoever owns it: for the job layer (recovery, running jobs),
  // never for answering a caller.
  absl::StatusOr<compress::v1::Job> GetJobAnyTenant(const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> JobTenant(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // NOT_FOUND when no job of the tenant has this request id.
  absl::StatusOr<compress::v1::Job> GetJobByRequestId(const std::string& tenant,
                                                      const std::string& request_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Page<compress::v1::Job>> ListJobs(const std::string& tenant,
                                                   const JobFilter& filter, int page_size,
                                                   const std::string& token)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Jobs in `state` of every tenant, oldest first (restart recovery).
  absl::StatusOr<std::vector<compress::v1::Job>> JobsInState(compress::v1::JobState state)
      ABSL_LOCKS_EXCLUDED(mu_);
  // True when a non-terminal job of the tenant references the model or
  // dataset id.
  absl::StatusOr<bool> IsReferencedByActiveJob(const std::string& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Events. AppendEvent requires event.sequence() == last + 1 for the job
  // (ALREADY_EXISTS otherwise) and, in the same transaction, stores `job`
  // when given (its last_sequence/progress/state move with the event).
  absl::Status AppendEvent(const compress::v1::JobEvent& event,
                           const compress::v1::Job* job = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  // Events with sequence > after_sequence, ascending, at most `limit`.
  absl::StatusOr<std::vector<compress::v1::JobEvent>> ListEvents(const std::string& job_id,
                                                                 int64_t after_sequence,
                                                                 int limit)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Artifacts (one row per job and name; a re-run replaces it).
  absl::Status PutArtifact(const compress::v1::Artifact& artifact) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Artifact> GetArtifact(const std::string& job_id,
                                                     const std::string& name)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<compress::v1::Artifact>> ListArtifacts(const std::string& job_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // True when any artifact, model or dataset of any tenant refers to the
  // blob digest.
  absl::StatusOr<bool> IsBlobReferenced(const std::string& sha256) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit MetadataStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Migrate() ABSL_LOCKS_EXCLUDED(mu_);
  // One column of a job row, whatever its tenant.
  absl::StatusOr<std::string> JobColumnLocked(const char* column, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Inserts the job for `tenant`, or updates it when `tenant` is null.
  absl::Status PutJobLocked(const std::string* tenant, const compress::v1::Job& job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_METADATA_STORE_H_
