// The lessor, named after etcd's (server/lease/lessor.go): the one component that creates,
// renews, revokes and expires leases, and the only code that changes a lease's book — the blocks
// it holds, its allocation keys, its page count, its identity's charges and its kmap()s. Request
// handlers (server/physmem_service.cc) decode, make one call here or to the allocator, and reply;
// they never touch a book.
//
// Every allocation belongs to one lease; a lease lives for its TTL unless renewed; when it
// expires or is revoked, every page it holds goes back to the allocator. A lease's id doubles as
// its owner id in the allocator (the low 32 bits; PageAllocator records the owner in each block's
// head page and checks it on free), so the allocator itself refuses a free by the wrong lease.
//
// The book of a lease, and its invariant (CheckInvariants() checks all of it; the Validate RPC
// runs it with the machine stopped, tests after every step):
//   pages_held = Σ 2^order over the lease's blocks
//   every block is allocated in the allocator, headed where the book says, with the lease's
//     owner id and the book's order
//   every key names a block of the lease, and a block has at most one key
//   Σ over an identity's leases of pages in zone z = that identity's charge in zone z (and in
//     total), when the daemon has identity limits
// The book is small because the allocator's page already records owner and order: a block is
// one 32-bit mem_map index in a hash set (order 0, ~5–11 bytes a block with the set's slack) or
// an index -> order map (higher orders, ≥ 2 pages a block). Zone and pfn follow from the index.
// Keys are rare, and cost their two map entries only in leases that use them.
//
// Expiry: an indexed min-heap of deadlines (ExpiryHeap below), as etcd's LeaseQueue: grant,
// renew and end are O(log n); the reaper thread sleeps until the earliest deadline, so idle
// leases cost it nothing however many there are.
//
// Locks, in the order they are taken (never the other way round):
//   stop_machine_ Operation  every change of page ownership (server/stop_machine.h); Census()
//                            runs the checks with the machine stopped
//   mu_                      the lessor's: the lease map, the name index, per-identity counts,
//                            the id space, the expiry heap and every lease's deadline
//   Lease::mu_               a lease's book and its `dead` flag
//   the allocator's locks    below all of ours
// Who calls it: PhysMemService (everything a handler needs), Server (builds it, starts the reaper,
// RevokeAll at shutdown), RestoreFromJournal (Adopt, before serving), Metrics (counters and the
// pages per live lease, at scrape time). Thread-safety: every public method may be called from any
// thread concurrently, except Adopt/AdoptIdSpace (before serving).
#ifndef PHYSMEM_SERVER_LESSOR_H_
#define PHYSMEM_SERVER_LESSOR_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "allocator/mutex.h"
#include "allocator/page_allocator.h"
#include "server/identity_limits.h"
#include "server/journal.h"
#include "server/lease_clock.h"
#include "server/page_tenancy.h"
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

class Lessor;

// One lease: what it was granted (public, immutable) and its book (private: only the Lessor,
// under mu_, reads or changes it).
class Lease {
 public:
  Lease(uint64_t id, std::string identity, std::string name, int64_t ttl_ms, uint64_t quota)
      : id(id), identity(std::move(identity)), name(std::move(name)), granted_ttl_ms(ttl_ms), page_quota(quota) {}

  // The allocator's 32-bit owner id: the low half of the lease id (the high half is the boot nonce).
  uint32_t owner() const { return static_cast<uint32_t>(id); }
  // Expiry, LeaseClock nanoseconds (server/lease_clock.h). Written under Lessor::mu_.
  int64_t deadline() const { return deadline_.load(std::memory_order_acquire); }
  // Of the pages held, those idle in the client's own page cache (clients/page_cache.h), as the
  // client last reported with a renewal (KeepAliveRequest.client_cached_pages): a report, not a
  // count the daemon keeps, so it may lag; capped at the pages held when it came. 0 until the
  // first report.
  uint64_t client_cached_pages() const { return client_cached_pages_.load(std::memory_order_relaxed); }

  const uint64_t id;
  const std::string identity;
  const std::string name;
  const int64_t granted_ttl_ms;
  const uint64_t page_quota;

 private:
  friend class Lessor;
  friend class ExpiryHeap;

  // What a keyed allocation asked for, so that a retry with the key must ask the same. Unknown
  // for a block recovered from the journal (which records order and key only): only its order is
  // compared then.
  struct KeyedRequest {
    gfp_t gfp = 0;
    const char* form = "";  // the call: "AllocPages", "GetFreePages", "GetZeroedPage" (a literal)
  };
  // Allocation keys, only in leases that use them: key -> block, block -> key, block -> request.
  struct Keys {
    absl::flat_hash_map<std::string, uint32_t> block_of;
    absl::flat_hash_map<uint32_t, std::string> key_of;
    absl::flat_hash_map<uint32_t, KeyedRequest> request_of;
  };

  std::atomic<int64_t> deadline_{0};
  std::atomic<uint64_t> client_cached_pages_{0};  // written by Renew, read by metrics and GetLease
  size_t heap_index_ = 0;  // position in the lessor's ExpiryHeap; guarded by Lessor::mu_ (a
                           // lease cannot name its lessor's lock for the analysis)
  // The identity's page counters (server/identity_limits.h); null if the lessor has no limits.
  std::shared_ptr<IdentityUsage> usage_;
  uint16_t tenant_ = PageTenancy::kUnknown;  // the identity's tag in the lessor's PageTenancy

  Mutex mu_;
  bool dead_ ABSL_GUARDED_BY(mu_) = false;  // expired or revoked: takes no more pages
  uint64_t pages_held_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<uint32_t> order0_ ABSL_GUARDED_BY(mu_);           // mem_map index of each order-0 block
  absl::flat_hash_map<uint32_t, uint8_t> higher_ ABSL_GUARDED_BY(mu_);  // head index -> order, orders >= 1
  std::unique_ptr<Keys> keys_ ABSL_GUARDED_BY(mu_);                     // null until the first keyed allocation
};

// The deadline heap: a binary min-heap of leases by deadline, each lease knowing its position
// (Lease::heap_index_), so that renewing or ending one is O(log n) with no stale entries. The
// earliest deadline is at [0]; children of i are 2i+1 and 2i+2. Guarded by Lessor::mu_.
class ExpiryHeap {
 public:
  void Push(Lease* l);
  void Remove(Lease* l);
  // After l's deadline changed.
  void Fix(Lease* l);
  Lease* top() const { return heap_.empty() ? nullptr : heap_[0]; }
  size_t size() const { return heap_.size(); }
  // heap[i].deadline ≤ heap[2i+1], heap[2i+2]; heap[i].heap_index_ == i. Empty string if so.
  std::string Check() const;

 private:
  void Place(size_t i, Lease* l) {
    heap_[i] = l;
    l->heap_index_ = i;
  }
  void Up(size_t i);
  void Down(size_t i);
  std::vector<Lease*> heap_;
};

struct LeaseCounters {
  std::atomic<uint64_t> created{0};
  std::atomic<uint64_t> expired{0};
  std::atomic<uint64_t> revoked{0};
  std::atomic<uint64_t> pages_reclaimed{0};  // pages freed because their lease ended
};

// A block as a reply names it (Attach, and the replay of a keyed allocation).
struct AttachedBlock {
  Page* page = nullptr;  // head
  uint64_t pfn = 0;
  unsigned order = 0;
  ZoneType zone = ZONE_NORMAL;
  std::string key;
  bool replayed = false;  // the key named an existing block: nothing was allocated
};

// What GetLease/ListLeases show of a lease.
struct LeaseStatus {
  int64_t remaining_ms = 0;
  uint64_t pages_held = 0;
  std::map<std::pair<ZoneType, unsigned>, uint64_t> holdings;  // (zone, order) -> blocks
};

// What Census() counted: the allocator's census and the lessor's books, taken at one instant.
struct BookCensus {
  PageCensus pages;
  uint64_t leases = 0;
  uint64_t lease_pages = 0;     // Σ pages_held over live leases
  uint64_t lease_blocks = 0;
  bool has_identity_limits = false;
  uint64_t identity_pages = 0;  // Σ over identities' charges
};

class Lessor {
 public:
  // `identity_limits` (may be null: no per-identity limits) charges every lease's pages to its
  // identity; `journal` (may be null: no journal) records every change before it is acknowledged
  // (server/journal.h). `on_pages_freed` runs, without locks held, whenever ending a lease freed
  // pages, so that waiting allocations can retry. Deadlines are read from `clock`. Every pointer
  // must outlive the lessor.
  Lessor(PageAllocator* pa, LeaseLimits limits, IdentityLimits* identity_limits, Journal* journal,
         std::function<void()> on_pages_freed, const LeaseClock* clock = &LeaseClock::Monotonic());
  ~Lessor();

  // ---- Leases (etcd's Grant, Lookup, Renew, Revoke). ----
  absl::StatusOr<std::shared_ptr<Lease>> Grant(const std::string& identity, int64_t ttl_ms, uint64_t quota,
                                               const std::string& name);
  // NOT_FOUND if the lease does not exist (never did, expired, revoked); PERMISSION_DENIED if it
  // belongs to another identity. A lease whose TTL has passed is reclaimed here if the reaper has
  // not got to it yet, so that "not found" always means its pages are already back.
  absl::StatusOr<std::shared_ptr<Lease>> Lookup(uint64_t id, const std::string& identity);
  // Renews for the lease's full TTL; returns it in ms. `client_cached_pages`, when given, is the
  // client's report of the pages idle in its page cache (Lease::client_cached_pages()), kept
  // capped at the pages the lease holds; INVALID_ARGUMENT (and no renewal) for a report above
  // the machine's pages, which no lease can hold.
  absl::StatusOr<int64_t> Renew(uint64_t id, const std::string& identity,
                                std::optional<uint64_t> client_cached_pages = std::nullopt);
  // Ends the lease now; returns the pages freed.
  absl::StatusOr<uint64_t> Revoke(uint64_t id, const std::string& identity);
  // The identity's leases, by id.
  std::vector<std::shared_ptr<Lease>> List(const std::string& identity) const;
  std::vector<std::shared_ptr<Lease>> All() const;
  LeaseStatus Describe(Lease& lease) const;
  // Calls fn(lease, pages held) for every live lease (metrics).
  void ForEachLive(absl::FunctionRef<void(const Lease&, uint64_t pages_held)> fn) const;

  // ---- The book (etcd's Attach/Detach: blocks instead of keys). ----
  // Allocates a block of 2^order pages into the lease (or, if `key` names one of its blocks
  // already, replays it — if the retry asks exactly what the first call asked: order, GFP mask and
  // `form`, the call's name, a string literal). nullopt: no memory now (the caller may wait and
  // call again); otherwise the final status. INVALID_ARGUMENT (order, key, a retry that differs),
  // NOT_FOUND (the lease ended), RESOURCE_EXHAUSTED (quota, identity limits).
  std::optional<absl::Status> Attach(Lease& lease, gfp_t gfp, unsigned order, const std::string& key,
                                     AttachedBlock* out, const char* form = "AllocPages");
  // alloc_pages_bulk() into the lease: up to `count` order-0 pages (fewer if the quota, the
  // identity's limits or memory run out; RESOURCE_EXHAUSTED if none).
  absl::StatusOr<std::vector<Page*>> AttachBulk(Lease& lease, gfp_t gfp, unsigned count);
  // Frees a block of the lease (by pfn and order, or by its key: then order 0 means "its order");
  // returns the pages freed. The allocator's refusals pass through unchanged, except that another
  // lease's block is not named (PERMISSION_DENIED "belongs to another lease"); nothing changes then.
  absl::StatusOr<uint64_t> Detach(Lease& lease, uint64_t pfn, unsigned order, const std::string& key);
  // Frees blocks[i] (order orders[i], or 0 if orders is empty) in one operation; returns pages
  // freed and calls on_refused(i, status) for each block refused.
  uint64_t DetachBulk(Lease& lease, std::span<const uint64_t> pfns, std::span<const uint32_t> orders,
                      absl::FunctionRef<void(size_t, const absl::Status&)> on_refused);
  // Frees runs of order-0 pages of the lease (FreePagesBulkRequest.run), all or nothing: every
  // run is checked before any page is freed, and the first bad one refuses the call with nothing
  // changed: INVALID_ARGUMENT for an empty run, a run past pfn 2^64, two runs that overlap, or a
  // page inside a higher-order block of the lease; OUT_OF_RANGE for a pfn that is not RAM; the
  // allocator's FAILED_PRECONDITION (not allocated, still kmap()ed) and PERMISSION_DENIED
  // ("belongs to another lease") for a page the lease does not hold. Then, with a journal, one
  // record for the whole call (kJournalFreeRuns) before any page goes: if the journal cannot
  // record it, every page stays allocated and in the book and is passed to on_refused(pfn,
  // status), and 0 is returned. Then every page is freed. Returns the pages freed.
  struct PfnRun {
    uint64_t pfn = 0;
    uint64_t count = 0;
  };
  // `pages` folded into runs of consecutive ascending pfns, in the order given: how AttachBulk
  // journals a bulk allocation (Run = JournalRun), and a caller's DetachRuns argument (PfnRun).
  template <class Run>
  static std::vector<Run> RunsOf(const PageAllocator& pa, std::span<Page* const> pages) {
    std::vector<Run> runs;
    for (const Page* p : pages) {
      const uint64_t pfn = pa.page_to_pfn(p);
      if (!runs.empty() && runs.back().pfn + runs.back().count == pfn) {
        ++runs.back().count;
      } else {
        runs.push_back({pfn, 1});
      }
    }
    return runs;
  }
  absl::StatusOr<uint64_t> DetachRuns(Lease& lease, std::span<const PfnRun> runs,
                                      absl::FunctionRef<void(uint64_t, const absl::Status&)> on_refused);
  // kmap() of a page of the lease's, refused once the lease has ended (its kmaps end with it).
  absl::StatusOr<uint64_t> Kmap(Lease& lease, uint64_t pfn);
  // kunmap() with the same checks as Kmap for every pfn, lowmem too (where there is nothing to
  // unmap): the page must be allocated (FAILED_PRECONDITION) to this lease (PERMISSION_DENIED).
  absl::Status Kunmap(Lease& lease, uint64_t pfn);
  // page_address() of a page of the lease's block (the kernel's answer: the lowmem mapping, a
  // HIGHMEM page's kmap address while it has one, else 0). The same ownership checks as Kunmap.
  absl::StatusOr<uint64_t> PageAddress(Lease& lease, uint64_t pfn);
  // Runs fn(host bytes) over [offset, offset + length) from the start of page `pfn`, which must lie
  // in one block of the lease; the block cannot be freed while fn runs. `max_length` bounds length.
  absl::Status AccessBytes(Lease& lease, uint64_t pfn, uint64_t offset, uint64_t length, uint64_t max_length,
                           absl::FunctionRef<void(std::byte*)> fn);
  // Why an allocation of `order` with `gfp` into the lease finds no memory: the allocator's
  // AllocFailure() over the zones the identity's limits leave it, its detail naming the limits
  // when they narrowed the zonelist. The service turns it into a status (RefusalStatus).
  Refusal NoMemory(const Lease& lease, gfp_t gfp, unsigned order) const;

  // ---- Expiry. ----
  // Ends every lease whose deadline has passed; returns pages reclaimed. The reaper thread calls
  // it; so does an allocation that may reclaim before it gives up.
  uint64_t ExpireDue();
  // Ends every lease (shutdown); returns pages freed.
  uint64_t RevokeAll();
  void StartReaper();
  void StopReaper();
  // Times the reaper woke (a deadline came, Grant woke it for an earlier one, a clock with
  // MaxNapNs() made it look): idle leases add none. For tests and the benchmark.
  uint64_t reaper_wakeups() const { return reaper_wakeups_.load(std::memory_order_relaxed); }

  // ---- The invariant. ----
  // The book's invariant (top of this file) over every lease, and the heap's; OK or INTERNAL naming
  // the first lease and block that break it. Needs no ownership change in flight: call it from
  // Census(), or with no other thread using the lessor (tests).
  absl::Status CheckInvariants() const;
  // The allocator's Validate() and CheckInvariants() with the machine stopped; UNAVAILABLE if
  // ownership changes in flight did not pause before `deadline`, INTERNAL if a check failed.
  absl::StatusOr<BookCensus> Census(std::chrono::steady_clock::time_point deadline);

  // ---- Crash recovery (server/recovery.cc), before serving. ----
  // Adopts a lease read back from the journal, whose blocks RestoreAllocated() has already marked
  // allocated to it: the book, the identity's charges, the name, the heap.
  void Adopt(JournalLease& jl);
  // The id space recovered leases came from.
  void AdoptIdSpace(uint64_t boot_nonce, uint32_t next_id);
  uint64_t boot_nonce() const;
  uint32_t next_id() const;

  // The clock deadlines are read from (recovery expires the leases whose deadline passed while
  // the daemon was down).
  const LeaseClock& clock() const { return *clock_; }
  const LeaseCounters& counters() const { return counters_; }
  // Pages zeroed because they passed to another identity (server/page_tenancy.h).
  uint64_t pages_scrubbed() const { return tenancy_.pages_scrubbed(); }
  size_t size() const;

 private:
  // Removes the lease from the map, the name index, the per-identity count and the heap; mu_ held.
  void UnlinkLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees its pages; call after UnlinkLocked, within the same stop_machine_ Operation (so that
  // Census never sees a lease gone from the map with its pages still allocated). The journal's
  // UNAVAILABLE if the end could not be journaled: then the lease is dead but keeps its pages.
  absl::StatusOr<uint64_t> End(Lease& lease);
  void IndexName(const Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnindexName(const Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls fn(head) for every index in `heads`, lowest first.
  void ForEachInIndexOrder(const absl::flat_hash_set<uint32_t>& heads, absl::FunctionRef<void(uint32_t)> fn) const;
  void ReaperLoop();
  static absl::Status Gone(const Lease& lease);
  bool Expired(const Lease& l) const { return l.deadline() <= clock_->Now(); }

  // Book helpers; lease.mu_ held.
  struct BookedBlock {
    Page* head;
    unsigned order;
  };
  // The lease's block containing pfn: the allocator says the lease's owner id holds it, the book
  // that it is this lease's. FAILED_PRECONDITION "<call>: pfn .. is not allocated" (no prefix if
  // `call` is empty), PERMISSION_DENIED "belongs to another lease", OUT_OF_RANGE for a hole.
  absl::StatusOr<BookedBlock> BookedBlockContaining(const Lease& lease, uint64_t pfn, std::string_view call) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  void AddBlock(Lease& lease, uint32_t head, unsigned order, const std::string& key,
                const Lease::KeyedRequest* request = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // Why a retry with `key` of the block at `head` (order `order`) is not the request that made it,
  // or "" if it is the same.
  std::string RetryDifference(const Lease& lease, uint32_t head, unsigned order, gfp_t gfp, const char* form) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // The head of the block `key` names in the lease, if any.
  std::optional<uint32_t> KeyedBlock(const Lease& lease, const std::string& key) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // The order of the lease's block headed at `head`, if it has one.
  std::optional<unsigned> BlockOrder(const Lease& lease, uint32_t head) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // Pages per zone, for identity charges settled once per bulk call.
  using ZonePages = std::array<uint64_t, MAX_NR_ZONES>;
  // Takes the block out of the book and uncharges the identity, or, with `uncharge_later`, adds
  // its pages there for the caller to uncharge (DetachBulk, once per zone).
  void RemoveBlock(Lease& lease, uint32_t head, unsigned order, ZoneType zone, ZonePages* uncharge_later = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  absl::StatusOr<uint64_t> DetachLocked(Lease& lease, uint64_t pfn, unsigned order, const std::string& key,
                                        ZonePages* uncharge_later = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // The next three free with the trusted free, which only lease.mu_ held throughout (from the
  // allocation to the give-back) makes safe: no other call can reach the block meanwhile.
  // Undoes an allocation the journal refused to record: frees the block and its identity charge.
  void GiveBack(Lease& lease, Page* page, unsigned order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // Charges 2^order pages to the lease's identity and allocates them in the zones where it has room.
  std::optional<absl::StatusOr<Page*>> AllocCharged(Lease& lease, gfp_t gfp, unsigned order)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // The same for `want` order-0 pages into pages[0..); returns how many; *why_short says why fewer.
  unsigned AllocBulkCharged(Lease& lease, gfp_t gfp, unsigned want, Page** pages, std::string* why_short)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // DetachRuns' checks, before anything is freed, in one pass that takes each page out of the
  // book as it checks it (one hash probe a page): appends the mem_map index of every page to
  // *taken and counts them per zone in *in_zone. The first bad run or page refuses the call with
  // every page put back (the book as it was, *taken empty).
  absl::Status TakeRunsFromBook(Lease& lease, std::span<const PfnRun> runs, std::vector<uint32_t>* taken,
                                ZonePages* in_zone) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);
  // Drops a HIGHMEM block's kmaps before End frees it (or the free would be refused, "still
  // kmap()ed", and the block leaked with its window slots).
  void DropKmaps(uint32_t head, unsigned order, uint32_t owner);
  absl::Status CheckLeaseLocked(const Lease& lease,
                                absl::flat_hash_map<const IdentityUsage*, std::array<uint64_t, MAX_NR_ZONES>>* charged,
                                uint64_t* blocks) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_);

  uint64_t pfn_of(uint32_t idx) const { return pa_->mem_map().index_to_pfn(idx); }
  ZoneType zone_of(uint32_t idx) const { return pa_->page_zonenum(&pa_->mem_map().page(idx)); }

  PageAllocator* const pa_;
  const LeaseLimits limits_;
  IdentityLimits* const identity_limits_;
  Journal* const journal_;
  const std::function<void()> on_pages_freed_;
  const LeaseClock* const clock_;
  LeaseCounters counters_;

  StopMachine stop_machine_;
  PageTenancy tenancy_;  // scrubs a page passing to another identity (Attach, AttachBulk)
  mutable Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Lease>> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> per_identity_ ABSL_GUARDED_BY(mu_);
  // (identity, non-empty name) -> the leases of that name in leases_; kept with
  // limits_.unique_names only (empty otherwise, so Grant finds no conflict). One live lease each;
  // more only while an expired one awaits the reaper, or after Adopt took duplicates journaled
  // while names could repeat (the name then stays taken until the last of them ends).
  absl::flat_hash_map<std::pair<std::string, std::string>, std::vector<uint64_t>> names_ ABSL_GUARDED_BY(mu_);
  ExpiryHeap heap_ ABSL_GUARDED_BY(mu_);
  uint32_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Random per daemon start, the high 32 bits of every lease id: a client that outlived a daemon
  // restart cannot renew or use a new lease that happens to reuse its old number.
  uint64_t boot_nonce_ ABSL_GUARDED_BY(mu_);

  CondVar reaper_cv_;  // with mu_: an earlier deadline, or stop
  bool reaper_stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> reaper_wakeups_{0};
  std::thread reaper_;
};

}  // namespace physmem

#endif  // PHYSMEM_SERVER_LESSOR_H_
