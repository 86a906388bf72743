#include "server/lessor.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/log.h"
#include "server/refusal_status.h"
#include "server/status_util.h"

namespace physmem {
namespace {

int64_t DeadlineIn(const LeaseClock& clock, int64_t ms) { return clock.Now() + ms * 1000000; }

uint64_t NewBootNonce() {
  std::random_device rd;
  uint64_t n = 0;
  while (n == 0) n = rd() & 0x7fffffffu;  // 31 bits: ids stay positive as int64 too
  return n << 32;
}

absl::Status NotFound(uint64_t id) {
  return absl::NotFoundError(absl::StrFormat("lease %d not found (never created, expired, or revoked)", id));
}

// The checks of FreePagesBulkRequest.run that need no lock: no run empty or past pfn 2^64, no two
// runs sharing a page (each page is freed once; a second free of it would be a double free
// halfway through an all-or-nothing call).
absl::Status CheckRunShapes(std::span<const Lessor::PfnRun> runs) {
  std::vector<size_t> by_pfn(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    const Lessor::PfnRun& r = runs[i];
    if (r.count == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("run %d (pfn %#x) has count 0: a run frees at least one page; nothing was freed", i, r.pfn));
    }
    if (r.pfn > UINT64_MAX - r.count) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "run %d: pfn %#x + count %d overflows 64 bits; nothing was freed", i, r.pfn, r.count));
    }
    by_pfn[i] = i;
  }
  std::sort(by_pfn.begin(), by_pfn.end(), [&](size_t a, size_t b) { return runs[a].pfn < runs[b].pfn; });
  for (size_t k = 1; k < by_pfn.size(); ++k) {
    const Lessor::PfnRun& prev = runs[by_pfn[k - 1]];
    const Lessor::PfnRun& cur = runs[by_pfn[k]];
    if (prev.pfn + prev.count > cur.pfn) {
      return absl::InvalidArgumentError(
          absl::StrFormat("runs %d and %d overlap at pfn %#x: each page may be freed once; nothing was freed",
                          std::min(by_pfn[k - 1], by_pfn[k]), std::max(by_pfn[k - 1], by_pfn[k]), cur.pfn));
    }
  }
  return absl::OkStatus();
}

// A refusal of DetachRuns: the run's number first, then what is wrong, then that nothing changed.
absl::Status RunRefusal(const absl::Status& s, size_t run) {
  absl::Status out(s.code(), absl::StrFormat("run %d: %s; nothing was freed", run, s.message()));
  // The refusal's reason (server/refusal_status.h) goes along: the handler counts by it.
  s.ForEachPayload([&out](auto url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace

// ---- ExpiryHeap ----

void ExpiryHeap::Push(Lease* l) {
  heap_.push_back(l);
  l->heap_index_ = heap_.size() - 1;
  Up(heap_.size() - 1);
}

void ExpiryHeap::Remove(Lease* l) {
  const size_t i = l->heap_index_;
  Lease* last = heap_.back();
  heap_.pop_back();
  if (i == heap_.size()) return;  // it was the last
  Place(i, last);
  Fix(last);
}

void ExpiryHeap::Fix(Lease* l) {
  Up(l->heap_index_);
  Down(l->heap_index_);
}

void ExpiryHeap::Up(size_t i) {
  Lease* l = heap_[i];
  while (i > 0) {
    const size_t parent = (i - 1) / 2;
    if (heap_[parent]->deadline() <= l->deadline()) break;
    Place(i, heap_[parent]);
    i = parent;
  }
  Place(i, l);
}

void ExpiryHeap::Down(size_t i) {
  Lease* l = heap_[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= heap_.size()) break;
    if (child + 1 < heap_.size() && heap_[child + 1]->deadline() < heap_[child]->deadline()) ++child;
    if (l->deadline() <= heap_[child]->deadline()) break;
    Place(i, heap_[child]);
    i = child;
  }
  Place(i, l);
}

std::string ExpiryHeap::Check() const {
  for (size_t i = 0; i < heap_.size(); ++i) {
    if (heap_[i]->heap_index_ != i) {
      return absl::StrFormat("lease %d at heap slot %d says %d", heap_[i]->id, i, heap_[i]->heap_index_);
    }
    if (i > 0 && heap_[(i - 1) / 2]->deadline() > heap_[i]->deadline()) {
      return absl::StrFormat("lease %d's deadline is earlier than its heap parent's", heap_[i]->id);
    }
  }
  return "";
}

// ---- Leases ----

Lessor::Lessor(PageAllocator* pa, LeaseLimits limits, IdentityLimits* identity_limits, Journal* journal,
               std::function<void()> on_pages_freed, const LeaseClock* clock)
    : pa_(pa),
      limits_(limits),
      identity_limits_(identity_limits),
      journal_(journal),
      on_pages_freed_(std::move(on_pages_freed)),
      clock_(clock),
      // An anonymous arena is a fresh zero-filled mapping; a file-backed one may hold a previous
      // run's bytes (server/page_tenancy.h).
      tenancy_(pa, pa->arena().path().empty()),
      boot_nonce_(NewBootNonce()) {}

Lessor::~Lessor() { StopReaper(); }

absl::Status Lessor::Gone(const Lease& lease) {
  return absl::NotFoundError(absl::StrFormat("lease %d expired or was revoked", lease.id));
}

absl::StatusOr<std::shared_ptr<Lease>> Lessor::Grant(const std::string& identity, int64_t ttl_ms, uint64_t quota,
                                                     const std::string& name) {
  if (ttl_ms < limits_.min_ttl_ms || ttl_ms > limits_.max_ttl_ms) {
    return absl::InvalidArgumentError(absl::StrFormat("ttl_ms %d is outside the allowed range [%d, %d]", ttl_ms,
                                                      limits_.min_ttl_ms, limits_.max_ttl_ms));
  }
  if (name.size() > limits_.max_name_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("lease name is %d bytes; at most %d allowed", name.size(), limits_.max_name_bytes));
  }
  const uint64_t total = pa_->mem_map().nr_pages();
  const uint64_t max_quota = limits_.max_page_quota ? limits_.max_page_quota : total;
  if (quota == 0) quota = limits_.default_page_quota ? limits_.default_page_quota : max_quota;
  if (quota > max_quota) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page_quota %d exceeds the per-lease limit %d (--max_lease_pages)", quota, max_quota));
  }
  MutexLock l(&mu_);
  if (auto it = names_.find(std::pair(identity, name)); it != names_.end()) {
    // Only a live lease holds its name: one past its deadline that the reaper has not collected
    // yet does not, and leaves the index when it is collected.
    const int64_t now = clock_->Now();
    for (uint64_t holder : it->second) {
      auto h = leases_.find(holder);
      if (h == leases_.end() || h->second->deadline() <= now) continue;
      // The name is at most max_name_bytes (checked above); escaped, so that a name with quotes or
      // control bytes cannot garble the message.
      return absl::AlreadyExistsError(
          absl::StrFormat("lease name \"%s\" is already taken by lease %d of this identity (names are unique per "
                          "identity, --unique_lease_names): revoke it, or pick another name",
                          absl::CEscape(name.substr(0, limits_.max_name_bytes)), holder));
    }
  }
  uint32_t& count = per_identity_[identity];
  if (count >= limits_.max_leases_per_identity) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "identity %s already holds %d leases, the limit (--max_leases_per_identity)", identity, count));
  }
  // The low 32 bits double as allocator owner ids: skip 0 and numbers still in use after a wrap.
  uint32_t n = next_id_;
  while (n == 0 || leases_.contains(boot_nonce_ | n)) ++n;
  next_id_ = n + 1;
  const uint64_t id = boot_nonce_ | n;
  auto lease = std::make_shared<Lease>(id, identity, name, ttl_ms, quota);
  lease->deadline_.store(DeadlineIn(*clock_, ttl_ms));
  lease->tenant_ = tenancy_.TagOf(identity);
  if (identity_limits_ != nullptr) lease->usage_ = identity_limits_->For(identity);
  // Journaled before the lease can be found (or listed), so its allocations come after it. Not
  // journaled, not granted: the journal's status (UNAVAILABLE, naming it) is the answer.
  if (journal_) {
    if (absl::Status s = journal_->LeaseCreated(id, identity, name, ttl_ms, quota, lease->deadline()); !s.ok()) {
      if (count == 0) per_identity_.erase(identity);
      return s;
    }
  }
  leases_[id] = lease;
  IndexName(*lease);
  heap_.Push(lease.get());
  // The reaper sleeps until the earliest deadline: wake it if this one is earlier.
  if (heap_.top() == lease.get()) reaper_cv_.SignalAll();
  ++count;
  counters_.created.fetch_add(1, std::memory_order_relaxed);
  return lease;
}

absl::StatusOr<std::shared_ptr<Lease>> Lessor::Lookup(uint64_t id, const std::string& identity) {
  std::shared_ptr<Lease> lease;
  {
    MutexLock l(&mu_);
    auto it = leases_.find(id);
    if (it != leases_.end()) lease = it->second;
  }
  // An expired lease the reaper has not collected yet is gone: collect it now, so that its pages
  // are back before anyone hears it is gone.
  if (lease != nullptr && Expired(*lease)) {
    ExpireDue();
    lease = nullptr;
  }
  if (lease == nullptr) return NotFound(id);
  if (lease->identity != identity) {
    return absl::PermissionDeniedError(absl::StrFormat("lease %d belongs to another identity", id));
  }
  return lease;
}

absl::StatusOr<int64_t> Lessor::Renew(uint64_t id, const std::string& identity,
                                      std::optional<uint64_t> client_cached_pages) {
  absl::StatusOr<std::shared_ptr<Lease>> found = Lookup(id, identity);
  if (!found.ok()) return found.status();
  Lease& lease = **found;
  // A report no lease could make: more pages than the machine has. (A report above what the lease
  // holds now can be honest, sent while a drain of the cache was on its way: it is capped below.)
  if (client_cached_pages && *client_cached_pages > pa_->mem_map().nr_pages()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "client_cached_pages %d is more than the %d pages of the emulated machine; lease %d was not renewed",
        *client_cached_pages, pa_->mem_map().nr_pages(), id));
  }
  {
    // A lease the reaper has already claimed (gone from the map) stays dead: renewal cannot
    // resurrect it. In the map under mu_ means not dead.
    MutexLock l(&mu_);
    if (!leases_.contains(id) || Expired(lease)) {
      return absl::NotFoundError(absl::StrFormat("lease %d has expired", id));
    }
    const int64_t deadline = DeadlineIn(*clock_, lease.granted_ttl_ms);
    if (journal_) {  // not journaled, not renewed: the old deadline stands
      if (absl::Status s = journal_->LeaseRenewed(id, deadline); !s.ok()) return s;
    }
    lease.deadline_.store(deadline, std::memory_order_release);
    heap_.Fix(&lease);
  }
  if (client_cached_pages) {
    // Cached pages are held pages: the figure never exceeds what the lease holds.
    MutexLock ll(&lease.mu_);
    lease.client_cached_pages_.store(std::min(*client_cached_pages, lease.pages_held_), std::memory_order_relaxed);
  }
  return lease.granted_ttl_ms;
}

absl::StatusOr<uint64_t> Lessor::Revoke(uint64_t id, const std::string& identity) {
  std::shared_ptr<Lease> lease;
  StopMachine::Operation op = stop_machine_.Enter();
  {
    MutexLock l(&mu_);
    auto it = leases_.find(id);
    if (it == leases_.end()) return NotFound(id);
    if (it->second->identity != identity) {
      return absl::PermissionDeniedError(absl::StrFormat("lease %d belongs to another identity", id));
    }
    lease = it->second;
    UnlinkLocked(*lease);
  }
  absl::StatusOr<uint64_t> ended = End(*lease);
  op.unlock();
  if (!ended.ok()) return ended.status();
  const uint64_t pages = *ended;
  counters_.revoked.fetch_add(1, std::memory_order_relaxed);
  counters_.pages_reclaimed.fetch_add(pages, std::memory_order_relaxed);
  LogInfo("lease_revoked", {{"lease", id}, {"identity", identity}, {"pages", pages}});
  if (pages != 0 && on_pages_freed_) on_pages_freed_();
  return pages;
}

void Lessor::UnlinkLocked(Lease& lease) {
  leases_.erase(lease.id);
  UnindexName(lease);
  if (--per_identity_[lease.identity] == 0) per_identity_.erase(lease.identity);
  heap_.Remove(&lease);
}

absl::StatusOr<uint64_t> Lessor::End(Lease& lease) {
  MutexLock l(&lease.mu_);
  // Journaled before any page is freed: once a page can go to another lease, replay knows it left.
  // Not journaled: the lease is dead here, but its pages stay allocated, since the journal still
  // gives them to it; the next start frees them (docs/recovery.md).
  if (journal_ && !lease.dead_) {
    if (absl::Status s = journal_->LeaseEnded(lease.id); !s.ok()) {
      lease.dead_ = true;
      LogError("lease_end_not_journaled",
               {{"lease", lease.id}, {"pages_kept", lease.pages_held_}, {"error", std::string(s.message())}});
      return absl::UnavailableError(absl::StrCat(s.message(), "; lease ", lease.id,
                                                 " is ended but keeps its pages until the journal can record it"));
    }
  }
  lease.dead_ = true;
  std::array<uint64_t, MAX_NR_ZONES> freed{};
  auto free_block = [&](uint32_t head, unsigned order) {
    const ZoneType zone = zone_of(head);
    if (zone == ZONE_HIGHMEM) DropKmaps(head, order, lease.owner());
    const uint64_t pfn = pfn_of(head);
    // The trusted free: the book holds this block for this owner and lease.mu_ keeps every other
    // free of it out (PHYSMEM_DCHECK builds still check and abort on a broken book).
    if (absl::Status s = pa_->__free_pages_trusted(&pa_->mem_map().page(head), order, lease.owner()); !s.ok()) {
      // Only a kmap()ed highmem page is refused (DropKmaps() above dropped ours). Leave the block
      // where it is (leaked, as the kernel leaks a bad page) rather than free something in use.
      LogError("lease_free_failed", {{"lease", lease.id}, {"pfn", pfn}, {"error", s.ToString()}});
      return;
    }
    freed[zone] += uint64_t{1} << order;
  };
  ForEachInIndexOrder(lease.order0_, [&](uint32_t head) { free_block(head, 0); });
  for (const auto& [head, order] : lease.higher_) free_block(head, order);
  uint64_t pages = 0;
  for (int z = 0; z < MAX_NR_ZONES; ++z) {
    pages += freed[z];
    // One uncharge per zone, not per block: a 2 M-page lease ends in one pass over its book.
    if (lease.usage_ != nullptr && freed[z] != 0) identity_limits_->Uncharge(*lease.usage_, ZoneType(z), freed[z]);
  }
  absl::flat_hash_set<uint32_t>().swap(lease.order0_);  // give the memory back, not just clear
  absl::flat_hash_map<uint32_t, uint8_t>().swap(lease.higher_);
  lease.keys_.reset();
  lease.pages_held_ = 0;
  return pages;
}

void Lessor::ForEachInIndexOrder(const absl::flat_hash_set<uint32_t>& heads,
                                 absl::FunctionRef<void(uint32_t)> fn) const {
  // A hash set's order is random: freeing a big lease in it walks the page metadata (and each
  // buddy) with a cache and TLB miss per block, ~600 ns a page. In index order the frees walk it
  // sequentially and merge with buddies just touched. A lease holding a good part of the machine
  // is ordered by a bitmap over the mem_map (one bit a page, 256 KiB for 8 GiB of 4 KiB pages),
  // a smaller one by sorting.
  const uint32_t nr = pa_->mem_map().nr_pages();
  if (heads.size() >= nr / 64) {
    std::vector<uint64_t> bits((size_t{nr} + 63) / 64);
    for (uint32_t h : heads) bits[h >> 6] |= uint64_t{1} << (h & 63);
    for (size_t w = 0; w < bits.size(); ++w) {
      for (uint64_t word = bits[w]; word != 0; word &= word - 1) {
        fn(static_cast<uint32_t>(w * 64 + __builtin_ctzll(word)));
      }
    }
    return;
  }
  std::vector<uint32_t> sorted(heads.begin(), heads.end());
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t h : sorted) fn(h);
}

void Lessor::IndexName(const Lease& lease) {
  if (!limits_.unique_names || lease.name.empty()) return;
  names_[std::pair(lease.identity, lease.name)].push_back(lease.id);
}

void Lessor::UnindexName(const Lease& lease) {
  if (!limits_.unique_names || lease.name.empty()) return;
  auto it = names_.find(std::pair(lease.identity, lease.name));
  if (it == names_.end()) return;
  std::erase(it->second, lease.id);
  if (it->second.empty()) names_.erase(it);
}

void Lessor::DropKmaps(uint32_t head, unsigned order, uint32_t owner) {
  for (uint32_t idx = head; idx < head + (uint32_t{1} << order); ++idx) {
    Page* page = &pa_->mem_map().page(idx);
    // Each kunmap drops one kmap(); one that fails (a racing Kunmap RPC got there first) does not.
    while (pa_->page_mapcount(page) > 0) {
      if (!pa_->kunmap(page, owner).ok()) break;
    }
  }
}

std::vector<std::shared_ptr<Lease>> Lessor::List(const std::string& identity) const {
  std::vector<std::shared_ptr<Lease>> out;
  {
    MutexLock l(&mu_);
    for (const auto& [id, lease] : leases_) {
      if (lease->identity == identity) out.push_back(lease);
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  return out;
}

std::vector<std::shared_ptr<Lease>> Lessor::All() const {
  std::vector<std::shared_ptr<Lease>> out;
  MutexLock l(&mu_);
  for (const auto& [id, lease] : leases_) out.push_back(lease);
  return out;
}

size_t Lessor::size() const {
  MutexLock l(&mu_);
  return leases_.size();
}

LeaseStatus Lessor::Describe(Lease& lease) const {
  LeaseStatus s;
  s.remaining_ms = std::max<int64_t>(0, (lease.deadline() - clock_->Now()) / 1000000);
  MutexLock l(&lease.mu_);
  s.pages_held = lease.pages_held_;
  for (uint32_t head : lease.order0_) ++s.holdings[{zone_of(head), 0}];
  for (const auto& [head, order] : lease.higher_) ++s.holdings[{zone_of(head), order}];
  return s;
}

void Lessor::ForEachLive(absl::FunctionRef<void(const Lease&, uint64_t)> fn) const {
  for (const std::shared_ptr<Lease>& lease : All()) {
    uint64_t pages;
    {
      MutexLock l(&lease->mu_);
      if (lease->dead_) continue;
      pages = lease->pages_held_;
    }
    fn(*lease, pages);
  }
}

// ---- The book ----

void Lessor::AddBlock(Lease& lease, uint32_t head, unsigned order, const std::string& key,
                      const Lease::KeyedRequest* request) {
  if (order == 0) {
    lease.order0_.insert(head);
  } else {
    lease.higher_.emplace(head, static_cast<uint8_t>(order));
  }
  lease.pages_held_ += uint64_t{1} << order;
  if (key.empty()) return;
  if (lease.keys_ == nullptr) lease.keys_ = std::make_unique<Lease::Keys>();
  lease.keys_->block_of[key] = head;
  lease.keys_->key_of[head] = key;
  if (request != nullptr) lease.keys_->request_of[head] = *request;
}

std::string Lessor::RetryDifference(const Lease& lease, uint32_t head, unsigned order, gfp_t gfp,
                                    const char* form) const {
  std::vector<std::string> diffs;
  const unsigned b = *BlockOrder(lease, head);
  if (b != order) diffs.push_back(absl::StrFormat("order %d (it was %d)", order, b));
  if (auto r = lease.keys_->request_of.find(head); r != lease.keys_->request_of.end()) {
    if (r->second.gfp != gfp) {
      diffs.push_back(absl::StrFormat("GFP mask %s (it was %s)", FormatGfp(gfp), FormatGfp(r->second.gfp)));
    }
    if (std::strcmp(r->second.form, form) != 0) {
      diffs.push_back(absl::StrFormat("call %s (it was %s)", form, r->second.form));
    }
  }
  return absl::StrJoin(diffs, ", ");
}

std::optional<uint32_t> Lessor::KeyedBlock(const Lease& lease, const std::string& key) const {
  if (key.empty() || lease.keys_ == nullptr) return std::nullopt;
  auto it = lease.keys_->block_of.find(key);
  if (it == lease.keys_->block_of.end()) return std::nullopt;
  return it->second;
}

std::optional<unsigned> Lessor::BlockOrder(const Lease& lease, uint32_t head) const {
  if (lease.order0_.contains(head)) return 0;
  if (auto it = lease.higher_.find(head); it != lease.higher_.end()) return it->second;
  return std::nullopt;
}

void Lessor::RemoveBlock(Lease& lease, uint32_t head, unsigned order, ZoneType zone, ZonePages* uncharge_later) {
  const size_t erased = order == 0 ? lease.order0_.erase(head) : lease.higher_.erase(head);
  if (erased == 0) return;  // not in the book (the allocator's free said it was ours: a bug CheckInvariants names)
  lease.pages_held_ -= uint64_t{1} << order;
  if (uncharge_later != nullptr) {
    (*uncharge_later)[zone] += uint64_t{1} << order;
  } else if (lease.usage_ != nullptr) {
    identity_limits_->Uncharge(*lease.usage_, zone, uint64_t{1} << order);
  }
  if (lease.keys_ == nullptr) return;
  if (auto k = lease.keys_->key_of.find(head); k != lease.keys_->key_of.end()) {
    lease.keys_->block_of.erase(k->second);
    lease.keys_->key_of.erase(k);
    lease.keys_->request_of.erase(head);
  }
}

void Lessor::GiveBack(Lease& lease, Page* page, unsigned order) {
  const ZoneType zone = pa_->page_zonenum(page);
  // Trusted: allocated by this call for this owner, never acknowledged, and lease.mu_ is held.
  if (absl::Status s = pa_->__free_pages_trusted(page, order, lease.owner()); !s.ok()) {
    LogError("lease_give_back_failed", {{"lease", lease.id}, {"error", s.ToString()}});
    return;
  }
  if (lease.usage_ != nullptr) identity_limits_->Uncharge(*lease.usage_, zone, uint64_t{1} << order);
}

std::optional<absl::StatusOr<Page*>> Lessor::AllocCharged(Lease& lease, gfp_t gfp, unsigned order) {
  IdentityLimits* il = identity_limits_;
  if (lease.usage_ == nullptr || il == nullptr) {
    Page* page = pa_->alloc_pages(gfp, order, lease.owner());
    if (page == nullptr) return std::nullopt;
    return page;
  }
  IdentityUsage& u = *lease.usage_;
  const uint64_t n = uint64_t{1} << order;
  if (absl::Status s = il->ChargeTotal(u, n); !s.ok()) return s;
  const uint32_t zonelist = il->ZonelistZones(gfp);
  // A concurrent call of the same identity (another of its leases) may take the room in the
  // zone we landed in between AllowedZones() and ChargeZone(): then the block goes back and we
  // look again, with that zone now out of the mask. A few rounds settle it.
  for (int round = 0; round < 8; ++round) {
    const uint32_t allowed = il->AllowedZones(u, n) & zonelist;
    if (allowed == 0) {
      il->UnchargeTotal(u, n);
      return absl::ResourceExhaustedError(il->ExplainZoneRefusal(u, gfp, n));
    }
    Page* page = pa_->alloc_pages(gfp, order, lease.owner(), allowed);
    if (page == nullptr) {
      // No memory in the zones the identity may still use: like a lack of memory anywhere, the
      // caller may wait for frees there (the timeout message names the limits that narrowed it).
      il->UnchargeTotal(u, n);
      return std::nullopt;
    }
    if (il->ChargeZone(u, pa_->page_zonenum(page), n).ok()) return page;
    // Trusted: allocated just now for this owner under lease.mu_, so no other free can reach it.
    if (absl::Status s = pa_->__free_pages_trusted(page, order, lease.owner()); !s.ok()) {
      LogError("identity_limit_undo_failed", {{"lease", lease.id}, {"error", s.ToString()}});
    }
  }
  il->UnchargeTotal(u, n);
  return absl::ResourceExhaustedError(il->ExplainZoneRefusal(u, gfp, n) + " (concurrent allocations took the room)");
}

unsigned Lessor::AllocBulkCharged(Lease& lease, gfp_t gfp, unsigned want, Page** pages, std::string* why_short) {
  IdentityLimits* il = identity_limits_;
  if (lease.usage_ == nullptr || il == nullptr) return pa_->AllocPagesBulkFill(gfp, want, pages, lease.owner());
  IdentityUsage& u = *lease.usage_;
  const uint32_t zonelist = il->ZonelistZones(gfp);
  unsigned got = 0;
  // In chunks no larger than the smallest room left in any zone the chunk may use, so that no
  // page of a chunk can break a zone cap (a concurrent call of the identity may still take
  // room: such a page goes back).
  while (got < want) {
    const uint32_t allowed = il->AllowedZones(u, 1) & zonelist;
    if (allowed == 0) {
      *why_short = il->ExplainZoneRefusal(u, gfp, 1);
      break;
    }
    uint64_t chunk = want - got;
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      if (!(allowed & (1u << z))) continue;
      const uint64_t held = u.zone_pages[z].load(std::memory_order_relaxed);
      const uint64_t cap = il->zone_cap(static_cast<ZoneType>(z));
      chunk = std::min(chunk, cap > held ? cap - held : 0);
    }
    if (il->max_pages() != 0) {
      const uint64_t held = u.pages.load(std::memory_order_relaxed);
      chunk = std::min(chunk, il->max_pages() > held ? il->max_pages() - held : 0);
    }
    if (chunk == 0) chunk = 1;  // let ChargeTotal name the limit
    if (absl::Status s = il->ChargeTotal(u, chunk); !s.ok()) {
      *why_short = std::string(s.message());
      break;
    }
    const unsigned n = pa_->AllocPagesBulkFill(gfp, static_cast<unsigned>(chunk), pages + got, lease.owner(), allowed);
    // One charge per zone for the whole chunk (not an atomic a page: issue #15 part 1's profile);
    // only a zone whose charge fails is charged page by page, and its extra pages go back.
    ZonePages in_zone{};
    for (unsigned i = 0; i < n; ++i) ++in_zone[pa_->page_zonenum(pages[got + i])];
    std::array<bool, MAX_NR_ZONES> charged{};
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      charged[z] = in_zone[z] != 0 && il->ChargeZone(u, static_cast<ZoneType>(z), in_zone[z]).ok();
    }
    unsigned kept = 0;
    for (unsigned i = 0; i < n; ++i) {
      Page*& p = pages[got + i];
      const ZoneType zone = pa_->page_zonenum(p);
      if (charged[zone] || il->ChargeZone(u, zone, 1).ok()) {
        pages[got + kept++] = p;
        continue;
      }
      (void)pa_->FreePfn(pa_->page_to_pfn(p), 0, lease.owner());
    }
    for (unsigned i = kept; i < n; ++i) pages[got + i] = nullptr;
    il->UnchargeTotal(u, chunk - kept);
    got += kept;
    if (n < chunk) {
      if (allowed != zonelist) *why_short = il->ExplainZoneRefusal(u, gfp, 1) + "; the zones left to it are full";
      break;
    }
  }
  return got;
}

std::optional<absl::Status> Lessor::Attach(Lease& lease, gfp_t gfp, unsigned order, const std::string& key,
                                           AttachedBlock* out, const char* form) {
  if (order > pa_->target().max_page_order) {
    return absl::InvalidArgumentError(
        absl::StrFormat("order %d exceeds MAX_PAGE_ORDER %d", order, pa_->target().max_page_order));
  }
  if (key.size() > limits_.max_key_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("key is %d bytes; at most %d allowed", key.size(), limits_.max_key_bytes));
  }
  StopMachine::Operation op = stop_machine_.Enter();  // before the lease's lock
  MutexLock l(&lease.mu_);
  if (lease.dead_ || Expired(lease)) return Gone(lease);
  if (const std::optional<uint32_t> keyed = KeyedBlock(lease, key)) {
    // A retry returns the block only if it is the same request: otherwise the caller would take
    // a block it did not ask for (a GFP_DMA retry given a Normal page) for its own.
    if (const std::string diff = RetryDifference(lease, *keyed, order, gfp, form); !diff.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "key %s already names a block of lease %d made by a different request: this one asks %s; a retry must "
          "repeat the request, and a new request needs a new key",
          QuoteInput(key), lease.id, diff));
    }
    const unsigned b = *BlockOrder(lease, *keyed);
    *out = AttachedBlock{&pa_->mem_map().page(*keyed), pfn_of(*keyed), b, zone_of(*keyed), key, true};
    return absl::OkStatus();
  }
  const uint64_t n = uint64_t{1} << order;
  if (lease.pages_held_ + n > lease.page_quota) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("lease %d page quota: it holds %d of its %d pages and asked for %d more", lease.id,
                        lease.pages_held_, lease.page_quota, n));
  }
  std::optional<absl::StatusOr<Page*>> got = AllocCharged(lease, gfp, order);
  if (!got) return std::nullopt;
  if (!got->ok()) return got->status();
  Page* page = **got;
  const uint64_t pfn = pa_->page_to_pfn(page);
  if (journal_) {  // before the reply: see server/journal.cc
    const JournalEntry e{pfn, static_cast<uint8_t>(order), pa_->AllocatedBlockAt(pfn)->compound, key};
    if (absl::Status s = journal_->Allocated(lease.id, {&e, 1}); !s.ok()) {
      GiveBack(lease, page, order);  // never acknowledged: as if it had not been allocated
      return s;
    }
  }
  // Before the block is in the book (and its pfn in any reply): another identity's bytes go.
  tenancy_.Claim(pa_->mem_map().index_of(page), order, lease.tenant_, (gfp & __GFP_ZERO) != 0);
  const Lease::KeyedRequest request{gfp, form};
  AddBlock(lease, pa_->mem_map().index_of(page), order, key, &request);
  *out = AttachedBlock{page, pfn, order, pa_->page_zonenum(page), key, false};
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Page*>> Lessor::AttachBulk(Lease& lease, gfp_t gfp, unsigned count) {
  StopMachine::Operation op = stop_machine_.Enter();  // before the lease's lock
  MutexLock guard(&lease.mu_);
  if (lease.dead_) return Gone(lease);
  const uint64_t room = lease.page_quota - lease.pages_held_;
  if (room == 0) {
    return absl::ResourceExhaustedError(absl::StrFormat("lease %d page quota: it already holds all %d of its pages",
                                                        lease.id, lease.page_quota));
  }
  const unsigned want = static_cast<unsigned>(std::min<uint64_t>(count, room));
  std::vector<Page*> pages(want, nullptr);
  std::string why_short;
  const unsigned got = AllocBulkCharged(lease, gfp, want, pages.data(), &why_short);
  if (got == 0) {
    if (!why_short.empty()) return absl::ResourceExhaustedError(why_short);
    Refusal why = pa_->AllocFailure(gfp, 0);  // the reason; the bulk call's own wording
    why.detail = absl::StrFormat("no free pages for %s: %s", FormatGfp(gfp), pa_->ExplainAllocFailure(gfp));
    return RefusalStatus(why);
  }
  pages.resize(got);
  if (journal_) {
    // One record for the call: the pages as runs of consecutive pfns, in the order given.
    if (absl::Status s = journal_->AllocatedRuns(lease.id, RunsOf<JournalRun>(*pa_, pages)); !s.ok()) {
      for (Page* p : pages) GiveBack(lease, p, 0);
      return s;
    }
  }
  lease.order0_.reserve(lease.order0_.size() + got);
  for (Page* p : pages) {
    const uint32_t idx = pa_->mem_map().index_of(p);
    tenancy_.Claim(idx, 0, lease.tenant_, (gfp & __GFP_ZERO) != 0);
    lease.order0_.insert(idx);
  }
  lease.pages_held_ += got;
  return pages;
}

absl::StatusOr<uint64_t> Lessor::Detach(Lease& lease, uint64_t pfn, unsigned order, const std::string& key) {
  StopMachine::Operation op = stop_machine_.Enter();  // before the lease's lock
  MutexLock l(&lease.mu_);
  return DetachLocked(lease, pfn, order, key);
}

uint64_t Lessor::DetachBulk(Lease& lease, std::span<const uint64_t> pfns, std::span<const uint32_t> orders,
                            absl::FunctionRef<void(size_t, const absl::Status&)> on_refused) {
  uint64_t freed = 0;
  StopMachine::Operation op = stop_machine_.Enter();  // once for every block
  MutexLock l(&lease.mu_);
  // The identity's counters come down once per zone, after the loop, instead of two atomic
  // subtractions a page (issue #15 part 1's profile): meanwhile they only overstate what the
  // identity holds, which can refuse a concurrent allocation of its other leases a moment early,
  // never admit one too many; and Census() cannot look before the Operation ends.
  ZonePages uncharge{};
  for (size_t i = 0; i < pfns.size(); ++i) {
    absl::StatusOr<uint64_t> n = DetachLocked(lease, pfns[i], orders.empty() ? 0 : orders[i], "", &uncharge);
    if (n.ok()) {
      freed += *n;
    } else {
      on_refused(i, n.status());
    }
  }
  if (lease.usage_ != nullptr) {
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      if (uncharge[z] != 0) identity_limits_->Uncharge(*lease.usage_, static_cast<ZoneType>(z), uncharge[z]);
    }
  }
  return freed;
}

absl::Status Lessor::TakeRunsFromBook(Lease& lease, std::span<const PfnRun> runs, std::vector<uint32_t>* taken,
                                      ZonePages* in_zone) {
  const MemMap& mm = pa_->mem_map();
  // Why pfn (of run i) is not an order-0 block of the lease's, all its pages still in the book.
  auto refuse = [&](const absl::Status& s, size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu_) {
    for (const uint32_t idx : *taken) lease.order0_.insert(idx);
    taken->clear();
    return RunRefusal(s, i);
  };
  for (size_t i = 0; i < runs.size(); ++i) {
    const Segment* seg = nullptr;  // the mem_map segment of the run's last page: one lookup a segment
    for (uint64_t pfn = runs[i].pfn; pfn - runs[i].pfn < runs[i].count; ++pfn) {
      if (seg == nullptr || !seg->contains_pfn(pfn)) {
        const std::optional<uint32_t> idx = mm.pfn_to_index(pfn);
        if (!idx) {
          return refuse(RefusalStatus({RefusalReason::kPfnOutOfRange, pfn,
                                       absl::StrFormat("pfn %#x is not RAM (in a hole, or beyond the end of RAM)", pfn)}),
                        i);
        }
        seg = &mm.segment_of_index(*idx);
      }
      const uint32_t idx = seg->index_of(pfn);
      // One probe a page: the erase is the membership test (CheckRunShapes refused overlaps, so
      // no page comes twice).
      if (lease.order0_.erase(idx) != 0) {
        const ZoneType zone = zone_of(idx);
        // kmap() takes lease.mu_ too, so a page that is not mapped now stays unmapped until the
        // free: the allocator's own kmap check cannot refuse it halfway through the call.
        if (zone == ZONE_HIGHMEM && pa_->page_mapcount(&mm.page(idx)) != 0) [[unlikely]] {
          lease.order0_.insert(idx);
          return refuse(RefusalStatus({RefusalReason::kStillMapped, pfn,
                                       absl::StrFormat("pfn %#x is still kmap()ed; kunmap it before freeing", pfn)}),
                        i);
        }
        taken->push_back(idx);
        ++(*in_zone)[zone];
        continue;
      }
      // Not an order-0 block of the lease's: the allocator says why (free, another owner), or
      // the page is part of a larger block of this lease.
      RefusalOr<Page*> head = pa_->TryOwnedBlockContaining(pfn, lease.owner());
      if (!head.ok()) return refuse(RefusalStatus(head.refusal()), i);
      const uint32_t head_idx = mm.index_of(*head);
      if (const std::optional<unsigned> order = BlockOrder(lease, head_idx)) {
        return refuse(absl::InvalidArgumentError(absl::StrFormat(
                          "pfn %#x is in the order-%d block at pfn %#x of lease %d; runs free order-0 pages, "
                          "free that block by pfn and order",
                          pfn, *order, pfn_of(head_idx), lease.id)),
                      i);
      }
      return refuse(RefusalStatus({RefusalReason::kWrongOwner, pfn, "another lease's block"}), i);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Lessor::DetachRuns(Lease& lease, std::span<const PfnRun> runs,
                                            absl::FunctionRef<void(uint64_t, const absl::Status&)> on_refused) {
  if (absl::Status s = CheckRunShapes(runs); !s.ok()) return s;
  uint64_t total = 0;
  for (const PfnRun& r : runs) total += r.count;  // CheckRunShapes: no overflow
  StopMachine::Operation op = stop_machine_.Enter();  // before the lease's lock
  MutexLock l(&lease.mu_);
  if (lease.dead_) return Gone(lease);
  std::vector<uint32_t> taken;
  taken.reserve(std::min<uint64_t>(total, lease.order0_.size()));
  ZonePages in_zone{};
  if (absl::Status s = TakeRunsFromBook(lease, runs, &taken, &in_zone); !s.ok()) return s;
  // Every page is an order-0 block the lease held, out of its book now, not kmap()ed, and
  // lease.mu_ has been held since: no other free can reach it, so it takes the trusted free
  // (PHYSMEM_DCHECK builds still check). With a journal, one record for the whole call goes first
  // (server/journal.cc's rule for frees: after every check, before any page can be reused); if
  // the journal refuses it, every page goes back into the book, allocated, each passed to
  // on_refused.
  if (journal_ != nullptr) {
    std::vector<JournalRun> jr;
    jr.reserve(runs.size());
    // Every page was in the book, so a run is shorter than the mem_map (< 2^32 pages).
    for (const PfnRun& r : runs) jr.push_back({r.pfn, static_cast<uint32_t>(r.count)});
    if (absl::Status s = journal_->FreedRuns(lease.id, jr); !s.ok()) {
      for (const uint32_t idx : taken) lease.order0_.insert(idx);
      for (const PfnRun& r : runs) {
        for (uint64_t pfn = r.pfn; pfn - r.pfn < r.count; ++pfn) on_refused(pfn, s);
      }
      return 0;
    }
  }
  const MemMap& mm = pa_->mem_map();
  uint64_t freed = 0;
  for (const uint32_t idx : taken) {
    if (const absl::Status s = pa_->__free_pages_trusted(&mm.page(idx), 0, lease.owner()); !s.ok()) [[unlikely]] {
      // Cannot happen to a page TakeRunsFromBook took (a highmem page's checked free refuses only
      // a kmap, which lease.mu_ keeps out); if it did, the page stays allocated, in the book.
      const uint64_t pfn = mm.index_to_pfn(idx);
      LogError("lease_run_free_failed", {{"lease", lease.id}, {"pfn", pfn}, {"error", s.ToString()}});
      lease.order0_.insert(idx);
      --in_zone[zone_of(idx)];
      // The allocator's words may name owners; the log has them, the caller gets the pfn.
      on_refused(pfn, absl::InternalError(absl::StrFormat(
                          "pfn %#x could not be freed although the lease held it (see lease_run_free_failed)", pfn)));
      continue;
    }
    ++freed;
  }
  lease.pages_held_ -= freed;
  if (lease.keys_ != nullptr) {  // rare: keyed order-0 blocks freed by run lose their keys
    for (const uint32_t idx : taken) {
      if (lease.order0_.contains(idx)) continue;  // the free above failed: it keeps its key
      if (auto k = lease.keys_->key_of.find(idx); k != lease.keys_->key_of.end()) {
        lease.keys_->block_of.erase(k->second);
        lease.keys_->key_of.erase(k);
        lease.keys_->request_of.erase(idx);
      }
    }
  }
  // As in DetachBulk: the identity's counters come down once per zone.
  if (lease.usage_ != nullptr) {
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      if (in_zone[z] != 0) identity_limits_->Uncharge(*lease.usage_, static_cast<ZoneType>(z), in_zone[z]);
    }
  }
  return freed;
}

absl::StatusOr<uint64_t> Lessor::DetachLocked(Lease& lease, uint64_t pfn, unsigned order, const std::string& key,
                                              ZonePages* uncharge_later) {
  if (lease.dead_) return Gone(lease);
  if (key.size() > limits_.max_key_bytes) {  // as Attach checks it: every call that takes a key
    return absl::InvalidArgumentError(
        absl::StrFormat("key is %d bytes; at most %d allowed", key.size(), limits_.max_key_bytes));
  }
  if (!key.empty()) {
    const std::optional<uint32_t> keyed = KeyedBlock(lease, key);
    if (!keyed) {
      return absl::NotFoundError(absl::StrFormat("no allocation with key %s in lease %d", QuoteInput(key), lease.id));
    }
    const unsigned key_order = *BlockOrder(lease, *keyed);
    if (order != 0 && order != key_order) {  // the allocator would say the same of the block
      return RefusalStatus({RefusalReason::kWrongOrder, pfn_of(*keyed),
                            absl::StrFormat("key %s names an order-%d block, not order %d", QuoteInput(key),
                                            key_order, order)});
    }
    // pfn 0 is proto3's unset; any other pfn must be the key's block (a client that names two
    // blocks has a bug, and which one it meant is not ours to guess).
    if (pfn != 0 && pfn != pfn_of(*keyed)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "key %s names the block at pfn %#x, not pfn %#x; give the key or the pfn", QuoteInput(key),
          pfn_of(*keyed), pfn));
    }
    pfn = pfn_of(*keyed);
    order = key_order;
  }
  // The allocator checks everything (range, alignment, allocated, order, owner) and changes
  // nothing when it refuses; the book follows only a successful free. With a journal, the free
  // is recorded once it is certain and before the block can be reused; a free the journal cannot
  // record is refused with its status, the block still allocated and in the book.
  std::optional<Refusal> refused =
      journal_ == nullptr
          ? pa_->TryFreePfn(pfn, order, lease.owner())
          : pa_->TryFreePfn(pfn, order, lease.owner(), [this, &lease, pfn] { return journal_->Freed(lease.id, pfn); });
  if (refused) return RefusalStatus(*refused);
  const uint32_t head = *pa_->mem_map().pfn_to_index(pfn);  // the free succeeded: pfn is RAM
  RemoveBlock(lease, head, order, zone_of(head), uncharge_later);
  return uint64_t{1} << order;
}

absl::StatusOr<uint64_t> Lessor::Kmap(Lease& lease, uint64_t pfn) {
  RefusalOr<Page*> page = pa_->TryPfnToPage(pfn);
  if (!page.ok()) return RefusalStatus(page.refusal());
  // Under the lease's lock, so that a lease being ended (which drops its kmaps, then frees its
  // blocks, under the same lock) cannot gain a mapping that would keep a block from being freed.
  MutexLock l(&lease.mu_);
  if (lease.dead_) return Gone(lease);
  RefusalOr<uint64_t> v = pa_->TryKmap(*page, lease.owner());
  if (!v.ok()) return RefusalStatus(v.refusal());
  return *v;
}

absl::Status Lessor::Kunmap(Lease& lease, uint64_t pfn) {
  RefusalOr<Page*> page = pa_->TryPfnToPage(pfn);
  if (!page.ok()) return RefusalStatus(page.refusal());
  MutexLock l(&lease.mu_);  // as Kmap: the lease's end drops kmaps under it
  if (lease.dead_) return Gone(lease);
  // The book first (as for every call that names a pfn of the lease), then the allocator's
  // kunmap(), which runs kmap()'s checks on every page, lowmem included.
  if (absl::StatusOr<BookedBlock> b = BookedBlockContaining(lease, pfn, "kunmap"); !b.ok()) return b.status();
  if (std::optional<Refusal> r = pa_->TryKunmap(*page, lease.owner())) return RefusalStatus(*r);
  return absl::OkStatus();
}

absl::StatusOr<Lessor::BookedBlock> Lessor::BookedBlockContaining(const Lease& lease, uint64_t pfn,
                                                                  std::string_view call) const {
  RefusalOr<Page*> head = pa_->TryOwnedBlockContaining(pfn, lease.owner());
  if (!head.ok()) {
    Refusal why = head.refusal();
    if (why.reason == RefusalReason::kNotAllocated && !call.empty()) why.detail = std::string(call) + ": " + why.detail;
    return RefusalStatus(why);  // kWrongOwner is worded without the owners there
  }
  // The book, not only the allocator's owner field, decides: with lease.mu_ held the book cannot
  // change, so a block found in it stays the lease's until the caller lets go.
  const std::optional<unsigned> order = BlockOrder(lease, pa_->mem_map().index_of(*head));
  if (!order) {
    return RefusalStatus({RefusalReason::kWrongOwner, pfn, absl::StrFormat("pfn %#x is in another lease's book", pfn)});
  }
  return BookedBlock{*head, *order};
}

absl::StatusOr<uint64_t> Lessor::PageAddress(Lease& lease, uint64_t pfn) {
  RefusalOr<Page*> page = pa_->TryPfnToPage(pfn);
  if (!page.ok()) return RefusalStatus(page.refusal());
  MutexLock l(&lease.mu_);
  if (lease.dead_) return Gone(lease);
  if (absl::StatusOr<BookedBlock> b = BookedBlockContaining(lease, pfn, ""); !b.ok()) return b.status();
  return pa_->page_address(*page);
}

absl::Status Lessor::AccessBytes(Lease& lease, uint64_t pfn, uint64_t offset, uint64_t length, uint64_t max_length,
                                 absl::FunctionRef<void(std::byte*)> fn) {
  MutexLock l(&lease.mu_);  // frees take it too: the block stays ours while fn copies
  if (lease.dead_) return Gone(lease);
  if (length == 0 || length > max_length) {
    return absl::InvalidArgumentError(
        absl::StrFormat("length %d is outside [1, %d] (--max_page_io_bytes)", length, max_length));
  }
  absl::StatusOr<BookedBlock> block = BookedBlockContaining(lease, pfn, "");
  if (!block.ok()) return block.status();
  Page* head = block->head;
  const std::optional<unsigned> order = block->order;
  const uint64_t head_pfn = pa_->page_to_pfn(head);
  const unsigned shift = pa_->target().page_shift;
  const uint64_t block_bytes = uint64_t{1} << (*order + shift);
  const uint64_t start = ((pfn - head_pfn) << shift) + offset;  // from the block's first byte
  if (offset > block_bytes || start > block_bytes || length > block_bytes - start) {
    return absl::OutOfRangeError(absl::StrFormat(
        "bytes [%d, %d) from pfn %#x run past the end of its order-%d block (pfns %#x..%#x, %d bytes)", offset,
        offset + length, pfn, *order, head_pfn, head_pfn + (uint64_t{1} << *order) - 1, block_bytes));
  }
  // A block never spans a hole, so its pages are consecutive in the arena too.
  fn(pa_->page_host_address(head) + start);
  return absl::OkStatus();
}

Refusal Lessor::NoMemory(const Lease& lease, gfp_t gfp, unsigned order) const {
  const uint64_t n = uint64_t{1} << order;
  if (identity_limits_ == nullptr || lease.usage_ == nullptr) return pa_->AllocFailure(gfp, order);
  // The zones the identity's limits leave it (the allowed_zones AllocCharged passed), and say so
  // when they took zones out of the zonelist.
  const uint32_t zonelist = identity_limits_->ZonelistZones(gfp);
  const uint32_t allowed = identity_limits_->AllowedZones(*lease.usage_, n) & zonelist;
  Refusal why = pa_->AllocFailure(gfp, order, allowed);
  if (allowed != zonelist) {
    absl::StrAppend(&why.detail, "; ", identity_limits_->ExplainZoneRefusal(*lease.usage_, gfp, n));
  }
  return why;
}

// ---- Expiry ----

uint64_t Lessor::ExpireDue() {
  const int64_t now = clock_->Now();
  std::vector<std::shared_ptr<Lease>> due;
  StopMachine::Operation op = stop_machine_.Enter();
  {
    MutexLock l(&mu_);
    // Only the leases due: O(log n) each, nothing for the rest.
    while (Lease* top = heap_.top()) {
      if (top->deadline() > now) break;
      due.push_back(leases_.at(top->id));
      UnlinkLocked(*top);
    }
  }
  uint64_t pages = 0;
  for (const auto& lease : due) {
    const uint64_t freed = End(*lease).value_or(0);
    pages += freed;
    counters_.expired.fetch_add(1, std::memory_order_relaxed);
    // late_ms: how long after its deadline the lease was ended (the reaper's wake-up latency);
    // tests/server/lease_expiry_test.cc holds it to its bound.
    LogInfo("lease_expired", {{"lease", lease->id}, {"identity", lease->identity}, {"name", lease->name},
                              {"pages", freed}, {"late_ms", (now - lease->deadline()) / 1000000}});
  }
  op.unlock();
  counters_.pages_reclaimed.fetch_add(pages, std::memory_order_relaxed);
  if (pages != 0 && on_pages_freed_) on_pages_freed_();
  return pages;
}

uint64_t Lessor::RevokeAll() {
  std::vector<std::shared_ptr<Lease>> all;
  StopMachine::Operation op = stop_machine_.Enter();
  {
    MutexLock l(&mu_);
    for (auto& [id, lease] : leases_) all.push_back(lease);
    for (auto& lease : all) UnlinkLocked(*lease);
  }
  uint64_t pages = 0;
  for (const auto& lease : all) pages += End(*lease).value_or(0);
  return pages;
}

void Lessor::StartReaper() {
  reaper_ = std::thread([this] { ReaperLoop(); });
}

void Lessor::StopReaper() {
  {
    MutexLock l(&mu_);
    reaper_stop_ = true;
  }
  reaper_cv_.SignalAll();
  if (reaper_.joinable()) reaper_.join();
}

void Lessor::ReaperLoop() {
  // Sleeps until the earliest deadline (Grant wakes it for an earlier one; a renewal only moves a
  // deadline later, so at worst the reaper wakes once for nothing). A clock that can jump (tests)
  // bounds the nap with MaxNapNs(), so a jump is seen soon.
  const int64_t max_nap = clock_->MaxNapNs();
  mu_.Lock();
  while (!reaper_stop_) {
    const Lease* top = heap_.top();
    int64_t nap = top == nullptr ? -1 : std::max<int64_t>(0, top->deadline() - clock_->Now());
    if (max_nap > 0 && (nap < 0 || nap > max_nap)) nap = max_nap;
    if (nap < 0) {
      reaper_cv_.Wait(&mu_);
    } else if (nap > 0) {
      reaper_cv_.WaitFor(&mu_, std::chrono::nanoseconds(nap));
    }
    if (reaper_stop_) break;
    reaper_wakeups_.fetch_add(1, std::memory_order_relaxed);
    const Lease* first = heap_.top();
    if (first == nullptr || first->deadline() > clock_->Now()) continue;
    mu_.Unlock();
    ExpireDue();
    mu_.Lock();
  }
  mu_.Unlock();
}

// ---- The invariant ----

absl::Status Lessor::CheckLeaseLocked(
    const Lease& lease, absl::flat_hash_map<const IdentityUsage*, std::array<uint64_t, MAX_NR_ZONES>>* charged,
    uint64_t* blocks) const {
  uint64_t pages = 0;
  auto check_block = [&](uint32_t head, unsigned order) -> absl::Status {
    const uint64_t pfn = pfn_of(head);
    const std::optional<PageAllocator::BlockInfo> b = pa_->AllocatedBlockAt(pfn);
    if (!b || b->head != &pa_->mem_map().page(head) || b->owner != lease.owner() || b->order != order) {
      return absl::InternalError(absl::StrFormat(
          "lease %d's book has an order-%d block at pfn %#x that the allocator does not give it (owner %d, order %d)",
          lease.id, order, pfn, b ? b->owner : kNoOwner, b ? b->order : 0));
    }
    pages += uint64_t{1} << order;
    ++*blocks;
    if (lease.usage_ != nullptr) (*charged)[lease.usage_.get()][zone_of(head)] += uint64_t{1} << order;
    return absl::OkStatus();
  };
  for (uint32_t head : lease.order0_) {
    if (absl::Status s = check_block(head, 0); !s.ok()) return s;
  }
  for (const auto& [head, order] : lease.higher_) {
    if (order == 0) return absl::InternalError(absl::StrFormat("lease %d books an order-0 block as higher", lease.id));
    if (absl::Status s = check_block(head, order); !s.ok()) return s;
  }
  if (pages != lease.pages_held_) {
    return absl::InternalError(absl::StrFormat("lease %d: pages_held %d != Σ 2^order over its blocks %d", lease.id,
                                               lease.pages_held_, pages));
  }
  if (lease.keys_ != nullptr) {
    if (lease.keys_->block_of.size() != lease.keys_->key_of.size()) {
      return absl::InternalError(absl::StrFormat("lease %d: its key maps disagree in size", lease.id));
    }
    for (const auto& [key, head] : lease.keys_->block_of) {
      auto back = lease.keys_->key_of.find(head);
      if (!BlockOrder(lease, head) || back == lease.keys_->key_of.end() || back->second != key) {
        return absl::InternalError(absl::StrFormat("lease %d: key '%s' names no block of the lease", lease.id,
                                                   absl::CEscape(key.substr(0, 32))));
      }
    }
    for (const auto& [head, request] : lease.keys_->request_of) {
      if (!lease.keys_->key_of.contains(head)) {
        return absl::InternalError(absl::StrFormat("lease %d: a keyed request is kept for block %d, which has no key",
                                                   lease.id, head));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Lessor::CheckInvariants() const {
  std::vector<std::shared_ptr<Lease>> all;
  {
    MutexLock l(&mu_);
    if (std::string bad = heap_.Check(); !bad.empty()) return absl::InternalError("expiry heap: " + bad);
    if (heap_.size() != leases_.size()) {
      return absl::InternalError(
          absl::StrFormat("expiry heap holds %d leases, the lease map %d", heap_.size(), leases_.size()));
    }
    for (const auto& [id, lease] : leases_) all.push_back(lease);
  }
  absl::flat_hash_map<const IdentityUsage*, std::array<uint64_t, MAX_NR_ZONES>> charged;
  uint64_t blocks = 0;
  for (const auto& lease : all) {
    MutexLock l(&lease->mu_);
    if (lease->dead_) return absl::InternalError(absl::StrFormat("lease %d is dead but still in the map", lease->id));
    if (absl::Status s = CheckLeaseLocked(*lease, &charged, &blocks); !s.ok()) return s;
  }
  for (const auto& [usage, zones] : charged) {
    uint64_t total = 0;
    for (int z = 0; z < MAX_NR_ZONES; ++z) {
      total += zones[z];
      if (usage->zone_pages[z].load() != zones[z]) {
        return absl::InternalError(absl::StrFormat("identity %s is charged %d pages in zone %s, its leases hold %d",
                                                   usage->identity, usage->zone_pages[z].load(),
                                                   zone_name(ZoneType(z)), zones[z]));
      }
    }
    if (usage->pages.load() != total) {
      return absl::InternalError(absl::StrFormat("identity %s is charged %d pages, its leases hold %d",
                                                 usage->identity, usage->pages.load(), total));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<BookCensus> Lessor::Census(std::chrono::steady_clock::time_point deadline) {
  const auto wait = std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero());
  BookCensus c;
  absl::Status status;
  const bool ran = stop_machine_.Stopped(deadline, [&] {
    absl::StatusOr<PageCensus> pages = pa_->Validate();
    if (!pages.ok()) {
      LogError("validate_failed", {{"error", pages.status().ToString()}});
      status = absl::InternalError(pages.status().message());
      return;
    }
    c.pages = *pages;
    if (status = CheckInvariants(); !status.ok()) {
      LogError("lease_book_invalid", {{"error", status.ToString()}});
      return;
    }
    for (const std::shared_ptr<Lease>& lease : All()) {
      MutexLock l(&lease->mu_);
      ++c.leases;
      c.lease_pages += lease->pages_held_;
      c.lease_blocks += lease->order0_.size() + lease->higher_.size();
    }
    if (identity_limits_ != nullptr) {
      c.has_identity_limits = true;
      c.identity_pages = identity_limits_->TotalPages();
    }
  });
  if (!ran) {
    return absl::UnavailableError(absl::StrFormat(
        "allocations and frees did not pause for %d ms: Validate needs a moment without one in flight; retry",
        std::chrono::duration_cast<std::chrono::milliseconds>(wait).count()));
  }
  if (!status.ok()) return status;
  return c;
}

// ---- Crash recovery ----

void Lessor::Adopt(JournalLease& jl) {
  auto lease = std::make_shared<Lease>(jl.id, jl.identity, jl.name, jl.ttl_ms, jl.quota);
  lease->deadline_.store(jl.deadline_ns);
  lease->tenant_ = tenancy_.TagOf(jl.identity);
  if (identity_limits_ != nullptr) lease->usage_ = identity_limits_->For(jl.identity);
  {
    MutexLock l(&lease->mu_);
    for (auto& [pfn, b] : jl.blocks) {
      const uint32_t head = *pa_->mem_map().pfn_to_index(pfn);  // RestoreAllocated checked it is RAM
      tenancy_.Adopt(head, b.order, lease->tenant_);
      AddBlock(*lease, head, b.order, b.key);
      if (lease->usage_ != nullptr) {
        identity_limits_->ChargeRecovered(*lease->usage_, zone_of(head), uint64_t{1} << b.order);
      }
    }
  }
  MutexLock l(&mu_);
  ++per_identity_[lease->identity];
  IndexName(*lease);
  heap_.Push(lease.get());
  leases_[lease->id] = std::move(lease);
}

void Lessor::AdoptIdSpace(uint64_t boot_nonce, uint32_t next_id) {
  MutexLock l(&mu_);
  if (boot_nonce != 0) boot_nonce_ = boot_nonce;
  next_id_ = std::max(next_id_, next_id);
}

uint64_t Lessor::boot_nonce() const {
  MutexLock l(&mu_);
  return boot_nonce_;
}

uint32_t Lessor::next_id() const {
  MutexLock l(&mu_);
  return next_id_;
}

}  // namespace physmem
