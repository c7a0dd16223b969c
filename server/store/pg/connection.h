// A small RAII layer over libpq: one connection, its results, parameterised
// queries and a transaction guard. libpqxx is not used on purpose: 6.4 has
// no pool and reconnects silently, which would hide a lost transaction.
//
// Errors carry the SQLSTATE as a payload (SqlState()) and a code chosen from
// it (CodeForSqlState): 23505 unique_violation -> ALREADY_EXISTS,
// 40001/40P01 serialization failure/deadlock -> ABORTED (run the transaction
// again), a lost connection -> UNAVAILABLE.
//
// Thread safety: a Connection is used by one thread at a time (Pool lends
// each to one borrower). Results are independent of their connection.
//
//   ASSIGN_OR_RETURN(auto conn, Connection::Open("postgresql://127.0.0.1/db"));
//   ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(*conn));
//   ASSIGN_OR_RETURN(Result r, conn->Exec("SELECT proto FROM models WHERE id = $1", {id}));
//   if (r.rows() == 1) ... r.Bytes(0, 0) ...
//   RETURN_IF_ERROR(tx.Commit());   // otherwise ~Transaction rolls back
#ifndef COMPRESS_STORE_PG_CONNECTION_H_
#define COMPRESS_STORE_PG_CONNECTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

// libpq's handles, declared here so that its header stays in the .cc files.
struct pg_conn;
struct pg_result;

namespace compress::store::pg {

// The SQLSTATE a status from this layer carries ("" for other statuses).
// A connection lost without a server message reads as "08006".
std::string SqlState(const absl::Status& status);

// The absl code for a SQLSTATE (see the file comment; INTERNAL by default).
absl::StatusCode CodeForSqlState(absl::string_view sqlstate);

// True when the status says the transaction was rolled back by the server
// for a conflict (serialization failure, deadlock): running the whole
// transaction again is safe and likely to succeed.
bool IsConflict(const absl::Status& status);

// True when the status says the connection to the server was lost.
bool IsConnectionLoss(const absl::Status& status);

// One query parameter: text (implicitly from strings), a 64-bit integer
// (implicitly from integers), raw bytes for a bytea column, or NULL.
class Param {
 public:
  Param(const std::string& text) : value_(text), oid_(kText) {}              // NOLINT: implicit
  Param(absl::string_view text) : value_(std::string(text)), oid_(kText) {}  // NOLINT: implicit
  Param(const char* text) : value_(text), oid_(kText) {}                     // NOLINT: implicit
  template <typename I,
            std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
  Param(I value) : value_(std::to_string(static_cast<int64_t>(value))), oid_(kInt8) {}  // NOLINT
  static Param Bytes(std::string bytes) {
    Param p("");
    p.value_ = std::move(bytes);
    p.oid_ = kBytea;
    return p;
  }
  static Param Null() {
    Param p("");
    p.null_ = true;
    p.oid_ = 0;  // the server infers the type
    return p;
  }

 private:
  friend class Connection;
  static constexpr unsigned kText = 25;   // TEXTOID
  static constexpr unsigned kInt8 = 20;   // INT8OID
  static constexpr unsigned kBytea = 17;  // BYTEAOID

  std::string value_;
  unsigned oid_;
  bool null_ = false;
};

// The rows of one statement. Columns come in binary format: text and bytea
// as raw bytes, integers decoded by Int().
class Result {
 public:
  explicit Result(pg_result* result) : result_(result) {}
  Result(Result&& other) noexcept : result_(other.result_) { other.result_ = nullptr; }
  Result& operator=(Result&& other) noexcept;
  ~Result();
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;

  int rows() const;
  // Rows an INSERT, UPDATE or DELETE touched; 0 for other statements.
  int64_t affected_rows() const;
  bool IsNull(int row, int col) const;
  // The value's bytes (text or bytea); "" for NULL.
  std::string Bytes(int row, int col) const;
  // A smallint, integer, bigint or boolean value; 0 for NULL.
  int64_t Int(int row, int col) const;

 private:
  friend class Transaction;  // reads the command tag of COMMIT
  pg_result* result_;
};

// A NOTIFY received by a connection that LISTENs.
struct Notification {
  std::string channel;
  std::string payload;
};

class Connection {
 public:
  // Connects to `conninfo`: a postgresql:// URL or "key=value ..." string
  // (libpq's syntax; its parameters, such as sslmode, pass through).
  // INVALID_ARGUMENT for a malformed string, UNAVAILABLE when the server
  // cannot be reached or refuses the login; the message names host and
  // database, never the password.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(
      const std::string& conninfo, absl::Duration connect_timeout = absl::Seconds(10));
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // One statement with $1.. parameters (PQexecParams: the server never
  // parses a parameter as SQL). A text parameter with a NUL byte is
  // INVALID_ARGUMENT (PostgreSQL text cannot hold one).
  absl::StatusOr<Result> Exec(const std::string& sql, absl::Span<const Param> params = {});
  // Several statements without parameters in one round trip (schema
  // scripts); inside a transaction when the caller opened one.
  absl::Status ExecScript(const std::string& sql);

  // False once the connection failed (the server went away, a protocol
  // error, a failed ROLLBACK): it must be closed, never lent again.
  bool ok() const;
  // ok(), and no unsolicited input waiting: a server that terminated this
  // backend (pg_terminate_backend, shutdown) sends an error and closes the
  // socket while the connection sits idle. Never blocks.
  bool CheckIdleAlive();
  // A transaction is open (or failed and not yet rolled back).
  bool in_transaction() const;
  // The server process serving this connection (pg_stat_activity.pid).
  int backend_pid() const;

  // For a connection that ran LISTEN (and no statement is running): waits up
  // to `timeout` for notifications and returns those that arrived, possibly
  // none. UNAVAILABLE once the connection is lost (pg_terminate_backend, the
  // server went away); the connection is then broken.
  absl::StatusOr<std::vector<Notification>> AwaitNotifications(absl::Duration timeout);

 private:
  friend class Transaction;  // marks a connection broken after a failed ROLLBACK
  explicit Connection(pg_conn* conn) : conn_(conn) {}
  // The status for a failed statement (or a failed connection).
  absl::Status ErrorFrom(pg_result* result, absl::string_view what);

  pg_conn* conn_;
  bool broken_ = false;
};

// BEGIN ... COMMIT on one connection; ROLLBACK on destruction unless
// Commit() succeeded. Movable, not copyable; the connection must outlive it.
class Transaction {
 public:
  // `begin` may set an isolation level ("BEGIN ISOLATION LEVEL SERIALIZABLE").
  static absl::StatusOr<Transaction> Begin(Connection& conn, const std::string& begin = "BEGIN");
  Transaction(Transaction&& other) noexcept : conn_(other.conn_) { other.conn_ = nullptr; }
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  ~Transaction();

  // ABORTED when a statement of the transaction had failed (the server
  // rolled it back); UNAVAILABLE when the connection broke during COMMIT,
  // after which the outcome is unknown.
  absl::Status Commit();

 private:
  explicit Transaction(Connection* conn) : conn_(conn) {}
  Connection* conn_;  // null once committed, rolled back or moved from
};

}  // namespace compress::store::pg

#endif  // COMPRESS_STORE_PG_CONNECTION_H_
