// Structured logs: one line per event on stderr, logfmt style
//   ts=2026-11-24T01:20:22.123Z level=info event=lease_expired lease=7 pages=12
// so journald, `grep event=...` and log shippers read them alike.
//
// Written by hand because Debian 12's Abseil (20220623) predates absl/log, and pulling in another
// logging library for a dozen call sites is not worth a dependency. Thread-safety: each line is
// written with one write(2), so lines from different threads never interleave.
#ifndef PHYSMEM_SERVER_LOG_H_
#define PHYSMEM_SERVER_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace physmem {

// A key=value pair; values with spaces, quotes or '=' are quoted.
struct LogField {
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const char* v) : key(k), value(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
  LogField(std::string_view k, T v) : key(k), value(std::to_string(v)) {}
  std::string_view key;
  std::string value;
};

void Log(std::string_view level, std::string_view event, std::initializer_list<LogField> fields = {});
inline void LogInfo(std::string_view event, std::initializer_list<LogField> fields = {}) { Log("info", event, fields); }
inline void LogWarn(std::string_view event, std::initializer_list<LogField> fields = {}) { Log("warn", event, fields); }
inline void LogError(std::string_view event, std::initializer_list<LogField> fields = {}) { Log("error", event, fields); }

}  // namespace physmem

#endif  // PHYSMEM_SERVER_LOG_H_
