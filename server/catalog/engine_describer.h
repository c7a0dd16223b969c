// EngineDescriber: the catalog's ContentDescriber, in this process, with the
// engine (LibTorch loads the model). The server runs it inside a child
// process (server/worker/); tests and `compressd --role=child` call it
// directly.
#ifndef COMPRESS_CATALOG_ENGINE_DESCRIBER_H_
#define COMPRESS_CATALOG_ENGINE_DESCRIBER_H_

#include <string>

#include "server/catalog/catalog.h"

namespace compress::catalog {

class EngineDescriber : public ContentDescriber {
 public:
  absl::StatusOr<compress::v1::Model> DescribeModel(const std::string& path) override;
  absl::StatusOr<compress::v1::Dataset> DescribeDataset(const std::string& path) override;
  absl::StatusOr<compress::v1::Dataset> DescribeBuiltinDataset(const std::string& id,
                                                               const std::string& dir) override;
};

}  // namespace compress::catalog

#endif  // COMPRESS_CATALOG_ENGINE_DESCRIBER_H_
