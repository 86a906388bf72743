#include "server/status_util.h"

#include "absl/strings/str_format.h"
#include "allocator/string_escape.h"

namespace physmem {

std::string SafeStatusMessage(std::string_view message) {
  std::string out;
  // Room for the note on what was cut.
  constexpr size_t kNoteRoom = 48;
  const size_t used = AppendEscaped(message, kMaxStatusMessageBytes, /*quotes=*/false, &out);
  if (used == message.size()) return out;
  out.clear();
  const size_t kept = AppendEscaped(message, kMaxStatusMessageBytes - kNoteRoom, /*quotes=*/false, &out);
  absl::StrAppendFormat(&out, " ... [%d more bytes cut]", message.size() - kept);
  return out;
}

}  // namespace physmem
