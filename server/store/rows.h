// What the metadata backends share, so that rows and page tokens mean the
// same on SQLite and PostgreSQL: timestamps as nanoseconds, resources as
// serialized protos, the page cursor and the page-size limits. Internal to
// server/store.
#ifndef COMPRESS_STORE_ROWS_H_
#define COMPRESS_STORE_ROWS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "google/protobuf/timestamp.pb.h"

namespace compress::store::rows {

inline constexpr int kMaxPageSize = 1000;
inline constexpr int kDefaultPageSize = 50;

int64_t ToNanos(const google::protobuf::Timestamp& t);

// The resource stored in a row; DATA_LOSS when the bytes do not parse.
template <typename T>
absl::StatusOr<T> Parse(const std::string& bytes) {
  T msg;
  if (!msg.ParseFromString(bytes)) return absl::DataLossError("corrupt metadata row");
  return msg;
}

// Where a newest-first walk resumes: rows strictly before (created_ns, id).
struct Cursor {
  int64_t created_ns = INT64_MAX;
  std::string id;
};

// "" is the first page; anything else must come from EncodeToken
// (INVALID_ARGUMENT otherwise).
absl::StatusOr<Cursor> DecodeToken(const std::string& token);
std::string EncodeToken(int64_t created_ns, const std::string& id);

// <= 0 is the default; larger than the cap is the cap.
int ClampPageSize(int page_size);

}  // namespace compress::store::rows

#endif  // COMPRESS_STORE_ROWS_H_
