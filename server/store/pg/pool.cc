#include "server/store/pg/pool.h"

#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress::store::pg {

absl::StatusOr<std::unique_ptr<Pool>> Pool::Create(const PoolOptions& options) {
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError("database pool: max_connections must be at least 1");
  }
  std::unique_ptr<Pool> pool(new Pool(options));
  ASSIGN_OR_RETURN(Lease first, pool->Acquire());
  return pool;
}

Pool::~Pool() {
  absl::MutexLock lock(&mu_);
  idle_.clear();
}

Pool::Lease::~Lease() {
  if (pool_ != nullptr && conn_ != nullptr) pool_->Release(std::move(conn_));
}

absl::StatusOr<Pool::Lease> Pool::Acquire() {
  const absl::Time deadline = absl::Now() + options_.acquire_timeout;
  std::unique_ptr<Connection> conn;
  {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(this, &Pool::CanLend), deadline)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("database pool: no connection free within ",
                       absl::FormatDuration(options_.acquire_timeout), " (all ",
                       options_.max_connections, " in use)"));
    }
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    } else {
      ++open_;  // the slot is ours; connect outside the lock
    }
  }
  if (conn != nullptr && conn->CheckIdleAlive()) return Lease(this, std::move(conn));
  if (conn != nullptr) {
    // Terminated while idle: close it and open a fresh one in its slot.
    conn.reset();
    absl::MutexLock lock(&mu_);
    ++discarded_;
  }
  absl::StatusOr<std::unique_ptr<Connection>> fresh =
      Connection::Open(options_.conninfo, options_.connect_timeout);
  absl::MutexLock lock(&mu_);
  if (!fresh.ok()) {
    --open_;
    return fresh.status();
  }
  ++opened_;
  return Lease(this, std::move(*fresh));
}

void Pool::Release(std::unique_ptr<Connection> conn) {
  // A connection is reused only in a known state: connected, no transaction.
  const bool reusable = conn->ok() && !conn->in_transaction();
  if (!reusable) conn.reset();
  absl::MutexLock lock(&mu_);
  if (reusable) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
    ++discarded_;
  }
}

Pool::Stats Pool::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.open = open_;
  s.idle = static_cast<int>(idle_.size());
  s.opened = opened_;
  s.discarded = discarded_;
  return s;
}

bool Pool::ShouldRetry(const absl::Status& status, bool commit_sent, int attempt) const {
  if (attempt >= options_.max_attempts) return false;
  if (IsConflict(status)) return true;  // the server rolled the transaction back
  return !commit_sent && IsConnectionLoss(status);
}

}  // namespace compress::store::pg
