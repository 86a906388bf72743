// physmemd_test_hooks: physmemd (server/daemon_main.h) with the two seams that only tests open,
// each switched on by an environment variable the test sets (tests/daemon_process.h):
//   PHYSMEM_TEST_LEASE_CLOCK=<file>: lease deadlines are read from a clock that runs ahead of
//     CLOCK_MONOTONIC by the signed 64-bit nanosecond offset stored at the start of <file>
//     (8 bytes, native byte order), which the test raises to make leases expire when it decides,
//     rather than racing a short TTL against a slow (sanitized, loaded) machine.
//   PHYSMEM_TEST_JOURNAL_CRASH_STEP=<step>: at that journal compaction step (JournalOptions::
//     step_hook), log event=journal_test_crash and SIGKILL the process (crash-recovery tests).
// Built only as a test target; physmemd itself has neither seam.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "server/daemon_main.h"
#include "server/lease_clock.h"
#include "server/log.h"

namespace physmem {
namespace {

// CLOCK_MONOTONIC + the offset the test keeps in a shared file. The offset only grows (the test
// only advances it), so Now() never decreases, as LeaseClock requires.
class OffsetFileClock final : public LeaseClock {
 public:
  explicit OffsetFileClock(int64_t* offset) : offset_(offset) {}
  int64_t Now() const override {
    return LeaseClock::Monotonic().Now() + std::atomic_ref<int64_t>(*offset_).load(std::memory_order_acquire);
  }
  // The test moves the clock without telling the daemon: the reaper looks every 20 ms.
  int64_t MaxNapNs() const override { return 20 * 1000000; }

 private:
  int64_t* const offset_;  // in a MAP_SHARED mapping of the test's file
};

int64_t* MapOffset(const char* path) {
  const int fd = ::open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "PHYSMEM_TEST_LEASE_CLOCK=%s: open: %s\n", path, std::strerror(errno));
    std::exit(2);
  }
  void* p = ::mmap(nullptr, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "PHYSMEM_TEST_LEASE_CLOCK=%s: mmap: %s\n", path, std::strerror(errno));
    std::exit(2);
  }
  return static_cast<int64_t*>(p);
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) {
  physmem::DaemonHooks hooks;
  if (const char* path = std::getenv("PHYSMEM_TEST_LEASE_CLOCK"); path != nullptr && *path != '\0') {
    static physmem::OffsetFileClock clock(physmem::MapOffset(path));
    hooks.lease_clock = &clock;
  }
  if (const char* step = std::getenv("PHYSMEM_TEST_JOURNAL_CRASH_STEP"); step != nullptr && *step != '\0') {
    hooks.journal_step_hook = [crash_step = std::string(step)](std::string_view at) {
      if (at != crash_step) return;
      physmem::LogWarn("journal_test_crash", {{"point", at}});
      ::kill(::getpid(), SIGKILL);
    };
  }
  return physmem::DaemonMain(argc, argv, hooks);
}
