// Streaming SHA-256 (OpenSSL EVP) with lowercase-hex output.
//
//   Sha256 h; h.Update(chunk1); h.Update(chunk2); std::string hex = h.HexDigest();
//   ASSIGN_OR_RETURN(std::string hex, Sha256File(path));
// Not thread-safe; one instance per stream. Not copyable.
#ifndef COMPRESS_UTIL_SHA256_H_
#define COMPRESS_UTIL_SHA256_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace compress {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view bytes);
  // Finishes the digest; call once.
  std::string HexDigest();

 private:
  void* ctx_;  // EVP_MD_CTX*
};

std::string Sha256Hex(absl::string_view bytes);
absl::StatusOr<std::string> Sha256File(const std::string& path);

// True for 64 lowercase hex characters.
bool IsSha256Hex(absl::string_view s);

}  // namespace compress

#endif  // COMPRESS_UTIL_SHA256_H_
