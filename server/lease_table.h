// Leases, modeled on etcd's: every allocation belongs to one; a lease lives for its TTL unless
// kept alive; when it expires or is revoked, every page it holds goes back to the allocator.
//
// A lease's id doubles as its owner id in the allocator (PageAllocator records the owner in each
// block and checks it on free), so the allocator itself refuses a free by the wrong lease.
//
// Who uses it: the service (create/find/renew/revoke, and the per-lease book of blocks while it
// allocates or frees), the reaper thread (expiry). Thread-safety: all methods may be called
// concurrently. Lock order: the table's mu_ before a Lease's mu, never the other way round; the
// allocator takes its own locks below both.
#ifndef PHYSMEM_SERVER_LEASE_TABLE_H_
#define PHYSMEM_SERVER_LEASE_TABLE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "allocator/page_allocator.h"
#include "server/identity_limits.h"
#include "server/journal.h"
#include "server/lease_clock.h"
#include "server/stop_machine.h"

namespace physmem {

struct LeaseLimits {
  int64_t min_ttl_ms = 500;
  int64_t max_ttl_ms = 24 * 3600 * 1000;
  uint64_t default_page_quota = 0;  // 0: the whole machine
  uint64_t max_page_quota = 0;      // 0: the whole machine
  uint32_t max_leases_per_identity = 1024;
  size_t max_name_bytes = 64;
  size_t max_key_bytes = 128;
  // A non-empty lease name names at most one live lease of an identity (--unique_lease_names), so
  // that clients (physmemctl) can use it wherever the lease's id goes, as etcdctl does keys. On by
  // default; off, names may repeat (they are also metric labels, physmem_lease_held_pages, which
  // then sum the leases that share one).
  bool unique_names = true;
};

struct LeaseBlock {
  uint32_t order = 0;
  ZoneType zone = ZONE_NORMAL;
  std::string key;
};

class Lease {
 public:
  Lease(uint64_t id, std::string identity, std::string name, int64_t ttl_ms, uint64_t quota)
      : id(id), identity(std::move(identity)), name(std::move(name)), granted_ttl_ms(ttl_ms), page_quota(quota) {}

  // The allocator's 32-bit owner id: the low half of the lease id (the high half is the boot nonce).
  uint32_t owner() const { return static_cast<uint32_t>(id); }
  // `now` from the table's LeaseClock (LeaseTable::Expired).
  bool expired(int64_t now) const { return deadline.load() <= now; }

  const uint64_t id;
  const std::string identity;
  const std::string name;
  const int64_t granted_ttl_ms;
  const uint64_t page_quota;

  std::atomic<int64_t> deadline{0};  // expiry, LeaseClock nanoseconds (server/lease_clock.h)
  // The identity's page counters (server/identity_limits.h); null if the table has no limits.
  std::shared_ptr<IdentityUsage> usage;

  std::mutex mu;
  // Guarded by mu:
  bool dead = false;  // expired or revoked: takes no more pages
  uint64_t pages_held = 0;
  absl::flat_hash_map<uint64_t, LeaseBlock> blocks;  // pfn -> block
  absl::flat_hash_map<std::string, uint64_t> keys;   // allocation key -> pfn
};

struct LeaseCounters {
  std::atomic<uint64_t> created{0};
  std::atomic<uint64_t> expired{0};
  std::atomic<uint64_t> revoked{0};
  std::atomic<uint64_t> pages_reclaimed{0};  // pages freed because their lease ended
};

class LeaseTable {
 public:
  // `on_pages_freed` runs (without locks held) whenever ending a lease freed pages, so that
  // waiting allocations can retry.
  // Deadlines are read from `clock` (server/lease_clock.h), which must outlive the table.
  LeaseTable(PageAllocator* pa, LeaseLimits limits, std::function<void()> on_pages_freed,
             const LeaseClock* clock = &LeaseClock::Monotonic());
  ~LeaseTable();

  absl::StatusOr<std::shared_ptr<Lease>> Create(const std::string& identity, int64_t ttl_ms, uint64_t quota,
                                                const std::string& name);
  // NOT_FOUND if the lease does not exist (never did, expired, revoked); PERMISSION_DENIED if it
  // belongs to another identity.
  // A lease whose TTL has passed is reclaimed here if the reaper has not got to it yet, so that
  // "not found" always means its pages are already back.
  absl::StatusOr<std::shared_ptr<Lease>> Find(uint64_t id, const std::string& identity);
  // Renews for the lease's full TTL; returns it in ms.
  absl::StatusOr<int64_t> Renew(uint64_t id, const std::string& identity);
  // Ends the lease now; returns the pages freed.
  absl::StatusOr<uint64_t> Revoke(uint64_t id, const std::string& identity);
  std::vector<std::shared_ptr<Lease>> List(const std::string& identity) const;
  std::vector<std::shared_ptr<Lease>> All() const;

  // Ends every lease whose deadline has passed; returns pages reclaimed. The reaper thread calls
  // it; so does an allocation that may reclaim before it gives up.
  uint64_t ExpireDue();
  // Ends every lease (shutdown); returns pages freed.
  uint64_t RevokeAll();
  void StartReaper();
  void StopReaper();

  // Crash recovery (server/recovery.cc). set_journal: every later change is journaled before
  // it is acknowledged (see server/journal.h). Restore: before serving, adopts recovered leases
  // and the id space they came from.
  void set_journal(Journal* journal) { journal_ = journal; }
  Journal* journal() const { return journal_; }
  void Restore(uint64_t boot_nonce, uint32_t next_id, std::vector<std::shared_ptr<Lease>> leases);
  uint64_t boot_nonce() const;
  uint32_t next_id() const;
  // Per-identity limits: every lease created afterwards charges its identity's counters, and
  // ending a lease uncharges them. Call before serving.
  void set_identity_limits(IdentityLimits* limits) { identity_limits_ = limits; }
  IdentityLimits* identity_limits() const { return identity_limits_; }

  // Every change of page ownership runs inside stop_machine().Enter(), taken before the lease's
  // mutex: the table's own (End and its callers) and the service's (allocate, free). Validate
  // runs in stop_machine().Stopped().
  StopMachine& stop_machine() { return stop_machine_; }

  const LeaseClock& clock() const { return *clock_; }
  bool Expired(const Lease& l) const { return l.expired(clock_->Now()); }
  int64_t RemainingMs(const Lease& l) const;
  const LeaseLimits& limits() const { return limits_; }
  const LeaseCounters& counters() const { return counters_; }
  size_t size() const;

 private:
  // Frees its pages; call after removing it, within the same stop_machine_ Operation (so that
  // Validate never sees a lease gone from the table with its pages still allocated).
  uint64_t End(const std::shared_ptr<Lease>& lease);
  // A lease's kmap()s end with it, as its pages do: End drops them before freeing a HIGHMEM block,
  // or the free would be refused ("still kmap()ed") and the block leaked with its window slots.
  // The service's Kmap runs under lease->mu and checks `dead`, so none can slip in after this.
  void DropKmaps(uint64_t pfn, uint32_t order, uint32_t owner);
  void ReaperLoop();
  // The name index (limits_.unique_names): callers hold mu_. Every path that adds a lease to
  // leases_ or removes one calls these, so the index holds exactly the live named leases.
  void IndexName(const Lease& lease);
  void UnindexName(const Lease& lease);

  PageAllocator* const pa_;
  const LeaseClock* const clock_;
  const LeaseLimits limits_;
  const std::function<void()> on_pages_freed_;
  LeaseCounters counters_;
  IdentityLimits* identity_limits_ = nullptr;

  StopMachine stop_machine_;
  mutable std::mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Lease>> leases_;  // guarded by mu_
  absl::flat_hash_map<std::string, uint32_t> per_identity_;        // guarded by mu_
  // (identity, non-empty name) -> the leases of that name in leases_; kept with
  // limits_.unique_names only (empty otherwise, so Create finds no conflict). One live lease each;
  // more only while an expired one awaits the reaper, or after Restore adopted duplicates journaled
  // while names could repeat (the name then stays taken until the last of them ends).
  // Guarded by mu_.
  absl::flat_hash_map<std::pair<std::string, std::string>, std::vector<uint64_t>> names_;
  uint32_t next_id_ = 1;                                            // guarded by mu_
  // Random per daemon start, the high 32 bits of every lease id: a client that outlived a daemon
  // restart cannot renew or use a new lease that happens to reuse its old number.
  uint64_t boot_nonce_;  // guarded by mu_ (set at construction, or by Restore before serving)
  Journal* journal_ = nullptr;  // null: no journal (anonymous arena, --journal=off)

  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool reaper_stop_ = false;  // guarded by reaper_mu_
  std::thread reaper_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_LEASE_TABLE_H_
