// The daemon's main: parses physmemd's flags into ServerOptions, builds and starts the Server,
// serves until SIGTERM or SIGINT, then stops accepting, lets in-flight calls finish and returns 0
// (2 for bad flags, 1 when the server cannot start).
//
// Who uses it: server/main.cc (physmemd, no hooks) and test programs that need a daemon with a
// seam production never opens (tests/server/physmemd_test_main.cc: a clock the test advances, a
// SIGKILL at a journal compaction step). Thread-safety: call once, from main.
#ifndef PHYSMEM_SERVER_DAEMON_MAIN_H_
#define PHYSMEM_SERVER_DAEMON_MAIN_H_

#include <functional>
#include <string_view>

#include "server/lease_clock.h"

namespace physmem {

// What a test program may put where physmemd has its defaults. Empty in physmemd.
struct DaemonHooks {
  const LeaseClock* lease_clock = nullptr;                          // null: LeaseClock::Monotonic()
  std::function<void(std::string_view step)> journal_step_hook;    // JournalOptions::step_hook
};

int DaemonMain(int argc, char** argv, const DaemonHooks& hooks);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_DAEMON_MAIN_H_
