#include "server/store/pg/connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace compress::store::pg {
namespace {

constexpr char kSqlStateUrl[] = "type.googleapis.com/compress.pg.SqlState";
// libpq reports a lost connection without a server message; this is the
// SQLSTATE the server would have used (connection_failure).
constexpr char kConnectionFailure[] = "08006";

constexpr Oid kBoolOid = 16;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kInt8Oid = 20;

absl::Status WithSqlState(absl::StatusCode code, absl::string_view sqlstate,
                          absl::string_view message) {
  absl::Status status(code, message);
  status.SetPayload(kSqlStateUrl, absl::Cord(sqlstate));
  return status;
}

// libpq messages end with a newline and may span lines; keep them one line.
std::string OneLine(const char* message) {
  std::string s = message != nullptr ? message : "";
  absl::StripTrailingAsciiWhitespace(&s);
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

uint64_t BigEndian(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// Idle connections print nothing: notices (CREATE ... IF NOT EXISTS) and the
// server's goodbye on termination are not for stderr.
void IgnoreNotice(void*, const char*) {}

}  // namespace

std::string SqlState(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kSqlStateUrl);
  return payload ? std::string(*payload) : std::string();
}

absl::StatusCode CodeForSqlState(absl::string_view s) {
  if (s == "23505") return absl::StatusCode::kAlreadyExists;  // unique_violation
  if (s == "40001" || s == "40P01") return absl::StatusCode::kAborted;
  if (s == "55P03") return absl::StatusCode::kAborted;           // lock_not_available
  if (s == "57014") return absl::StatusCode::kDeadlineExceeded;  // query_canceled
  if (s == "53300") return absl::StatusCode::kUnavailable;       // too_many_connections
  if (s == "42501") return absl::StatusCode::kPermissionDenied;  // insufficient_privilege
  // admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now.
  if (s == "57P01" || s == "57P02" || s == "57P03") return absl::StatusCode::kUnavailable;
  if (absl::StartsWith(s, "08")) return absl::StatusCode::kUnavailable;  // connection exception
  if (absl::StartsWith(s, "23")) return absl::StatusCode::kFailedPrecondition;  // integrity
  if (absl::StartsWith(s, "22")) return absl::StatusCode::kInvalidArgument;     // data exception
  if (absl::StartsWith(s, "53")) return absl::StatusCode::kResourceExhausted;   // disk, memory
  return absl::StatusCode::kInternal;
}

bool IsConflict(const absl::Status& status) {
  const std::string s = SqlState(status);
  return s == "40001" || s == "40P01";
}

bool IsConnectionLoss(const absl::Status& status) {
  const std::string s = SqlState(status);
  return !s.empty() && CodeForSqlState(s) == absl::StatusCode::kUnavailable && s != "53300";
}

// --- Result ---------------------------------------------------------------

Result& Result::operator=(Result&& other) noexcept {
  if (this != &other) {
    PQclear(result_);
    result_ = other.result_;
    other.result_ = nullptr;
  }
  return *this;
}

Result::~Result() { PQclear(result_); }

int Result::rows() const { return PQntuples(result_); }

int64_t Result::affected_rows() const {
  int64_t n = 0;
  return absl::SimpleAtoi(PQcmdTuples(result_), &n) ? n : 0;
}

bool Result::IsNull(int row, int col) const { return PQgetisnull(result_, row, col) != 0; }

std::string Result::Bytes(int row, int col) const {
  if (IsNull(row, col)) return std::string();
  return std::string(PQgetvalue(result_, row, col),
                     static_cast<size_t>(PQgetlength(result_, row, col)));
}

int64_t Result::Int(int row, int col) const {
  if (IsNull(row, col)) return 0;
  const char* p = PQgetvalue(result_, row, col);
  const int n = PQgetlength(result_, row, col);
  if (PQfformat(result_, col) == 0) {  // text (ExecScript results)
    int64_t v = 0;
    return absl::SimpleAtoi(absl::string_view(p, static_cast<size_t>(n)), &v) ? v : 0;
  }
  switch (PQftype(result_, col)) {
    case kInt8Oid:
      return static_cast<int64_t>(BigEndian(p, 8));
    case kInt4Oid:
      return static_cast<int32_t>(BigEndian(p, 4));
    case kInt2Oid:
      return static_cast<int16_t>(BigEndian(p, 2));
    case kBoolOid:
      return p[0] != 0;
    default:
      return 0;
  }
}

// --- Connection -----------------------------------------------------------

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const std::string& conninfo,
                                                             absl::Duration connect_timeout) {
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &parse_error);
  if (parsed == nullptr) {
    std::string why = parse_error != nullptr ? OneLine(parse_error) : "out of memory";
    PQfreemem(parse_error);
    return absl::InvalidArgumentError(absl::StrCat("database connection string: ", why));
  }
  PQconninfoFree(parsed);

  // Defaults first: anything the connection string sets wins (expand_dbname
  // lets later keywords override earlier ones).
  const std::string timeout =
      absl::StrCat(std::max<int64_t>(2, absl::ToInt64Seconds(connect_timeout)));
  const char* keywords[] = {"connect_timeout", "application_name", "keepalives",
                            "client_encoding", "dbname",           nullptr};
  const char* values[] = {timeout.c_str(), "compressd", "1", "UTF8", conninfo.c_str(), nullptr};
  pg_conn* conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (conn == nullptr) return absl::ResourceExhaustedError("libpq: out of memory");
  if (PQstatus(conn) != CONNECTION_OK) {
    absl::Status status = WithSqlState(
        absl::StatusCode::kUnavailable, kConnectionFailure,
        absl::StrCat("cannot connect to PostgreSQL database \"", OneLine(PQdb(conn)), "\" at ",
                     OneLine(PQhost(conn)), ":", OneLine(PQport(conn)), ": ",
                     OneLine(PQerrorMessage(conn))));
    PQfinish(conn);
    return status;
  }
  PQsetNoticeProcessor(conn, &IgnoreNotice, nullptr);
  return std::unique_ptr<Connection>(new Connection(conn));
}

Connection::~Connection() { PQfinish(conn_); }

bool Connection::ok() const { return !broken_ && PQstatus(conn_) == CONNECTION_OK; }

bool Connection::CheckIdleAlive() {
  if (!ok()) return false;
  // Pool connections never LISTEN, so anything readable while idle is the
  // server saying goodbye (an error, then end of file): treat as dead
  // rather than learn it from the borrower's first statement.
  pollfd fd{PQsocket(conn_), POLLIN, 0};
  if (poll(&fd, 1, 0) != 0) broken_ = true;
  return !broken_;
}

bool Connection::in_transaction() const { return PQtransactionStatus(conn_) != PQTRANS_IDLE; }

int Connection::backend_pid() const { return PQbackendPID(conn_); }

absl::StatusOr<std::vector<Notification>> Connection::AwaitNotifications(
    absl::Duration timeout) {
  auto lost = [this] {
    broken_ = true;
    return WithSqlState(absl::StatusCode::kUnavailable, kConnectionFailure,
                        absl::StrCat("postgresql: the listening connection was lost: ",
                                     OneLine(PQerrorMessage(conn_))));
  };
  std::vector<Notification> out;
  auto drain = [&] {
    while (PGnotify* n = PQnotifies(conn_)) {
      out.push_back({n->relname != nullptr ? n->relname : "", n->extra != nullptr ? n->extra : ""});
      PQfreemem(n);
    }
  };
  if (!ok()) return lost();
  drain();  // queued by an earlier statement on this connection
  if (!out.empty()) return out;
  pollfd fd{PQsocket(conn_), POLLIN, 0};
  const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(timeout));
  const int ready = poll(&fd, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
  if (ready < 0) return out;  // EINTR: the caller waits again
  if (ready > 0) {
    // The server's goodbye (FATAL, then end of file) makes this fail or
    // leaves the connection bad.
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) return lost();
  }
  drain();
  return out;
}

absl::Status Connection::ErrorFrom(pg_result* result, absl::string_view what) {
  std::string sqlstate;
  if (result != nullptr) {
    const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
    if (state != nullptr) sqlstate = state;
  }
  // The primary message only: DETAIL quotes row values (ids of other
  // tenants, say), which must not travel to a caller.
  std::string message =
      OneLine(result != nullptr ? PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY) : nullptr);
  if (message.empty()) message = OneLine(PQerrorMessage(conn_));
  if (PQstatus(conn_) != CONNECTION_OK) {
    // The server went away while answering (pg_terminate_backend says
    // 57P01 first): whatever it said, this connection is gone.
    broken_ = true;
    if (CodeForSqlState(sqlstate) != absl::StatusCode::kUnavailable) {
      sqlstate = kConnectionFailure;
    }
  }
  const absl::StatusCode code = CodeForSqlState(sqlstate);  // INTERNAL for ""
  if (code == absl::StatusCode::kUnavailable) broken_ = true;
  return WithSqlState(
      code, sqlstate,
      absl::StrCat("postgresql: ", what, ": ", message,
                   sqlstate.empty() ? "" : absl::StrCat(" (SQLSTATE ", sqlstate, ")")));
}

absl::StatusOr<Result> Connection::Exec(const std::string& sql, absl::Span<const Param> params) {
  if (!ok()) {
    broken_ = true;
    return WithSqlState(absl::StatusCode::kUnavailable, kConnectionFailure,
                        "postgresql: the connection is broken");
  }
  std::vector<Oid> types(params.size());
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Param& p = params[i];
    if (p.oid_ == Param::kText && p.value_.find('\0') != std::string::npos) {
      // Text travels NUL-terminated and PostgreSQL text cannot hold NUL:
      // refuse rather than store a truncated value.
      return absl::InvalidArgumentError(absl::StrCat(
          "postgresql: text parameter $", i + 1, " contains a NUL byte, which text cannot hold"));
    }
    types[i] = p.oid_;
    values[i] = p.null_ ? nullptr : p.value_.data();
    lengths[i] = static_cast<int>(p.value_.size());
    // Bytes travel as they are; text and integers as text, which the
    // server parses by the declared type (NUL-terminated std::string data).
    formats[i] = p.oid_ == Param::kBytea ? 1 : 0;
  }
  pg_result* result =
      PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), types.data(), values.data(),
                   lengths.data(), formats.data(), /*resultFormat=*/1);
  ExecStatusType st = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return Result(result);
  absl::Status status = ErrorFrom(result, "query failed");
  PQclear(result);
  return status;
}

absl::Status Connection::ExecScript(const std::string& sql) {
  if (!ok()) {
    broken_ = true;
    return WithSqlState(absl::StatusCode::kUnavailable, kConnectionFailure,
                        "postgresql: the connection is broken");
  }
  // PQexec returns the last statement's result; an error stops the script.
  pg_result* result = PQexec(conn_, sql.c_str());
  ExecStatusType st = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  absl::Status status = absl::OkStatus();
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) status = ErrorFrom(result, "script failed");
  PQclear(result);
  return status;
}

// --- Transaction ----------------------------------------------------------

absl::StatusOr<Transaction> Transaction::Begin(Connection& conn, const std::string& begin) {
  if (conn.in_transaction()) {
    return absl::FailedPreconditionError("postgresql: a transaction is already open");
  }
  absl::StatusOr<Result> r = conn.Exec(begin);
  if (!r.ok()) return r.status();
  return Transaction(&conn);
}

Transaction::~Transaction() {
  if (conn_ == nullptr || !conn_->ok()) return;
  // A ROLLBACK that fails leaves the session in an unknown state: never
  // lend that connection again.
  if (!conn_->ExecScript("ROLLBACK").ok() || conn_->in_transaction()) conn_->broken_ = true;
}

absl::Status Transaction::Commit() {
  if (conn_ == nullptr) return absl::FailedPreconditionError("postgresql: no open transaction");
  Connection* conn = conn_;
  conn_ = nullptr;  // from here on, nothing is left for the destructor to roll back
  if (!conn->ok()) {
    return WithSqlState(absl::StatusCode::kUnavailable, kConnectionFailure,
                        "postgresql: the connection broke before COMMIT");
  }
  if (PQtransactionStatus(conn->conn_) == PQTRANS_INERROR) {
    // COMMIT would answer ROLLBACK without an error; say so instead.
    if (!conn->ExecScript("ROLLBACK").ok()) conn->broken_ = true;
    return absl::AbortedError("postgresql: a statement of the transaction failed; rolled back");
  }
  absl::StatusOr<Result> r = conn->Exec("COMMIT");
  if (!r.ok()) {
    absl::Status status = r.status();
    if (status.code() != absl::StatusCode::kUnavailable) return status;
    absl::Status unknown(
        status.code(), absl::StrCat(status.message(), " (during COMMIT: the outcome is unknown)"));
    unknown.SetPayload(kSqlStateUrl, absl::Cord(SqlState(status)));
    return unknown;
  }
  if (std::strcmp(PQcmdStatus(r->result_), "COMMIT") != 0) {
    return absl::AbortedError(
        absl::StrCat("postgresql: COMMIT answered ", PQcmdStatus(r->result_)));
  }
  return absl::OkStatus();
}

}  // namespace compress::store::pg
