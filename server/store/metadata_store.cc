#include "server/store/metadata_store.h"

#include "server/store/sqlite_metadata_store.h"
#include "server/util/status_macros.h"

namespace compress::store {

absl::StatusOr<std::unique_ptr<MetadataStore>> OpenMetadataStore(const std::string& database) {
  ASSIGN_OR_RETURN(std::unique_ptr<SqliteMetadataStore> store,
                   SqliteMetadataStore::Create(database));
  return std::unique_ptr<MetadataStore>(std::move(store));
}

}  // namespace compress::store
