// IDX files (the MNIST/Fashion-MNIST format), plain or gzipped (torch-free).
//
// Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type
// supported here), the number of dimensions, each dimension as a big-endian
// uint32, then the data in row-major order.
//
//   ASSIGN_OR_RETURN(FashionMnistFiles f, FashionMnistPaths(id, dir));
//   ASSIGN_OR_RETURN(IdxArray labels, ReadIdxFile(f.labels, 100));
#ifndef COMPRESS_ENGINE_DATA_IDX_H_
#define COMPRESS_ENGINE_DATA_IDX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress::engine {

struct IdxArray {
  std::vector<int64_t> dims;  // dims[0] = number of items read
  std::string data;           // uint8 values, row-major
};

// Reads the dimensions only. NOT_FOUND when the file cannot be opened,
// DATA_LOSS when it is not an unsigned-byte IDX file.
absl::StatusOr<std::vector<int64_t>> ReadIdxDims(const std::string& path);

// Reads the first `max_items` items along dimension 0 (all when <= 0).
absl::StatusOr<IdxArray> ReadIdxFile(const std::string& path,
                                     int64_t max_items = 0);

struct FashionMnistFiles {
  std::string images;  // e.g. <dir>/train-images-idx3-ubyte.gz
  std::string labels;
};

// Paths for "builtin:fashion-mnist/train" or "builtin:fashion-mnist/test";
// NOT_FOUND for any other builtin name.
absl::StatusOr<FashionMnistFiles> FashionMnistPaths(const std::string& id,
                                                    const std::string& dir);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_IDX_H_
