// The clock lease deadlines are kept in: CLOCK_MONOTONIC nanoseconds (std::chrono::steady_clock),
// the scale the journal records deadlines on, so that a daemon restarted on the same boot reads
// them as they were written (server/journal.h).
//
// A lease's deadline is "granted now + TTL"; it has expired when the clock reaches it:
//   expired(l) ⇔ clock.Now() ≥ l.deadline,  remaining(l) = max(0, l.deadline − clock.Now()).
// etcd's lessor reads its clock through the same kind of seam (lessor.go's `clock`), so that its
// tests decide when a lease expires instead of sleeping past a TTL.
//
// Who uses it: the Lessor (grant, renew, expiry), RestoreFromJournal (deadlines that passed while
// the daemon was down), and the service through the Lessor. Server builds the lessor with
// ServerOptions::lease_clock, null meaning Monotonic(). Only test programs pass another clock:
// tests/server/physmemd_test_main.cc starts a daemon whose clock runs ahead by an offset its test
// sets (tests/daemon_process.h, AdvanceLeaseClock).
// Thread-safety: Now() may be called from any thread, concurrently.
#ifndef PHYSMEM_SERVER_LEASE_CLOCK_H_
#define PHYSMEM_SERVER_LEASE_CLOCK_H_

#include <chrono>
#include <cstdint>
#include <type_traits>

namespace physmem {

class LeaseClock {
 public:
  virtual ~LeaseClock() = default;
  // Nanoseconds on CLOCK_MONOTONIC's scale; never decreases.
  virtual int64_t Now() const = 0;
  // How long (ns) a sleeper waiting for a deadline on this clock may sleep before it looks at the
  // clock again; 0 = until the deadline. The monotonic clock's deadlines are real time, so the
  // lessor's reaper sleeps until the earliest one; a clock a test moves forward says how soon a
  // jump must be noticed.
  virtual int64_t MaxNapNs() const { return 0; }

  // The production clock: std::chrono::steady_clock (CLOCK_MONOTONIC on Linux).
  static const LeaseClock& Monotonic();

 private:
  class MonotonicClock;
};

class LeaseClock::MonotonicClock final : public LeaseClock {
 public:
  static_assert(std::is_same_v<std::chrono::steady_clock::period, std::nano>,
                "lease deadlines and the journal are in steady_clock nanoseconds");
  int64_t Now() const override { return std::chrono::steady_clock::now().time_since_epoch().count(); }
};

inline const LeaseClock& LeaseClock::Monotonic() {
  static const MonotonicClock clock;
  return clock;
}

}  // namespace physmem

#endif  // PHYSMEM_SERVER_LEASE_CLOCK_H_
