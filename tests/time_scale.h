// Timeouts for real-time waits in tests, scaled to the build: a sanitized daemon on a loaded
// 2-core machine runs 5-20x slower than the normal build. A timeout only bounds how long a broken
// test hangs; tests assert on events (a log line, a census, a lease clock they advance), never on
// how fast those come (tests/daemon_process.h says how a test decides when a lease expires).
//
// Who uses it: tests/daemon_process.h, tests/server/stub_calls.h and the tests. Thread-safety:
// pure functions.
#ifndef PHYSMEM_TESTS_TIME_SCALE_H_
#define PHYSMEM_TESTS_TIME_SCALE_H_

#include <chrono>
#include <cstdint>
#include <cstdlib>

namespace physmem::testing {

// How much slower than the normal build this build runs, for timeouts on real-time waits: ASan 5x,
// TSan 20x (both measured worst cases on a loaded 2-core machine); PHYSMEM_TEST_TIME_SCALE in
// the environment overrides it. A timeout only bounds how long a broken test hangs: tests assert
// on events (a log line, a census), never on how fast they come.
inline int TimeScale() {
  if (const char* e = std::getenv("PHYSMEM_TEST_TIME_SCALE"); e != nullptr && std::atoi(e) > 0) return std::atoi(e);
#if defined(__SANITIZE_THREAD__)
  return 20;
#elif defined(__SANITIZE_ADDRESS__)
  return 5;
#else
  return 1;
#endif
}
inline std::chrono::milliseconds ScaledTimeout(std::chrono::milliseconds normal) { return normal * TimeScale(); }

// A lease TTL that outlives any test however slow the build (an hour): for leases that must not
// expire. Tests that need a lease to expire advance the daemon's lease clock instead.
inline constexpr int64_t kLongTtlMs = int64_t{3600} * 1000;

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_TIME_SCALE_H_
