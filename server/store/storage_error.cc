#include "server/store/storage_error.h"

#include <sqlite3.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace compress::store {
namespace {

void Log(absl::string_view op, absl::string_view detail, absl::string_view why) {
  const std::string line =
      absl::StrCat("compressd: storage error: cannot ", op,
                   detail.empty() ? "" : absl::StrCat(" (", detail, ")"), ": ", why, "\n");
  std::fputs(line.c_str(), stderr);
}

std::string Message(absl::StatusCode code, absl::string_view op, absl::string_view why) {
  switch (code) {
    case absl::StatusCode::kResourceExhausted:
      return absl::StrCat("the server's storage is full: cannot ", op,
                          "; retry after space is freed");
    case absl::StatusCode::kUnavailable:
      return absl::StrCat("the server's storage failed to ", op, " (", why,
                          "); retrying may help");
    default:
      return absl::StrCat("the server's storage failed to ", op, " (", why, ")");
  }
}

}  // namespace

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::StatusCode::kResourceExhausted;
    case EIO:
    case EAGAIN:
    case EINTR:
    case EBUSY:
    case ETIMEDOUT:
    case ENOMEM:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status StorageError(int err, absl::string_view op, absl::string_view detail) {
  const std::string why = std::strerror(err);
  Log(op, detail, why);
  const absl::StatusCode code = CodeForErrno(err);
  return absl::Status(code, Message(code, op, why));
}

absl::Status SqliteStorageError(int sqlite_code, absl::string_view op,
                                absl::string_view sqlite_message) {
  absl::StatusCode code;
  switch (sqlite_code & 0xff) {
    case SQLITE_FULL:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
      code = absl::StatusCode::kUnavailable;
      break;
    default:
      code = absl::StatusCode::kInternal;
      break;
  }
  Log(op, "", absl::StrCat("sqlite: ", sqlite_message));
  // SQLite's messages name no files ("database or disk is full").
  return absl::Status(code, Message(code, op, absl::StrCat("sqlite: ", sqlite_message)));
}

}  // namespace compress::store
