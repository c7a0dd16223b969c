#include "server/store/s3/s3_xml.h"

#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace compress::store::s3xml {
namespace {

// Appends `cp` as UTF-8; false for values that are not XML characters.
bool AppendUtf8(uint32_t cp, std::string* out) {
  if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return true;
}

bool IsNameEnd(char c) {
  return c == '>' || c == '/' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

}  // namespace

std::vector<absl::string_view> Elements(absl::string_view xml, absl::string_view tag) {
  std::vector<absl::string_view> out;
  if (tag.empty()) return out;
  const std::string open = absl::StrCat("<", tag);
  const std::string close = absl::StrCat("</", tag, ">");
  size_t pos = 0;
  while (true) {
    size_t start = xml.find(open, pos);
    if (start == absl::string_view::npos) break;
    size_t after = start + open.size();
    if (after >= xml.size()) break;
    if (!IsNameEnd(xml[after])) {  // <KeyCount> is not <Key>
      pos = after;
      continue;
    }
    size_t gt = xml.find('>', after);
    if (gt == absl::string_view::npos) break;
    if (xml[gt - 1] == '/') {  // <Tag/> or <Tag attr="x"/>
      out.push_back(xml.substr(gt + 1, 0));
      pos = gt + 1;
      continue;
    }
    size_t end = xml.find(close, gt + 1);
    if (end == absl::string_view::npos) break;
    out.push_back(xml.substr(gt + 1, end - gt - 1));
    pos = end + close.size();
  }
  return out;
}

std::optional<std::string> Text(absl::string_view xml, absl::string_view tag) {
  std::vector<absl::string_view> found = Elements(xml, tag);
  if (found.empty()) return std::nullopt;
  return Unescape(found.front());
}

std::string Unescape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c != '&') {
      out.push_back(c);
      ++i;
      continue;
    }
    size_t semi = text.find(';', i);
    // Entity names and references are short; a far ';' is not ours.
    if (semi == absl::string_view::npos || semi - i > 12) {
      out.push_back(c);
      ++i;
      continue;
    }
    absl::string_view name = text.substr(i + 1, semi - i - 1);
    bool done = true;
    if (name == "lt") {
      out.push_back('<');
    } else if (name == "gt") {
      out.push_back('>');
    } else if (name == "amp") {
      out.push_back('&');
    } else if (name == "quot") {
      out.push_back('"');
    } else if (name == "apos") {
      out.push_back('\'');
    } else if (name.size() >= 2 && name[0] == '#') {
      uint32_t cp = 0;
      bool parsed = (name[1] == 'x' || name[1] == 'X')
                        ? name.size() > 2 && absl::SimpleHexAtoi(name.substr(2), &cp)
                        : absl::SimpleAtoi(name.substr(1), &cp);
      done = parsed && AppendUtf8(cp, &out);
    } else {
      done = false;
    }
    if (done) {
      i = semi + 1;
    } else {
      out.push_back(c);
      ++i;
    }
  }
  return out;
}

std::string Escape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

}  // namespace compress::store::s3xml
