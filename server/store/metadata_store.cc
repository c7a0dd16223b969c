#include "server/store/metadata_store.h"

#include "absl/strings/match.h"
#include "server/store/pg_metadata_store.h"
#include "server/store/sqlite_metadata_store.h"
#include "server/util/status_macros.h"

namespace compress::store {

bool IsPostgresUrl(const std::string& database) {
  return absl::StartsWith(database, "postgresql://") || absl::StartsWith(database, "postgres://");
}

absl::StatusOr<std::unique_ptr<MetadataStore>> OpenMetadataStore(
    const std::string& database, const MetadataStoreOptions& options) {
  if (IsPostgresUrl(database)) {
    PgMetadataStoreOptions pg_options;
    pg_options.url = database;
    pg_options.max_connections = options.max_connections;
    pg_options.acquire_timeout = options.acquire_timeout;
    pg_options.migrate = options.migrate;
    ASSIGN_OR_RETURN(std::unique_ptr<PgMetadataStore> store, PgMetadataStore::Create(pg_options));
    return std::unique_ptr<MetadataStore>(std::move(store));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SqliteMetadataStore> store,
                   SqliteMetadataStore::Create(database));
  return std::unique_ptr<MetadataStore>(std::move(store));
}

}  // namespace compress::store
