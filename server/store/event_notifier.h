// EventNotifier: how a process learns that another one appended events to a
// job (PostgreSQL: LISTEN/NOTIFY, see pg/listener.h). Header only, and free
// of our protos, so that the libpq layer can implement it.
#ifndef COMPRESS_STORE_EVENT_NOTIFIER_H_
#define COMPRESS_STORE_EVENT_NOTIFIER_H_

#include <cstdint>
#include <functional>
#include <string>

namespace compress::store {

// Tells a process that another one appended events to a job (PostgreSQL:
// LISTEN/NOTIFY, see pg/listener.h). Notifications can be lost while
// disconnected: callers poll while connected() is false, and every callback
// is called once after each reconnection.
class EventNotifier {
 public:
  virtual ~EventNotifier() = default;
  // Calls `callback` (quickly: on the notifier's thread) after new events of
  // `job_id`. Returns a handle for Unsubscribe; after Unsubscribe returns,
  // the callback is not called again.
  virtual uint64_t Subscribe(const std::string& job_id, std::function<void()> callback) = 0;
  virtual void Unsubscribe(const std::string& job_id, uint64_t handle) = 0;
  virtual bool connected() const = 0;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_EVENT_NOTIFIER_H_
