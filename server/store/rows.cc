#include "server/store/rows.h"

#include <algorithm>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace compress::store::rows {

int64_t ToNanos(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1000000000LL + t.nanos();
}

absl::StatusOr<Cursor> DecodeToken(const std::string& token) {
  Cursor c;
  if (token.empty()) return c;
  std::string raw;
  std::vector<std::string> parts;
  if (absl::WebSafeBase64Unescape(token, &raw)) {
    parts = absl::StrSplit(raw, absl::MaxSplits(':', 1));
  }
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &c.created_ns)) {
    return absl::InvalidArgumentError("page_token: not a token from this server");
  }
  c.id = parts[1];
  return c;
}

std::string EncodeToken(int64_t created_ns, const std::string& id) {
  return absl::WebSafeBase64Escape(absl::StrCat(created_ns, ":", id));
}

int ClampPageSize(int page_size) {
  if (page_size <= 0) return kDefaultPageSize;
  return std::min(page_size, kMaxPageSize);
}

}  // namespace compress::store::rows
