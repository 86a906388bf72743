// The client-side page cache (clients/page_cache.h) against the real daemon: cached pages belong
// to the lease on the daemon (counted, reported, freed with it), lists refill and drain in
// batches, masks are checked as the daemon checks them, zone classes stay apart, __GFP_ZERO is
// honoured, threads share one cache, the lease's end drops the lists, and a daemon restart (kill
// -9 with a journal on a file-backed arena) leaves the cache working.
#include "clients/page_cache.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "clients/arena_mapping.h"
#include "clients/physmem_client.h"
#include "gtest/gtest.h"
#include "tests/clients/client_options.h"
#include "tests/daemon_process.h"
#include "tests/server/metrics_scrape.h"

namespace physmem::client {
namespace {

using ::physmem::testing::DaemonProcess;
using ::physmem::testing::ScaledTimeout;

using testing::kLongTtlMs;

// OptionsFor's deadlines, and an allocation's wait bounded the same way.
ClientOptions CacheOptionsFor(const DaemonProcess& d) {
  ClientOptions o = testing::OptionsFor(d);
  o.alloc_timeout_ms = o.call_timeout_ms;
  return o;
}

std::string PageCacheShmPath() { return "/dev/shm/physmemd-page-cache-test-" + std::to_string(::getpid()); }

class PageCacheTest : public ::testing::Test {
 protected:
  explicit PageCacheTest(
      std::vector<std::string> args = {"--target=i386", "--mem_mb=64", ::physmem::testing::kServeMetrics})
      : daemon_(std::move(args)) {}

  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(CacheOptionsFor(daemon_));
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
    absl::StatusOr<std::unique_ptr<Lease>> l = client_->CreateLease({.ttl_ms = kLongTtlMs});
    ASSERT_TRUE(l.ok()) << l.status();
    lease_ = *std::move(l);
  }
  void TearDown() override {
    cache_.reset();
    lease_.reset();
    if (HasFailure()) std::cerr << "daemon log:\n" << daemon_.log() << "\n";
  }

  PageCache& NewCache(PageCacheOptions o = {.batch = 16, .high = 32}) {
    absl::StatusOr<std::unique_ptr<PageCache>> c = PageCache::Create(*lease_, o);
    EXPECT_TRUE(c.ok()) << c.status();
    cache_ = *std::move(c);
    return *cache_;
  }
  uint64_t PagesHeld() {
    absl::StatusOr<v1::LeaseInfo> info = client_->GetLease(lease_->id());
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->pages_held() : 0;
  }
  v1::ValidateResponse Census() {
    absl::StatusOr<v1::ValidateResponse> v = client_->Validate();
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : v1::ValidateResponse();
  }

  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Lease> lease_;
  std::unique_ptr<PageCache> cache_;
};

TEST_F(PageCacheTest, AFirstAllocRefillsABatchThatTheLeaseOwns) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->order, 0);
  EXPECT_EQ(PagesHeld(), 16u);  // the whole batch is the lease's on the daemon
  EXPECT_EQ(cache.cached_pages(), 15u);
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.allocated_pages(), 16u);
  EXPECT_EQ(v.lease_pages(), 16u);
  EXPECT_TRUE(cache.Free(*p).ok());
  EXPECT_EQ(cache.cached_pages(), 16u);
  EXPECT_EQ(cache.stats().refills, 1u);
}

TEST_F(PageCacheTest, AFreedPageIsTheNextOneHandedOutWithoutACall) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> a = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(cache.Free(*a).ok());
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<CachedPage> b = cache.Alloc(GFP_KERNEL, 0);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->pfn, a->pfn);  // LIFO: the hottest page
    ASSERT_TRUE(cache.Free(*b).ok());
  }
  EXPECT_EQ(cache.stats().refills, 1u);
  EXPECT_EQ(cache.stats().hits, 100u);
}

TEST_F(PageCacheTest, AListPastHighDrainsABatchToTheDaemon) {
  PageCache& cache = NewCache({.batch = 16, .high = 32});
  std::vector<CachedPage> got;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
    ASSERT_TRUE(p.ok()) << p.status();
    got.push_back(*p);
  }
  std::set<uint64_t> distinct;
  for (const CachedPage& p : got) distinct.insert(p.pfn);
  EXPECT_EQ(distinct.size(), got.size()) << "a page was handed out twice";
  for (const CachedPage& p : got) ASSERT_TRUE(cache.Free(p).ok());
  // 100 pages came back to a list of at most high + 1: the rest went back in batches.
  EXPECT_LE(cache.cached_pages(), 33u);
  EXPECT_GE(cache.stats().drains, 1u);
  EXPECT_EQ(PagesHeld(), cache.cached_pages());
  ASSERT_TRUE(cache.Drain().ok());
  EXPECT_EQ(cache.cached_pages(), 0u);
  EXPECT_EQ(PagesHeld(), 0u);
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

TEST_F(PageCacheTest, HigherOrdersAreCachedPerOrderAndOrdersAboveThreePassThrough) {
  PageCache& cache = NewCache({.batch = 16, .high = 32});
  for (unsigned order = 1; order <= 4; ++order) {
    absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, order);
    ASSERT_TRUE(p.ok()) << "order " << order << ": " << p.status();
    EXPECT_EQ(p->order, order);
    EXPECT_EQ(p->pfn % (uint64_t{1} << order), 0u);
    ASSERT_TRUE(cache.Free(*p).ok());
  }
  // Orders 1..3 keep a batch of 16 pages each (16 >> order blocks); order 4 went straight back.
  EXPECT_EQ(cache.cached_pages(), 48u);
  EXPECT_EQ(PagesHeld(), 48u);
}

TEST_F(PageCacheTest, ZoneClassesKeepTheirOwnLists) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> normal = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(normal.ok()) << normal.status();
  ASSERT_TRUE(cache.Free(*normal).ok());
  absl::StatusOr<CachedPage> dma = cache.Alloc(GFP_KERNEL | __GFP_DMA, 0);
  ASSERT_TRUE(dma.ok()) << dma.status();
  EXPECT_EQ(dma->zone, v1::ZONE_DMA) << "a GFP_DMA request got a page of zone " << int{dma->zone};
  EXPECT_EQ(normal->zone, v1::ZONE_NORMAL);
  // Another mask of the same zone class (GFP_ATOMIC has no zone modifier) takes a cached page.
  absl::StatusOr<CachedPage> atomic = cache.Alloc(GFP_ATOMIC, 0);
  ASSERT_TRUE(atomic.ok()) << atomic.status();
  EXPECT_EQ(atomic->pfn, normal->pfn);
  EXPECT_EQ(cache.stats().refills, 2u);
}

TEST_F(PageCacheTest, RefusesAMaskTheDaemonRefusesWithTheSameMessage) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> warm = cache.Alloc(GFP_KERNEL, 0);  // a warm list must not hide the check
  ASSERT_TRUE(warm.ok()) << warm.status();
  const gfp_t bad = GFP_KERNEL | __GFP_DMA | __GFP_DMA32;
  absl::StatusOr<CachedPage> p = cache.Alloc(bad, 0);
  ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
  absl::StatusOr<PageHandle> direct = lease_->AllocPages("0x" + absl::StrFormat("%x", bad), 0);
  ASSERT_EQ(direct.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.status().message(), direct.status().message());
  EXPECT_EQ(PagesHeld(), 16u);  // the refusal changed nothing
}

TEST_F(PageCacheTest, FreeRefusesAPageOfAnotherCache) {
  PageCache& cache = NewCache();
  CachedPage forged;
  forged.pfn = 0x100;
  forged.cache_id = cache.id() + 1000;
  absl::Status s = cache.Free(forged);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(cache.cached_pages(), 0u);
}

TEST_F(PageCacheTest, CreateRefusesBadOptionsAndASecondCacheForTheLease) {
  // Renewed here only, as below: a keep-alive renewal counted before the allocation could land
  // after the Renew() and report its older figure (CI12 saw 0 instead of 15).
  lease_.reset();
  absl::StatusOr<std::unique_ptr<Lease>> l = client_->CreateLease({.ttl_ms = kLongTtlMs, .keepalive = false});
  ASSERT_TRUE(l.ok()) << l.status();
  lease_ = *std::move(l);
  EXPECT_EQ(PageCache::Create(*lease_, {.batch = 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PageCache::Create(*lease_, {.batch = 64, .high = 32}).status().code(),
            absl::StatusCode::kInvalidArgument);
  NewCache();
  absl::StatusOr<std::unique_ptr<PageCache>> second = PageCache::Create(*lease_, {});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  // The refused second cache did not take the report away from the first.
  ASSERT_TRUE(cache_->Alloc(GFP_KERNEL, 0).ok());
  ASSERT_TRUE(lease_->Renew().ok());
  absl::StatusOr<v1::LeaseInfo> info = client_->GetLease(lease_->id());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->client_cached_pages(), 15u);
}

TEST_F(PageCacheTest, TheDaemonSeesTheCachedPagesTheClientReportsWithItsRenewals) {
  // Renewed here only: a keep-alive renewal that counted before the allocations could land after
  // the Renew() below and report its older figure.
  lease_.reset();
  absl::StatusOr<std::unique_ptr<Lease>> l = client_->CreateLease({.ttl_ms = kLongTtlMs, .keepalive = false});
  ASSERT_TRUE(l.ok()) << l.status();
  lease_ = *std::move(l);
  PageCache& cache = NewCache();
  std::vector<CachedPage> held;
  for (int i = 0; i < 5; ++i) held.push_back(*cache.Alloc(GFP_KERNEL, 0));
  ASSERT_TRUE(lease_->Renew().ok());
  absl::StatusOr<v1::LeaseInfo> info = client_->GetLease(lease_->id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pages_held(), 16u);
  EXPECT_EQ(info->client_cached_pages(), 11u);  // 16 refilled, 5 handed out
  EXPECT_EQ(::physmem::testing::MetricSum(daemon_.metrics_port(), "physmem_client_cached_pages"), 11);
  for (const CachedPage& p : held) ASSERT_TRUE(cache.Free(p).ok());
  cache_.reset();  // drains, and reports 0 from then on
  ASSERT_TRUE(lease_->Renew().ok());
  info = client_->GetLease(lease_->id());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->pages_held(), 0u);
  EXPECT_EQ(info->client_cached_pages(), 0u);
  EXPECT_EQ(::physmem::testing::MetricSum(daemon_.metrics_port(), "physmem_client_cached_pages"), 0);
}

TEST_F(PageCacheTest, ARevokedLeaseHandsOutNoCachedPage) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(cache.Free(*p).ok());
  ASSERT_TRUE(lease_->Revoke().ok());
  absl::StatusOr<CachedPage> after = cache.Alloc(GFP_KERNEL, 0);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kNotFound) << after.status();
  EXPECT_EQ(cache.cached_pages(), 0u);  // dropped: the revoke freed them on the daemon
  EXPECT_EQ(cache.Free(*p).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

TEST_F(PageCacheTest, ALeaseEndedElsewhereFailsTheNextRefillAndDropsEveryList) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> order1 = cache.Alloc(GFP_KERNEL, 1);  // warms the order-1 list
  ASSERT_TRUE(order1.ok()) << order1.status();
  ASSERT_TRUE(cache.Free(*order1).ok());
  // Another connection ends the lease; this process has not heard of it yet.
  std::unique_ptr<Client> other = *Client::Connect(CacheOptionsFor(daemon_));
  ASSERT_TRUE(other->RevokeLease(lease_->id()).ok());
  // The order-0 list is empty: its refill is answered NOT_FOUND, cleanly.
  absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound) << p.status();
  // And the warm order-1 list is dropped, not handed out.
  absl::StatusOr<CachedPage> q = cache.Alloc(GFP_KERNEL, 1);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kNotFound) << q.status();
  EXPECT_EQ(cache.cached_pages(), 0u);
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

TEST_F(PageCacheTest, ThreadsShareOneCacheAndEveryPageComesBack) {
  PageCache& cache = NewCache({.batch = 8, .high = 16});
  // Each thread allocates, frees half of what it got itself and hands the rest to the next
  // thread to free (a page freed on another "CPU").
  constexpr int kThreads = 4;
  constexpr int kRounds = 300;
  std::mutex mu;
  std::deque<CachedPage> handed;  // guarded by mu
  std::mutex seen_mu;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        const unsigned order = (i + t) % 3;
        absl::StatusOr<CachedPage> p = cache.Alloc(i % 5 == 0 ? GFP_ATOMIC : GFP_KERNEL, order);
        if (!p.ok()) {
          ++errors;
          continue;
        }
        if (i % 2 == 0) {
          if (!cache.Free(*p).ok()) ++errors;
          continue;
        }
        std::optional<CachedPage> other;
        {
          std::lock_guard<std::mutex> l(mu);
          handed.push_back(*p);
          if (handed.size() > 4) {
            other = handed.front();
            handed.pop_front();
          }
        }
        if (other && !cache.Free(*other).ok()) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  for (const CachedPage& p : handed) ASSERT_TRUE(cache.Free(p).ok());
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.allocated_pages(), cache.cached_pages()) << "every page is either cached or was drained";
  ASSERT_TRUE(cache.Drain().ok());
  EXPECT_EQ(Census().allocated_pages(), 0u);
}

// __GFP_ZERO without a mapped arena: the daemon zeroes (an uncached call), and the block joins the
// cache when freed.
TEST_F(PageCacheTest, GfpZeroWithoutAMappingIsAnUncachedCallThatZeroes) {
  PageCache& cache = NewCache();
  absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(lease_->WritePages(p->pfn, 0, "dirty").ok());
  ASSERT_TRUE(cache.Free(*p).ok());
  absl::StatusOr<CachedPage> z = cache.Alloc(GFP_KERNEL | __GFP_ZERO, 0);
  ASSERT_TRUE(z.ok()) << z.status();
  absl::StatusOr<std::string> bytes = lease_->ReadPages(z->pfn, 0, 5);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, std::string(5, '\0'));
  EXPECT_NE(z->pfn, p->pfn);  // not the dirty cached page
  ASSERT_TRUE(cache.Free(*z).ok());
  EXPECT_EQ(cache.cached_pages(), 17u);
}

class PageCacheArenaTest : public PageCacheTest {
 protected:
  PageCacheArenaTest() : PageCacheTest({"--target=i386", "--mem_mb=64", "--arena_path=" + PageCacheShmPath()}) {}
  void TearDown() override {
    PageCacheTest::TearDown();
    daemon_.Stop();
    RemoveArenaFiles();
  }
  static void RemoveArenaFiles() {
    testing::RemoveShmFiles(PageCacheShmPath());
  }
};

TEST_F(PageCacheArenaTest, GfpZeroWithAMappingZeroesTheCachedPageAtHandOut) {
  absl::StatusOr<std::unique_ptr<ArenaMapping>> arena = ArenaMapping::Map(*client_);
  ASSERT_TRUE(arena.ok()) << arena.status();
  PageCache& cache = NewCache({.batch = 16, .high = 32, .arena = arena->get()});
  absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 1);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<std::span<std::byte>> page = (*arena)->Page(p->arena_offset + (*arena)->page_size());
  ASSERT_TRUE(page.ok());
  (*page)[7] = std::byte{0x5a};  // in the block's second page
  ASSERT_TRUE(cache.Free(*p).ok());
  absl::StatusOr<CachedPage> z = cache.Alloc(GFP_KERNEL | __GFP_ZERO, 1);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_EQ(z->pfn, p->pfn);  // the cached block, zeroed
  EXPECT_EQ((*page)[7], std::byte{0});
  absl::StatusOr<std::string> via_daemon = lease_->ReadPages(z->pfn + 1, 7, 1);
  ASSERT_TRUE(via_daemon.ok());
  EXPECT_EQ(*via_daemon, std::string(1, '\0'));
  ASSERT_TRUE(cache.Free(*z).ok());
  cache_.reset();  // before the mapping goes
}

// kill -9 with the journal: the lease and its cached pages survive; hits need no daemon at all,
// and refills and drains work again once it is back.
TEST_F(PageCacheArenaTest, TheCacheKeepsWorkingAcrossADaemonRestart) {
  PageCache& cache = NewCache({.batch = 16, .high = 32});
  absl::StatusOr<CachedPage> p = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(cache.Free(*p).ok());
  daemon_.Kill(SIGKILL);
  ASSERT_TRUE(daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(10))).has_value());
  // The daemon is away: the cache still serves what it holds.
  absl::StatusOr<CachedPage> q = cache.Alloc(GFP_KERNEL, 0);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_TRUE(cache.Free(*q).ok());
  ASSERT_TRUE(daemon_.Start()) << daemon_.log();
  ASSERT_TRUE(daemon_.WaitForLog("event=recovered")) << daemon_.log();
  // The first call on the old connection may meet its broken pipe; the channel then reconnects.
  ASSERT_TRUE(::physmem::testing::Eventually(ScaledTimeout(std::chrono::seconds(20)),
                                             [&] { return client_->GetLease(lease_->id()).ok(); }));
  EXPECT_EQ(PagesHeld(), 16u);  // the journal kept the cached pages the lease's
  // Past the cached 16: a refill on the new daemon.
  std::vector<CachedPage> got;
  for (int i = 0; i < 40; ++i) {
    absl::StatusOr<CachedPage> r = cache.Alloc(GFP_KERNEL, 0);
    ASSERT_TRUE(r.ok()) << r.status() << "\n" << daemon_.log();
    got.push_back(*r);
  }
  for (const CachedPage& r : got) ASSERT_TRUE(cache.Free(r).ok());
  EXPECT_EQ(PagesHeld(), cache.cached_pages());
  ASSERT_TRUE(cache.Drain().ok());
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.allocated_pages(), 0u);
  EXPECT_EQ(v.lease_pages(), 0u);
}

}  // namespace
}  // namespace physmem::client
