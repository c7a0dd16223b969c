// What a client hears when a storage call fails (disk full, I/O error, a
// database that refuses a write), and the log line the operator reads.
//
// The status's code says whether retrying can help: RESOURCE_EXHAUSTED when
// the disk or quota is full, UNAVAILABLE for transient I/O or lock errors,
// INTERNAL otherwise. Its message names the operation ("store an upload",
// "write the metadata store") but never a server path; the path, errno text
// or database message goes to the log (stderr), once per error.
#ifndef COMPRESS_STORE_STORAGE_ERROR_H_
#define COMPRESS_STORE_STORAGE_ERROR_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace compress::store {

// `err` is an errno value; `op` says what failed in words a client may read;
// `detail` (a path, say) is logged only.
absl::Status StorageError(int err, absl::string_view op, absl::string_view detail);

// The same for an SQLite result code (primary or extended) and message.
absl::Status SqliteStorageError(int sqlite_code, absl::string_view op,
                                absl::string_view sqlite_message);

// The code StorageError gives an errno value.
absl::StatusCode CodeForErrno(int err);

}  // namespace compress::store

#endif  // COMPRESS_STORE_STORAGE_ERROR_H_
