// SqliteMetadataStore: the MetadataStore in one SQLite file (WAL), for the
// single-node server. One connection behind a mutex (SQLite serialises
// writers anyway). The schema version is the file's user_version.
//
//   ASSIGN_OR_RETURN(auto store, SqliteMetadataStore::Create(dir + "/compressd.db"));
#ifndef COMPRESS_STORE_SQLITE_METADATA_STORE_H_
#define COMPRESS_STORE_SQLITE_METADATA_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/store/metadata_store.h"

struct sqlite3;

namespace compress::store {

class SqliteMetadataStore final : public MetadataStore {
 public:
  // Opens (creating if needed) the database file and migrates the schema.
  // ":memory:" works for tests.
  static absl::StatusOr<std::unique_ptr<SqliteMetadataStore>> Create(const std::string& path);
  ~SqliteMetadataStore() override;

  absl::StatusOr<compress::v1::Model> PutModel(const std::string& tenant,
                                               const compress::v1::Model& model) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Model> GetModel(const std::string& tenant,
                                               const std::string& id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Page<compress::v1::Model>> ListModels(const std::string& tenant, int page_size,
                                                       const std::string& token) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteModel(const std::string& tenant, const std::string& id) override
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::StatusOr<compress::v1::Dataset> PutDataset(const std::string& tenant,
                                                   const compress::v1::Dataset& dataset) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& tenant,
                                                   const std::string& id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Page<compress::v1::Dataset>> ListDatasets(const std::string& tenant, int page_size,
                                                           const std::string& token) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteDataset(const std::string& tenant, const std::string& id) override
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::Status InsertJob(const std::string& tenant, const compress::v1::Job& job,
                         const std::vector<std::string>& referenced_ids) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status UpdateJob(const compress::v1::Job& job) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Job> GetJob(const std::string& tenant,
                                           const std::string& id) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Job> GetJobAnyTenant(const std::string& id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> JobTenant(const std::string& id) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Job> GetJobByRequestId(const std::string& tenant,
                                                      const std::string& request_id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Page<compress::v1::Job>> ListJobs(const std::string& tenant,
                                                   const JobFilter& filter, int page_size,
                                                   const std::string& token) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<compress::v1::Job>> JobsInState(compress::v1::JobState state) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<bool> IsReferencedByActiveJob(const std::string& tenant,
                                               const std::string& id) override
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::Status AppendEvent(const compress::v1::JobEvent& event,
                           const compress::v1::Job* job = nullptr) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<compress::v1::JobEvent>> ListEvents(const std::string& job_id,
                                                                 int64_t after_sequence,
                                                                 int limit) override
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::Status PutArtifact(const compress::v1::Artifact& artifact) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Artifact> GetArtifact(const std::string& job_id,
                                                     const std::string& name) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<compress::v1::Artifact>> ListArtifacts(
      const std::string& job_id) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<bool> IsBlobReferenced(const std::string& sha256) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::set<std::string>> ReferencedBlobs() override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit SqliteMetadataStore(sqlite3* db) : db_(db) {}
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

#endif  // COMPRESS_STORE_SQLITE_METADATA_STORE_H_
