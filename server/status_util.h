// Maps absl::Status (what the allocator and the lease table speak) to grpc::Status (what the
// wire speaks). The codes are the same canonical set; the message is made safe for any client on
// the way (SafeStatusMessage): a refusal often quotes the client's own input, and a 100 KB GFP
// string or a 1 MiB key echoed whole would make trailing metadata larger than a stock client's
// 8 KiB limit — the client would then see "received initial metadata size exceeds limit" instead
// of why it was refused — and a NUL or an invalid UTF-8 byte echoed raw garbles its terminal.
// Each quoting site also cuts its excerpt short (QuoteInput, allocator/string_escape.h); this is
// the guard behind them all.
//
// Who uses it: every RPC handler (through ToGrpcStatus). Thread-safety: pure functions.
#ifndef PHYSMEM_SERVER_STATUS_UTIL_H_
#define PHYSMEM_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "allocator/string_escape.h"

namespace physmem {

// The longest status message sent, in bytes after escaping (gRPC percent-encodes non-ASCII bytes
// on the wire, at most 3 bytes each: well inside 8 KiB of metadata).
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// `message` with control bytes (< 0x20, 0x7f) and bytes that are not part of valid UTF-8 written
// as \xNN, cut at kMaxStatusMessageBytes (on a character boundary) with a note of how much was
// left out. Printable ASCII and valid UTF-8 pass unchanged.
std::string SafeStatusMessage(std::string_view message);

// QuoteInput (a client's input for a message, at most kMaxQuotedInputBytes of it, escaped) comes
// from allocator/string_escape.h, where the allocator's GFP parser uses it too.

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // (Debian's Abseil has its own string_view.)
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      SafeStatusMessage(std::string_view(s.message().data(), s.message().size())));
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_STATUS_UTIL_H_
