#include "allocator/string_escape.h"

#include "absl/strings/str_format.h"

namespace physmem {
namespace {

// The length of the valid UTF-8 sequence at s[i], or 0 if the bytes there are not one (RFC 3629:
// no overlong forms, no surrogates, nothing above U+10FFFF).
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(1) < lo || b(1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (b(k) < 0x80 || b(k) > 0xBF) return 0;
  }
  return n;
}

}  // namespace

size_t AppendEscaped(std::string_view s, size_t limit, bool quotes, std::string* out) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    std::string piece;
    size_t used = 1;
    if (c >= 0x80) {
      used = Utf8SequenceLength(s, i);
      piece = used ? std::string(s.substr(i, used)) : absl::StrFormat("\\x%02x", c);
      if (used == 0) used = 1;
    } else if (c < 0x20 || c == 0x7f) {
      piece = absl::StrFormat("\\x%02x", c);
    } else if (quotes && (c == '"' || c == '\\')) {
      piece = std::string("\\") + static_cast<char>(c);
    } else {
      piece = std::string(1, static_cast<char>(c));
    }
    if (out->size() + piece.size() > limit) break;
    out->append(piece);
    i += used;
  }
  return i;
}

std::string QuoteInput(std::string_view input) {
  std::string out = "\"";
  // The excerpt is at most kMaxQuotedInputBytes of input; escaping may make it up to 4x longer.
  const std::string_view head = input.substr(0, kMaxQuotedInputBytes);
  const size_t used = AppendEscaped(head, 4 * kMaxQuotedInputBytes + 1, /*quotes=*/true, &out);
  if (used == input.size()) return out + "\"";
  absl::StrAppendFormat(&out, "...\" (%d bytes)", input.size());
  return out;
}

}  // namespace physmem
