#include "server/util/client_text.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace compress {
namespace {

// Bytes of the UTF-8 sequence at the start of `s` (1..4), or 0 when `s`
// does not start with a valid one. Ranges from RFC 3629 §4.
size_t SequenceLength(absl::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto cont = [&](size_t i, uint8_t lo = 0x80, uint8_t hi = 0xBF) {
    return i < s.size() && b(i) >= lo && b(i) <= hi;
  };
  const uint8_t c = b(0);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;  // no surrogates
  if (c >= 0xE1 && c <= 0xEF) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

void AppendEscaped(absl::string_view s, std::string* out) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = SequenceLength(s.substr(i));
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (n == 0) {
      absl::StrAppendFormat(out, "\\x%02x", c);
      ++i;
      continue;
    }
    if (n == 1 && (c < 0x20 || c == 0x7F)) {
      switch (c) {
        case '\n': out->append("\\n"); break;
        case '\r': out->append("\\r"); break;
        case '\t': out->append("\\t"); break;
        default: absl::StrAppendFormat(out, "\\x%02x", c);
      }
    } else if (n == 2 && c == 0xC2 && static_cast<uint8_t>(s[i + 1]) <= 0x9F) {
      absl::StrAppendFormat(out, "\\u%04x", static_cast<uint8_t>(s[i + 1]));  // C1
    } else {
      out->append(s.data() + i, n);
    }
    i += n;
  }
}

}  // namespace

size_t ValidUtf8Prefix(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = SequenceLength(text.substr(i));
    if (n == 0) return i;
    i += n;
  }
  return i;
}

std::string EscapeControl(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  AppendEscaped(text, &out);
  return out;
}

std::string QuoteClientText(absl::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return EscapeControl(text);
  // Cut before a partial character: back off over continuation bytes.
  size_t cut = max_bytes;
  while (cut > 0 && cut > max_bytes - 3 && (static_cast<uint8_t>(text[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  std::string out;
  AppendEscaped(text.substr(0, cut), &out);
  absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

}  // namespace compress
