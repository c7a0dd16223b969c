#include "server/store/pg/listener.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress::store::pg {
namespace {

// How long one wait on the socket lasts: bounds how late the thread sees
// stop_ (the destructor) and a due ping.
constexpr absl::Duration kSlice = absl::Milliseconds(100);

bool IsChannelName(const std::string& s) {
  if (s.empty() || s.size() > 63) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_';
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> Listener::Create(const ListenerOptions& options) {
  if (!IsChannelName(options.channel)) {
    return absl::InvalidArgumentError(
        absl::StrCat("listener channel \"", options.channel, "\": use 1-63 of [a-z0-9_]"));
  }
  std::unique_ptr<Listener> listener(new Listener(options));
  ASSIGN_OR_RETURN(listener->conn_, listener->Connect());
  listener->SetConnected(listener->conn_->backend_pid(), true);
  listener->thread_ = std::thread([l = listener.get()] { l->Loop(); });
  return listener;
}

Listener::~Listener() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::unique_ptr<Connection>> Listener::Connect() const {
  ASSIGN_OR_RETURN(std::unique_ptr<Connection> conn, Connection::Open(options_.conninfo));
  // Tells it apart in pg_stat_activity from the pool's connections.
  RETURN_IF_ERROR(conn->ExecScript("SET application_name = 'compressd-listener'"));
  RETURN_IF_ERROR(conn->ExecScript(absl::StrCat("LISTEN ", options_.channel)));
  return conn;
}

uint64_t Listener::Subscribe(const std::string& key, std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  const uint64_t handle = next_handle_++;
  callbacks_[key][handle] = std::move(callback);
  return handle;
}

void Listener::Unsubscribe(const std::string& key, uint64_t handle) {
  // Waits for a dispatch in flight, which may hold a copy of the callback.
  absl::MutexLock dispatch(&dispatch_mu_);
  absl::MutexLock lock(&mu_);
  auto it = callbacks_.find(key);
  if (it == callbacks_.end()) return;
  it->second.erase(handle);
  if (it->second.empty()) callbacks_.erase(it);
}

bool Listener::connected() const {
  absl::MutexLock lock(&mu_);
  return connected_;
}

int64_t Listener::connections() const {
  absl::MutexLock lock(&mu_);
  return connections_;
}

bool Listener::AwaitConnections(int64_t n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto reached = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return connections_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
}

int Listener::backend_pid() const {
  absl::MutexLock lock(&mu_);
  return backend_pid_;
}

void Listener::SetConnected(int pid, bool counted) {
  absl::MutexLock lock(&mu_);
  connected_ = pid != 0;
  backend_pid_ = pid;
  if (counted) ++connections_;
}

void Listener::Dispatch(const std::string& key, bool all) {
  absl::MutexLock dispatch(&dispatch_mu_);
  std::vector<std::function<void()>> calls;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [k, by_handle] : callbacks_) {
      if (!all && k != key) continue;
      for (const auto& [handle, callback] : by_handle) calls.push_back(callback);
    }
  }
  for (const auto& call : calls) call();
}

void Listener::Loop() {
  absl::Duration backoff = options_.backoff;
  absl::Time last_heard = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    if (conn_ == nullptr) {
      absl::StatusOr<std::unique_ptr<Connection>> conn = Connect();
      if (!conn.ok()) {
        // Sleep the backoff, waking early for stop_.
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(&stop_), backoff);
        backoff = std::min(backoff * 2, options_.max_backoff);
        continue;
      }
      conn_ = std::move(*conn);
      backoff = options_.backoff;
      last_heard = absl::Now();
      SetConnected(conn_->backend_pid(), false);
      // Whatever was notified while we were away is lost: everyone re-reads.
      Dispatch("", /*all=*/true);
      SetConnected(conn_->backend_pid(), true);
      continue;
    }
    absl::StatusOr<std::vector<Notification>> got = conn_->AwaitNotifications(kSlice);
    if (got.ok() && absl::Now() - last_heard >= options_.ping_interval) {
      // A half-open connection never turns readable: ask it something.
      absl::Status ping = conn_->ExecScript("SELECT 1");
      if (!ping.ok()) got = ping;
      last_heard = absl::Now();
    }
    if (!got.ok()) {
      conn_.reset();
      SetConnected(0, false);
      continue;
    }
    if (!got->empty()) last_heard = absl::Now();
    for (const Notification& n : *got) Dispatch(n.payload, /*all=*/false);
  }
}

}  // namespace compress::store::pg
