// Pool: a bounded set of PostgreSQL connections shared by threads.
//
// At most `max_connections` are open at once. A borrower that finds none
// free waits up to `acquire_timeout`, then gets RESOURCE_EXHAUSTED. A
// connection comes back to the pool when its Lease ends; one that broke (the
// server went away, or it still has a transaction open) is closed instead
// and its slot opens a fresh one on the next Acquire. An idle connection that
// the server terminated meanwhile is noticed at Acquire and replaced, so a
// borrower never gets a connection known to be dead; nothing reconnects in
// the middle of a transaction.
//
// RunTransaction and RunRead wrap the usual pattern: lease, (BEGIN,) run,
// (COMMIT,) and run again when that is known to be safe.
//
// Thread-safe. The pool must outlive every Lease.
//
//   PoolOptions options;
//   options.conninfo = "postgresql://compressd@db:5432/compressd";
//   ASSIGN_OR_RETURN(std::unique_ptr<Pool> pool, Pool::Create(options));
//   absl::Status s = pool->RunTransaction([&](Connection& conn) -> absl::Status {
//     ASSIGN_OR_RETURN(Result r, conn.Exec("UPDATE jobs SET state = $1 WHERE id = $2",
//                                          {int64_t{state}, id}));
//     return r.affected_rows() == 1 ? absl::OkStatus() : absl::NotFoundError(id);
//   });
#ifndef COMPRESS_STORE_PG_POOL_H_
#define COMPRESS_STORE_PG_POOL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/pg/connection.h"

namespace compress::store::pg {

struct PoolOptions {
  // A postgresql:// URL or libpq "key=value" string. Required.
  std::string conninfo;
  // Most connections open at once (idle and lent). Default 8.
  int max_connections = 8;
  // How long Acquire waits for a free connection. Default 10 s.
  absl::Duration acquire_timeout = absl::Seconds(10);
  // Limit on establishing one connection (libpq connect_timeout, at least
  // 2 s). Default 10 s.
  absl::Duration connect_timeout = absl::Seconds(10);
  // How many times RunTransaction/RunRead run their body when it failed in
  // a way that is safe to repeat. Default 4.
  int max_attempts = 4;
};

class Pool {
 public:
  // Opens one connection to check the settings (UNAVAILABLE when the server
  // cannot be reached) and keeps it.
  static absl::StatusOr<std::unique_ptr<Pool>> Create(const PoolOptions& options);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // A connection lent to one borrower; back to the pool (or closed, when
  // broken or mid-transaction) when the Lease ends.
  class Lease {
   public:
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), conn_(std::move(other.conn_)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    Connection& conn() const { return *conn_; }
    Connection* operator->() const { return conn_.get(); }

   private:
    friend class Pool;
    Lease(Pool* pool, std::unique_ptr<Connection> conn) : pool_(pool), conn_(std::move(conn)) {}
    Pool* pool_;
    std::unique_ptr<Connection> conn_;
  };

  // A healthy connection, waiting up to acquire_timeout for one to be free:
  // RESOURCE_EXHAUSTED past it, UNAVAILABLE when a new one cannot connect.
  absl::StatusOr<Lease> Acquire() ABSL_LOCKS_EXCLUDED(mu_);

  // Runs body(conn) between BEGIN and COMMIT on a leased connection and
  // returns what it returned. An error from the body rolls back. The whole
  // transaction runs again (up to max_attempts) when the server rolled it
  // back for a conflict (serialization failure, deadlock) or the connection
  // was lost before COMMIT was sent: neither committed anything. A connection
  // lost during COMMIT is UNAVAILABLE ("the outcome is unknown"), never
  // repeated. `body` returns absl::Status or absl::StatusOr<T> and must be
  // safe to run again (no side effects outside the transaction).
  template <typename F>
  std::invoke_result_t<F&, Connection&> RunTransaction(F&& body, const std::string& begin = "BEGIN")
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs a read (statements in autocommit) on a leased connection, again on
  // a fresh connection when the first one was lost: reads are idempotent.
  template <typename F>
  std::invoke_result_t<F&, Connection&> RunRead(F&& body) ABSL_LOCKS_EXCLUDED(mu_);

  struct Stats {
    int open = 0;           // connections now open (idle and lent)
    int idle = 0;           // of which idle
    int64_t opened = 0;     // connections opened since Create
    int64_t discarded = 0;  // connections closed because they broke
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit Pool(const PoolOptions& options) : options_(options) {}
  void Release(std::unique_ptr<Connection> conn) ABSL_LOCKS_EXCLUDED(mu_);
  bool CanLend() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !idle_.empty() || open_ < options_.max_connections;
  }
  // Whether a failed attempt may run again.
  bool ShouldRetry(const absl::Status& status, bool commit_sent, int attempt) const;

  const PoolOptions options_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t opened_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t discarded_ ABSL_GUARDED_BY(mu_) = 0;
};

namespace internal {
inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace internal

template <typename F>
std::invoke_result_t<F&, Connection&> Pool::RunTransaction(F&& body, const std::string& begin) {
  using R = std::invoke_result_t<F&, Connection&>;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<Lease> lease = Acquire();
    if (!lease.ok()) return R(lease.status());
    absl::StatusOr<Transaction> tx = Transaction::Begin(lease->conn(), begin);
    if (!tx.ok()) {
      if (ShouldRetry(tx.status(), false, attempt)) continue;
      return R(tx.status());
    }
    R result = body(lease->conn());
    if (!internal::StatusOf(result).ok()) {
      if (ShouldRetry(internal::StatusOf(result), false, attempt)) continue;
      return result;  // ~Transaction rolls back
    }
    absl::Status commit = tx->Commit();
    if (commit.ok()) return result;
    if (ShouldRetry(commit, true, attempt)) continue;
    return R(commit);
  }
}

template <typename F>
std::invoke_result_t<F&, Connection&> Pool::RunRead(F&& body) {
  using R = std::invoke_result_t<F&, Connection&>;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<Lease> lease = Acquire();
    if (!lease.ok()) return R(lease.status());
    R result = body(lease->conn());
    if (!internal::StatusOf(result).ok() &&
        ShouldRetry(internal::StatusOf(result), false, attempt)) {
      continue;
    }
    return result;
  }
}

}  // namespace compress::store::pg

#endif  // COMPRESS_STORE_PG_POOL_H_
