// Text a client sent (ids, names, layer names) made safe to put into an
// error message or onto a terminal: control characters and bytes that are
// not UTF-8 are escaped, and error messages carry only a bounded prefix, so
// a hostile 1 MB id cannot blow up a reply (gRPC metadata limits) or forge
// lines in a log or a table.
//
//   absl::NotFoundError(absl::StrCat("job ", QuoteClientText(id), " not found"));
//   // "job 0123abcd not found" (ordinary ids are unchanged), or
//   // "job xxxxxxxx...(1048576 bytes) not found"
//   std::cout << EscapeControl(model.name());  // "evil\x1b[2J" on one line
//
// Pure functions, thread-safe.
#ifndef COMPRESS_UTIL_CLIENT_TEXT_H_
#define COMPRESS_UTIL_CLIENT_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace compress {

// Bytes of a client string an error message repeats (a sha256 id, 64 hex
// characters, is repeated whole).
inline constexpr size_t kQuotedTextBytes = 64;

// Length in bytes of the longest prefix of `text` that is valid UTF-8 (so
// text.size() when all of it is): no overlong forms, no surrogates, nothing
// past U+10FFFF.
size_t ValidUtf8Prefix(absl::string_view text);
inline bool IsValidUtf8(absl::string_view text) {
  return ValidUtf8Prefix(text) == text.size();
}

// `text` with C0 controls, DEL and C1 controls (U+0080..U+009F, which some
// terminals obey) escaped as \n, \r, \t, \xNN or \u00NN, and each byte that
// is not part of valid UTF-8 as \xNN. Everything else, backslashes
// included, is kept, so printable names read as they were given.
std::string EscapeControl(absl::string_view text);

// For error messages: EscapeControl of at most the first `max_bytes` bytes
// of `text` (cut at a character boundary), followed by "...(N bytes)" when
// `text` was longer.
std::string QuoteClientText(absl::string_view text, size_t max_bytes = kQuotedTextBytes);

}  // namespace compress

#endif  // COMPRESS_UTIL_CLIENT_TEXT_H_
