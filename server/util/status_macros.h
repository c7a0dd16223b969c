// Small status helpers: Abseil 20220623 ships neither RETURN_IF_ERROR nor
// ASSIGN_OR_RETURN, so the project keeps its own here (and only here).
#ifndef COMPRESS_UTIL_STATUS_MACROS_H_
#define COMPRESS_UTIL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define COMPRESS_CONCAT_INNER_(a, b) a##b
#define COMPRESS_CONCAT_(a, b) COMPRESS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status _status = (expr);                   \
    if (!_status.ok()) return _status;                 \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, Foo());` assigns the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, rexpr)                                        \
  ASSIGN_OR_RETURN_IMPL_(COMPRESS_CONCAT_(_status_or_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // COMPRESS_UTIL_STATUS_MACROS_H_
