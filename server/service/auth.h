// Authenticator: which tenant a call acts for, from its bearer token.
//
// Tokens come from a file of "TOKEN TENANT" lines ('#' starts a comment, so
// tokens cannot contain it; tokens at least 16 characters, tenants
// [A-Za-z0-9._-]+, at most 128). A call names its
// token as "authorization: Bearer TOKEN" metadata. The file is re-read when
// its modification time or size changes (checked at most once a second), so
// tokens can be added and revoked without a restart; a file that no longer
// parses keeps the previous tokens in force and says so on stderr.
//
// Without a token file the server is single-tenant: every call is
// store::kDefaultTenant and needs no token.
//
//   ASSIGN_OR_RETURN(auto auth, Authenticator::Create("/etc/compressd/tokens"));
//   absl::StatusOr<std::string> tenant = auth->TenantOf(*context);  // in a handler
//
// Only compress.v1 handlers ask; health, reflection and /metrics never do.
// Thread-safe.
#ifndef COMPRESS_SERVICE_AUTH_H_
#define COMPRESS_SERVICE_AUTH_H_

#include <ctime>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"

namespace compress::service {

// Parses token-file text into sha256(token) -> tenant. INVALID_ARGUMENT
// names the line of a malformed entry or a repeated token.
absl::StatusOr<std::map<std::string, std::string>> ParseTokenFile(const std::string& text);

class Authenticator {
 public:
  // Empty `token_file`: single-tenant. Otherwise the file must exist and parse.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const std::string& token_file);
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  bool enabled() const { return !path_.empty(); }
  // The caller's tenant, or UNAUTHENTICATED for a missing, malformed or
  // unknown token (the message never echoes the token).
  absl::StatusOr<std::string> TenantOf(const grpc::ServerContextBase& context)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit Authenticator(std::string path) : path_(std::move(path)) {}
  // Re-reads the file when it changed. `force`: read it whatever its stat says.
  absl::Status MaybeReloadLocked(bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  std::map<std::string, std::string> tenants_ ABSL_GUARDED_BY(mu_);  // sha256(token) -> tenant
  absl::Time last_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  struct timespec mtime_ ABSL_GUARDED_BY(mu_) = {};
  off_t size_ ABSL_GUARDED_BY(mu_) = -1;
};

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_AUTH_H_
