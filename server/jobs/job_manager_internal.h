// Helpers shared by job_manager.cc and job_manager_queue.cc; not an API.
#ifndef COMPRESS_JOBS_JOB_MANAGER_INTERNAL_H_
#define COMPRESS_JOBS_JOB_MANAGER_INTERNAL_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "compress/v1/compress.pb.h"
#include "server/jobs/job_runner.h"

namespace compress::jobs::internal {

inline google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  ts.set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(ts.seconds()))));
  return ts;
}

// The runner's description of a worker process that died, if it did.
inline std::optional<std::string> CrashOf(
    const absl::StatusOr<compress::v1::JobResult>& result) {
  if (result.ok()) return std::nullopt;
  auto crash = result.status().GetPayload(kWorkerCrashPayload);
  if (!crash) return std::nullopt;
  return std::string(*crash);
}

inline compress::v1::ErrorStatus ToErrorStatus(const absl::Status& s) {
  compress::v1::ErrorStatus e;
  e.set_code(static_cast<int>(s.code()));
  e.set_message(std::string(s.message()));
  return e;
}

// The state-change event of `job`, now in its new state, from `from`.
inline compress::v1::JobEvent StateChangeEvent(const compress::v1::Job& job,
                                               compress::v1::JobState from) {
  compress::v1::JobEvent e;
  auto* sc = e.mutable_state_change();
  sc->set_from(from);
  sc->set_to(job.state());
  if (job.state() == compress::v1::JOB_STATE_FAILED ||
      job.state() == compress::v1::JOB_STATE_CANCELLED) {
    *sc->mutable_error() = job.error();
  }
  sc->set_device(job.assigned_device());
  sc->set_attempt(job.attempts());
  return e;
}

}  // namespace compress::jobs::internal

#endif  // COMPRESS_JOBS_JOB_MANAGER_INTERNAL_H_
