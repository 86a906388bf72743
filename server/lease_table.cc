#include "server/lease_table.h"

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

#include <random>

namespace physmem {
namespace {

int64_t DeadlineIn(const LeaseClock& clock, int64_t ms) { return clock.Now() + ms * 1000000; }

uint64_t NewBootNonce() {
  std::random_device rd;
  uint64_t n = 0;
  while (n == 0) n = rd() & 0x7fffffffu;  // 31 bits: ids stay positive as int64 too
  return n << 32;
}

}  // namespace

LeaseTable::LeaseTable(PageAllocator* pa, LeaseLimits limits, std::function<void()> on_pages_freed,
                       const LeaseClock* clock)
    : pa_(pa),
      clock_(clock),
      limits_(limits), on_pages_freed_(std::move(on_pages_freed)), boot_nonce_(NewBootNonce()) {}

LeaseTable::~LeaseTable() { StopReaper(); }

absl::StatusOr<std::shared_ptr<Lease>> LeaseTable::Create(const std::string& identity, int64_t ttl_ms,
                                                          uint64_t quota, const std::string& name) {
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
  std::lock_guard<std::mutex> l(mu_);
  if (auto it = names_.find(std::pair(identity, name)); it != names_.end()) {
    // Only a live lease holds its name: one past its deadline that the reaper has not collected
    // yet (it runs every 20 ms) does not, and leaves the index when it is collected.
    const int64_t now = clock_->Now();
    for (uint64_t holder : it->second) {
      auto h = leases_.find(holder);
      if (h == leases_.end() || h->second->expired(now)) continue;
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
  lease->deadline.store(DeadlineIn(*clock_, ttl_ms));
  if (identity_limits_ != nullptr) lease->usage = identity_limits_->For(identity);
  // Journaled before the lease can be found (or listed), so its allocations come after it.
  if (journal_) journal_->LeaseCreated(id, identity, name, ttl_ms, quota, lease->deadline.load());
  leases_[id] = lease;
  IndexName(*lease);
  ++count;
  counters_.created.fetch_add(1, std::memory_order_relaxed);
  return lease;
}

absl::StatusOr<std::shared_ptr<Lease>> LeaseTable::Find(uint64_t id, const std::string& identity) {
  std::shared_ptr<Lease> lease;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = leases_.find(id);
    if (it != leases_.end()) lease = it->second;
  }
  // An expired lease the reaper has not collected yet (it runs every 20 ms) is gone: collect it
  // now, so that its pages are back before anyone hears it is gone.
  if (lease != nullptr && Expired(*lease)) {
    ExpireDue();
    lease = nullptr;
  }
  if (lease == nullptr) {
    return absl::NotFoundError(absl::StrFormat("lease %d not found (never created, expired, or revoked)", id));
  }
  if (lease->identity != identity) {
    return absl::PermissionDeniedError(absl::StrFormat("lease %d belongs to another identity", id));
  }
  return lease;
}

absl::StatusOr<int64_t> LeaseTable::Renew(uint64_t id, const std::string& identity) {
  absl::StatusOr<std::shared_ptr<Lease>> lease = Find(id, identity);
  if (!lease.ok()) return lease.status();
  // A lease the reaper has already claimed stays dead: renewal cannot resurrect it.
  std::lock_guard<std::mutex> l((*lease)->mu);
  if ((*lease)->dead || Expired(**lease)) return absl::NotFoundError(absl::StrFormat("lease %d has expired", id));
  (*lease)->deadline.store(DeadlineIn(*clock_, (*lease)->granted_ttl_ms));
  if (journal_) journal_->LeaseRenewed(id, (*lease)->deadline.load());
  return (*lease)->granted_ttl_ms;
}

absl::StatusOr<uint64_t> LeaseTable::Revoke(uint64_t id, const std::string& identity) {
  std::shared_ptr<Lease> lease;
  StopMachine::Operation op = stop_machine_.Enter();
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = leases_.find(id);
    if (it == leases_.end()) {
      return absl::NotFoundError(absl::StrFormat("lease %d not found (never created, expired, or revoked)", id));
    }
    if (it->second->identity != identity) {
      return absl::PermissionDeniedError(absl::StrFormat("lease %d belongs to another identity", id));
    }
    lease = it->second;
    leases_.erase(it);
    UnindexName(*lease);
    if (--per_identity_[identity] == 0) per_identity_.erase(identity);
  }
  const uint64_t pages = End(lease);
  op.unlock();
  counters_.revoked.fetch_add(1, std::memory_order_relaxed);
  counters_.pages_reclaimed.fetch_add(pages, std::memory_order_relaxed);
  LogInfo("lease_revoked", {{"lease", id}, {"identity", identity}, {"pages", pages}});
  if (pages != 0 && on_pages_freed_) on_pages_freed_();
  return pages;
}

uint64_t LeaseTable::End(const std::shared_ptr<Lease>& lease) {
  std::lock_guard<std::mutex> l(lease->mu);
  // Journaled before any page is freed: once a page can go to another lease, replay knows it left.
  if (journal_ && !lease->dead) journal_->LeaseEnded(lease->id);
  lease->dead = true;
  uint64_t pages = 0;
  for (const auto& [pfn, block] : lease->blocks) {
    if (block.zone == ZONE_HIGHMEM) DropKmaps(pfn, block.order, lease->owner());
    absl::Status s = pa_->FreePfn(pfn, block.order, lease->owner());
    if (!s.ok()) {
      // The lease's book and the allocator disagree: a bug. Leave the block where it is (leaked,
      // as the kernel leaks a bad page) rather than free something that is not ours.
      LogError("lease_free_failed", {{"lease", lease->id}, {"pfn", pfn}, {"error", s.ToString()}});
      continue;
    }
    pages += uint64_t{1} << block.order;
    if (lease->usage != nullptr) identity_limits_->Uncharge(*lease->usage, block.zone, uint64_t{1} << block.order);
  }
  lease->blocks.clear();
  lease->keys.clear();
  lease->pages_held = 0;
  return pages;
}

void LeaseTable::IndexName(const Lease& lease) {
  if (!limits_.unique_names || lease.name.empty()) return;
  names_[std::pair(lease.identity, lease.name)].push_back(lease.id);
}

void LeaseTable::UnindexName(const Lease& lease) {
  if (!limits_.unique_names || lease.name.empty()) return;
  auto it = names_.find(std::pair(lease.identity, lease.name));
  if (it == names_.end()) return;
  std::erase(it->second, lease.id);
  if (it->second.empty()) names_.erase(it);
}

void LeaseTable::DropKmaps(uint64_t pfn, uint32_t order, uint32_t owner) {
  for (uint64_t p = pfn; p < pfn + (uint64_t{1} << order); ++p) {
    absl::StatusOr<Page*> page = pa_->PfnToPage(p);
    if (!page.ok()) return;
    // Each kunmap drops one kmap(); one that fails (a racing Kunmap RPC got there first) does not.
    while ((*page)->mapcount.load(std::memory_order_seq_cst) > 0) {
      if (!pa_->kunmap(*page, owner).ok()) break;
    }
  }
}

std::vector<std::shared_ptr<Lease>> LeaseTable::List(const std::string& identity) const {
  std::vector<std::shared_ptr<Lease>> out;
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [id, lease] : leases_) {
    if (lease->identity == identity) out.push_back(lease);
  }
  return out;
}

std::vector<std::shared_ptr<Lease>> LeaseTable::All() const {
  std::vector<std::shared_ptr<Lease>> out;
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [id, lease] : leases_) out.push_back(lease);
  return out;
}

size_t LeaseTable::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return leases_.size();
}

int64_t LeaseTable::RemainingMs(const Lease& l) const {
  return std::max<int64_t>(0, (l.deadline.load() - clock_->Now()) / 1000000);
}

uint64_t LeaseTable::ExpireDue() {
  const int64_t now = clock_->Now();
  std::vector<std::shared_ptr<Lease>> due;
  StopMachine::Operation op = stop_machine_.Enter();
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = leases_.begin(); it != leases_.end();) {
      if (it->second->deadline.load() <= now) {
        due.push_back(it->second);
        UnindexName(*it->second);
        if (--per_identity_[it->second->identity] == 0) per_identity_.erase(it->second->identity);
        leases_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  uint64_t pages = 0;
  for (const auto& lease : due) {
    const uint64_t freed = End(lease);
    pages += freed;
    counters_.expired.fetch_add(1, std::memory_order_relaxed);
    // late_ms: how long after its deadline the lease was ended (the reaper's 20 ms period plus
    // scheduling); tests/server/lease_expiry_test.cc holds it to its bound.
    LogInfo("lease_expired", {{"lease", lease->id}, {"identity", lease->identity}, {"name", lease->name},
                              {"pages", freed}, {"late_ms", (now - lease->deadline.load()) / 1000000}});
  }
  op.unlock();
  counters_.pages_reclaimed.fetch_add(pages, std::memory_order_relaxed);
  if (pages != 0 && on_pages_freed_) on_pages_freed_();
  return pages;
}

uint64_t LeaseTable::RevokeAll() {
  std::vector<std::shared_ptr<Lease>> all;
  StopMachine::Operation op = stop_machine_.Enter();
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, lease] : leases_) all.push_back(lease);
    leases_.clear();
    per_identity_.clear();
    names_.clear();
  }
  uint64_t pages = 0;
  for (const auto& lease : all) pages += End(lease);
  return pages;
}

void LeaseTable::StartReaper() {
  reaper_ = std::thread([this] { ReaperLoop(); });
}

void LeaseTable::StopReaper() {
  {
    std::lock_guard<std::mutex> l(reaper_mu_);
    reaper_stop_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
}

void LeaseTable::ReaperLoop() {
  std::unique_lock<std::mutex> l(reaper_mu_);
  while (!reaper_stop_) {
    // 20 ms granularity: an expired lease's pages are back within TTL + 20 ms.
    reaper_cv_.wait_for(l, std::chrono::milliseconds(20));
    if (reaper_stop_) break;
    l.unlock();
    ExpireDue();
    l.lock();
  }
}

}  // namespace physmem
