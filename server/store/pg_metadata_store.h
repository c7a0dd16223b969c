// PgMetadataStore: the MetadataStore on PostgreSQL 15, for several replicas
// sharing one database. Same contract as SqliteMetadataStore (tests/store
// runs one suite on both); what differs is underneath:
//   - Connections come from a bounded pg::Pool; each write is one
//     transaction, run again when the server rolled it back for a conflict
//     or the connection was lost before COMMIT.
//   - Event sequences are per job and assigned under the job row: AppendEvent
//     locks it (SELECT ... FOR UPDATE), checks the next number and inserts
//     the event and the job row update in that one transaction. There is no
//     global sequence: a global one can be seen out of commit order.
//   - Text columns use the "C" collation, so ids order bytewise as on SQLite
//     whatever the database's locale (page tokens compare ids).
//   - The schema is versioned in schema_migrations and migrated at Create
//     under pg_advisory_xact_lock, so replicas starting together are safe;
//     a database newer than this binary is FAILED_PRECONDITION.
//
// Thread-safe: any number of threads share the pool.
//
//   PgMetadataStoreOptions options;
//   options.url = "postgresql://compressd@db:5432/compressd";
//   ASSIGN_OR_RETURN(auto store, PgMetadataStore::Create(options));
#ifndef COMPRESS_STORE_PG_METADATA_STORE_H_
#define COMPRESS_STORE_PG_METADATA_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/store/metadata_store.h"
#include "server/store/pg/pool.h"

namespace compress::store {

struct PgMetadataStoreOptions {
  // postgresql://user[:password]@host[:port]/database[?param=value...],
  // libpq's URL form (sslmode and the like pass through). The database must
  // exist. Required.
  std::string url;
  // Most connections open at once. Default 8.
  int max_connections = 8;
  // How long a call waits for a free connection before RESOURCE_EXHAUSTED.
  // Default 10 s.
  absl::Duration acquire_timeout = absl::Seconds(10);
  // Bring the schema up to date at Create (under the advisory lock); false:
  // only check that it is (FAILED_PRECONDITION "run compressd migrate").
  bool migrate = true;
};

// The device_kind column of a job that asks for `device`: "cpu", "cuda"
// (for "cuda" and "cuda:N") or "any" ("auto" and anything else).
std::string DeviceKind(const std::string& device);

class PgMetadataStore final : public MetadataStore {
 public:
  // The schema version this binary writes (schema_migrations.version).
  static int64_t LatestSchemaVersion();

  // Connects and migrates the schema: UNAVAILABLE when the server cannot be
  // reached, FAILED_PRECONDITION for a schema newer than this binary.
  static absl::StatusOr<std::unique_ptr<PgMetadataStore>> Create(
      const PgMetadataStoreOptions& options);
  ~PgMetadataStore() override = default;

  absl::StatusOr<compress::v1::Model> PutModel(const std::string& tenant,
                                               const compress::v1::Model& model) override;
  absl::StatusOr<compress::v1::Model> GetModel(const std::string& tenant,
                                               const std::string& id) override;
  absl::StatusOr<Page<compress::v1::Model>> ListModels(const std::string& tenant, int page_size,
                                                       const std::string& token) override;
  absl::Status DeleteModel(const std::string& tenant, const std::string& id) override;

  absl::StatusOr<compress::v1::Dataset> PutDataset(const std::string& tenant,
                                                   const compress::v1::Dataset& dataset) override;
  absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& tenant,
                                                   const std::string& id) override;
  absl::StatusOr<Page<compress::v1::Dataset>> ListDatasets(const std::string& tenant, int page_size,
                                                           const std::string& token) override;
  absl::Status DeleteDataset(const std::string& tenant, const std::string& id) override;

  absl::Status InsertJob(const std::string& tenant, const compress::v1::Job& job,
                         const std::vector<std::string>& referenced_ids) override;
  absl::Status UpdateJob(const compress::v1::Job& job) override;
  absl::StatusOr<compress::v1::Job> GetJob(const std::string& tenant,
                                           const std::string& id) override;
  absl::StatusOr<compress::v1::Job> GetJobAnyTenant(const std::string& id) override;
  absl::StatusOr<std::string> JobTenant(const std::string& id) override;
  absl::StatusOr<compress::v1::Job> GetJobByRequestId(const std::string& tenant,
                                                      const std::string& request_id) override;
  absl::StatusOr<Page<compress::v1::Job>> ListJobs(const std::string& tenant,
                                                   const JobFilter& filter, int page_size,
                                                   const std::string& token) override;
  absl::StatusOr<std::vector<compress::v1::Job>> JobsInState(compress::v1::JobState state) override;
  absl::StatusOr<bool> IsReferencedByActiveJob(const std::string& tenant,
                                               const std::string& id) override;

  absl::Status AppendEvent(const compress::v1::JobEvent& event,
                           const compress::v1::Job* job = nullptr) override;
  absl::StatusOr<std::vector<compress::v1::JobEvent>> ListEvents(const std::string& job_id,
                                                                 int64_t after_sequence,
                                                                 int limit) override;

  absl::Status PutArtifact(const compress::v1::Artifact& artifact) override;
  absl::StatusOr<compress::v1::Artifact> GetArtifact(const std::string& job_id,
                                                     const std::string& name) override;
  absl::StatusOr<std::vector<compress::v1::Artifact>> ListArtifacts(
      const std::string& job_id) override;
  absl::StatusOr<bool> IsBlobReferenced(const std::string& sha256) override;
  absl::StatusOr<std::set<std::string>> ReferencedBlobs() override;

  // The connections behind the store (tests watch it replace broken ones).
  pg::Pool& pool() { return *pool_; }

 private:
  explicit PgMetadataStore(std::unique_ptr<pg::Pool> pool) : pool_(std::move(pool)) {}
  absl::Status Migrate();
  absl::Status CheckSchema();

  const std::unique_ptr<pg::Pool> pool_;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_PG_METADATA_STORE_H_
