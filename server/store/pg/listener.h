// Listener: one dedicated LISTEN connection per process, fanned out to
// callbacks per payload (a job id, for the "compress_events" channel that
// every event insert notifies).
//
// A background thread waits on the connection. It pings the server when the
// connection was quiet for `ping_interval`, and notices a lost connection
// (pg_terminate_backend, a restart): it then reconnects with a growing
// backoff. Notifications sent meanwhile are lost, so callers poll while
// connected() is false, and after every (re)connection each callback is
// called once, so that a watcher re-reads what it may have missed.
//
// Callbacks run on the listener's thread and must be quick (wake a reactor,
// signal a condition); they must not call Subscribe or Unsubscribe. After
// Unsubscribe returns, its callback is not called again.
//
// Thread-safe.
//
//   ListenerOptions options;
//   options.conninfo = url;
//   ASSIGN_OR_RETURN(std::unique_ptr<Listener> listener, Listener::Create(options));
//   uint64_t h = listener->Subscribe(job_id, [&] { wake(); });
//   ...
//   listener->Unsubscribe(job_id, h);
#ifndef COMPRESS_STORE_PG_LISTENER_H_
#define COMPRESS_STORE_PG_LISTENER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/event_notifier.h"
#include "server/store/pg/connection.h"

namespace compress::store::pg {

struct ListenerOptions {
  // A postgresql:// URL or libpq "key=value" string. Required.
  std::string conninfo;
  // The channel to LISTEN on (an identifier). Default "compress_events".
  std::string channel = "compress_events";
  // A quiet connection is checked with a query this often. Default 5 s.
  absl::Duration ping_interval = absl::Seconds(5);
  // First wait before reconnecting; doubles up to max_backoff. Default 50 ms.
  absl::Duration backoff = absl::Milliseconds(50);
  // Longest wait between reconnection attempts. Default 5 s.
  absl::Duration max_backoff = absl::Seconds(5);
};

class Listener final : public EventNotifier {
 public:
  // Connects and LISTENs before returning (UNAVAILABLE when the server
  // cannot be reached; INVALID_ARGUMENT for a bad channel name), then
  // starts the thread.
  static absl::StatusOr<std::unique_ptr<Listener>> Create(const ListenerOptions& options);
  // Stops and joins the thread; closes the connection.
  ~Listener() override;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Calls `callback` for every notification whose payload is `key`, and
  // once after each reconnection. Returns a handle for Unsubscribe.
  uint64_t Subscribe(const std::string& key, std::function<void()> callback) override
      ABSL_LOCKS_EXCLUDED(mu_, dispatch_mu_);
  void Unsubscribe(const std::string& key, uint64_t handle) override
      ABSL_LOCKS_EXCLUDED(mu_, dispatch_mu_);

  // True while the LISTEN connection is up; false while reconnecting (poll).
  bool connected() const override ABSL_LOCKS_EXCLUDED(mu_);
  // How many times it connected and LISTENed: 1 after Create, + 1 per
  // reconnection (counted after the reconnection's callbacks ran).
  int64_t connections() const ABSL_LOCKS_EXCLUDED(mu_);
  // Waits up to `timeout` until connections() >= n; whether it got there.
  bool AwaitConnections(int64_t n, absl::Duration timeout) const ABSL_LOCKS_EXCLUDED(mu_);
  // The server process of the current connection (0 while disconnected).
  int backend_pid() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit Listener(const ListenerOptions& options) : options_(options) {}
  // A fresh connection that LISTENs.
  absl::StatusOr<std::unique_ptr<Connection>> Connect() const;
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // Calls the callbacks of `key`, or of every key when `all`.
  void Dispatch(const std::string& key, bool all) ABSL_LOCKS_EXCLUDED(mu_, dispatch_mu_);
  void SetConnected(int pid, bool counted) ABSL_LOCKS_EXCLUDED(mu_);

  const ListenerOptions options_;
  std::unique_ptr<Connection> conn_;  // only the thread touches it after Create
  std::thread thread_;

  // Held while callbacks run, so that Unsubscribe can wait them out.
  absl::Mutex dispatch_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  int64_t connections_ ABSL_GUARDED_BY(mu_) = 0;
  int backend_pid_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, std::map<uint64_t, std::function<void()>>> callbacks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace compress::store::pg

#endif  // COMPRESS_STORE_PG_LISTENER_H_
