// CancelToken: cooperative cancellation and deadline for one job.
//
// The job layer owns the token and calls Cancel() from any thread; engine code
// calls Check() between steps (probes, iterations, layers) and returns its
// status when it is not OK, so cancel takes effect within one step.
// Thread-safe.
#ifndef COMPRESS_ENGINE_COMMON_CANCEL_H_
#define COMPRESS_ENGINE_COMMON_CANCEL_H_

#include <atomic>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace compress::engine {

class CancelToken {
 public:
  CancelToken() = default;
  CancelToken(const CancelToken&) = delete;
  CancelToken& operator=(const CancelToken&) = delete;

  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

  // Sets an absolute deadline; absl::InfiniteFuture() (the default) = none.
  void SetDeadline(absl::Time deadline) {
    deadline_ns_.store(absl::ToUnixNanos(deadline), std::memory_order_relaxed);
  }

  absl::Time deadline() const {
    return absl::FromUnixNanos(deadline_ns_.load(std::memory_order_relaxed));
  }

  // CANCELLED after Cancel(), DEADLINE_EXCEEDED past the deadline, else OK.
  absl::Status Check() const {
    if (cancelled()) return absl::CancelledError("job cancelled");
    int64_t deadline = deadline_ns_.load(std::memory_order_relaxed);
    if (absl::ToUnixNanos(absl::Now()) > deadline) {
      return absl::DeadlineExceededError("job deadline exceeded");
    }
    return absl::OkStatus();
  }

 private:
  std::atomic<bool> cancelled_{false};
  std::atomic<int64_t> deadline_ns_{absl::ToUnixNanos(absl::InfiniteFuture())};
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_CANCEL_H_
