// The little XML that an S3 client needs: find elements by name in a small,
// flat response (ListBucketResult, Error, InitiateMultipartUploadResult) and
// escape or unescape text.
//
// Deliberately not a general parser: no DTDs, no external or custom entities
// (only the five predefined ones and numeric character references), no
// recursion, linear time in the input. Elements of the same name must not
// nest, which holds for every S3 response this code reads. Malformed input
// yields fewer elements, never a crash or an unbounded allocation.
//
//   for (absl::string_view c : s3xml::Elements(body, "Contents")) {
//     std::optional<std::string> key = s3xml::Text(c, "Key");
//   }
#ifndef COMPRESS_STORE_S3_S3_XML_H_
#define COMPRESS_STORE_S3_S3_XML_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace compress::store::s3xml {

// The raw content (still escaped) of every <tag>...</tag> or <tag/> in
// `xml`, in document order. Views into `xml`.
std::vector<absl::string_view> Elements(absl::string_view xml, absl::string_view tag);

// The unescaped text of the first <tag> element, or nullopt when absent.
std::optional<std::string> Text(absl::string_view xml, absl::string_view tag);

// Resolves &lt; &gt; &amp; &quot; &apos; &#N; &#xN;. Anything else that
// starts with '&' is kept as written.
std::string Unescape(absl::string_view text);

// Escapes & < > " ' for text and attribute content.
std::string Escape(absl::string_view text);

}  // namespace compress::store::s3xml

#endif  // COMPRESS_STORE_S3_S3_XML_H_
