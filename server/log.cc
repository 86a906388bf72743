#include "server/log.h"

#include <unistd.h>

#include <chrono>
#include <ctime>

namespace physmem {
namespace {

void AppendValue(std::string& out, std::string_view v) {
  const bool quote = v.empty() || v.find_first_of(" \"=\t\n") != std::string_view::npos;
  if (!quote) {
    out.append(v);
    return;
  }
  out.push_back('"');
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out.append("\\n");
      continue;
    }
    out.push_back(c);
  }
  out.push_back('"');
}

}  // namespace

void Log(std::string_view level, std::string_view event, std::initializer_list<LogField> fields) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm;
  gmtime_r(&secs, &tm);
  char ts[64];
  std::snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
  std::string line = "ts=";
  line.append(ts).append(" level=").append(level).append(" event=").append(event);
  for (const LogField& f : fields) {
    line.push_back(' ');
    line.append(f.key).push_back('=');
    AppendValue(line, f.value);
  }
  line.push_back('\n');
  // One write per line: lines from concurrent threads never interleave.
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace physmem
