// String escaping for messages that quote a caller's input, after the kernel's
// string_escape_mem() (lib/string_helpers.c, behind printk's %*pE): what a caller typed is shown
// to it again, so it must come back readable and short, however long or binary it was.
//
// A refusal often quotes the input it refuses (a GFP string, a key). Echoed whole, a 100 KB GFP
// string or a 1 MiB key makes a status larger than a stock gRPC client's 8 KiB metadata limit
// (the client then sees a metadata error instead of the refusal), and a NUL or an invalid UTF-8
// byte garbles a terminal. QuoteInput() cuts the excerpt at kMaxQuotedInputBytes and escapes it;
// the server's SafeStatusMessage() (server/status_util.h) applies AppendEscaped() to the whole
// message as the guard behind every quoting site.
//
// Who uses it: allocator/gfp.cc (ParseGfp's messages), the server's handlers and lessor (keys,
// names), server/status_util.cc. Thread-safety: pure functions.
#ifndef PHYSMEM_ALLOCATOR_STRING_ESCAPE_H_
#define PHYSMEM_ALLOCATOR_STRING_ESCAPE_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace physmem {

// The most bytes of a caller's input a message quotes (QuoteInput).
inline constexpr size_t kMaxQuotedInputBytes = 200;

// Appends `s` to `out` with control bytes (< 0x20, 0x7f) and bytes that are not part of valid
// UTF-8 written as \xNN, stopping (at a character boundary) before `out` would pass `limit`
// bytes; returns how many bytes of `s` went in. `quotes` also escapes '"' and '\\' (for an
// excerpt inside quotes). Printable ASCII and valid UTF-8 pass unchanged.
size_t AppendEscaped(std::string_view s, size_t limit, bool quotes, std::string* out);

// A caller's input for a message: double-quoted, escaped (quotes and backslashes too), at most
// kMaxQuotedInputBytes of it, then `..." (N bytes)` when it was longer.
std::string QuoteInput(std::string_view input);

}  // namespace physmem

#endif  // PHYSMEM_ALLOCATOR_STRING_ESCAPE_H_
