// The arena filled to exhaustion on every zone of targets that have several (x86_64, 64 MiB:
// DMA 3999 pages, DMA32 4096, Normal 8289; i386, 1 GiB: DMA, Normal, HighMem), against the real
// daemon: the kernel's rules must hold at the edge, where they matter.
//
// For each preferred zone (GFP_KERNEL|__GFP_DMA, GFP_KERNEL|__GFP_DMA32, GFP_KERNEL on x86_64;
// GFP_KERNEL|__GFP_HIGHMEM on i386):
//   - GFP_KERNEL takes pages down to the MIN watermark and no further; the zones above the
//     preferred one are untouched (GFP_DMA exhaustion takes no Normal page); the zones it falls
//     back to keep MIN + lowmem_reserve[preferred] (zoneinfo "protection");
//   - GFP_ATOMIC then dips below MIN, but not below 37.5% of it (ALLOC_MIN_RESERVE halves MIN,
//     ALLOC_NON_BLOCK takes a quarter more), and when that is gone fails at once with
//     RESOURCE_EXHAUSTED ("cannot wait"); GFP_NOWAIT, which has no reserve access, fails at once;
//   - GFP_KERNEL waits as long as it may (--max_alloc_wait_ms, well inside the caller's deadline)
//     and then fails with RESOURCE_EXHAUSTED, which the caller hears before its own deadline;
//   - a waiting GFP_KERNEL is released when another lease frees pages of its zone;
//   - when the pressure ends, every page is free.
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/server/fault_helpers.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using testing::Deadline;
using v1::PhysMem;
using std::chrono::milliseconds;

// How long a blocking mask waits for memory (--max_alloc_wait_ms): on every build long enough for
// the hog's free that releases a parked call (step 4), and the bound of the wait that runs out
// (step 3). A mask that cannot wait must answer in half of it.
milliseconds MaxAllocWait() { return testing::ScaledTimeout(milliseconds(1500)); }

struct ZoneCase;
void PrintTo(const ZoneCase& z, std::ostream* os);

struct ZoneCase {
  const char* target;    // --target
  const char* mem_mb;    // --mem_mb
  std::vector<std::string> zones;  // the target's zones, lowest first
  const char* zone;      // preferred zone
  int index;             // its index in zones
  int kernel_index;      // the kernel's zone number (DMA 0, DMA32 1, Normal 2, HighMem 3): its
                         // index in zoneinfo's protection array, which has all four
  const char* modifier;  // zone modifier added to every mask
};

void PrintTo(const ZoneCase& z, std::ostream* os) { *os << z.target << " preferring " << z.zone; }

const char* ZoneOf(int proto_zone) {
  switch (proto_zone) {
    case v1::ZONE_DMA: return "DMA";
    case v1::ZONE_DMA32: return "DMA32";
    case v1::ZONE_NORMAL: return "Normal";
    case v1::ZONE_HIGHMEM: return "HighMem";
    default: return "?";
  }
}

class Exhaustion : public ::testing::TestWithParam<ZoneCase> {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<testing::DaemonProcess>(
        std::vector<std::string>{testing::kServeMetrics, std::string("--target=") + GetParam().target,
                                 std::string("--mem_mb=") + GetParam().mem_mb,
                                 "--max_alloc_wait_ms=" + std::to_string(MaxAllocWait().count()),
                                 // one identity exhausts every zone, ZONE_DMA included (default cap: 1/8)
                                 "--identity_dma_pages=4096"});
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
    stub_ = testing::OwnStub(daemon_->unix_target());
    // A day: filling a 1 GiB machine a page at a time takes minutes under a sanitizer.
    hog_ = testing::CreateLease(stub_.get(), int64_t{24} * 3600 * 1000);
    ASSERT_NE(hog_, 0u);
  }
  void TearDown() override {
    if (HasFailure()) {
      const std::string log = daemon_->log();
      std::fprintf(stderr, "daemon log (tail):\n%s\n", log.substr(log.size() > 4000 ? log.size() - 4000 : 0).c_str());
    }
  }

  std::string Mask(const std::string& base) const {
    const std::string mod = GetParam().modifier;
    return mod.empty() ? base : base + "|" + mod;
  }
  std::map<std::string, v1::ZoneInfo> Zones() {
    v1::GetZoneInfoResponse resp;
    Deadline ctx;
    EXPECT_TRUE(stub_->GetZoneInfo(&ctx, v1::GetZoneInfoRequest(), &resp).ok());
    std::map<std::string, v1::ZoneInfo> out;
    for (const v1::ZoneInfo& z : resp.zones()) {
      if (z.populated()) out[z.zone()] = z;
    }
    return out;
  }
  // Single order-0 allocations into the hog lease until the daemon refuses; returns how many
  // succeeded. `last` gets the refusal.
  int AllocUntilRefused(const std::string& gfp, grpc::Status* last) {
    for (int n = 0; n < 100000; ++n) {
      v1::Allocation a;
      *last = testing::AllocPages(stub_.get(), hog_, gfp, 0, &a, 10000);
      if (!last->ok()) return n;
      held_[a.zone()].push_back(a.pfn());
    }
    return -1;
  }
  // Allocation failures the daemon has counted: the first attempt of a call that then waits
  // counts one, and each retry of the waiter queue (every 20 ms) one more.
  double AllocFailures() { return testing::MetricSum(daemon_->metrics_port(), "physmem_alloc_failures_total"); }
  grpc::Status FreeSome(const std::string& zone, size_t n) {
    std::vector<uint64_t>& pfns = held_[zone];
    n = std::min(n, pfns.size());
    std::vector<uint64_t> going(pfns.end() - static_cast<long>(n), pfns.end());
    pfns.resize(pfns.size() - n);
    return testing::FreeBulk(stub_.get(), hog_, going);
  }

  std::unique_ptr<testing::DaemonProcess> daemon_;
  std::unique_ptr<PhysMem::Stub> stub_;
  uint64_t hog_ = 0;
  std::map<std::string, std::vector<uint64_t>> held_;  // zone -> pfns (order 0) the hog holds
};

TEST_P(Exhaustion, EveryMaskKeepsToItsWatermarkAndWaitsOrFailsAsTheKernelDoes) {
  const ZoneCase zc = GetParam();
  const std::map<std::string, v1::ZoneInfo> idle = Zones();
  const std::vector<std::string>& order = zc.zones;
  ASSERT_EQ(idle.size(), order.size()) << zc.target << " should have " << order.size() << " zones";

  // 1. GFP_KERNEL to exhaustion: bulk first (fast), then single pages until refused.
  for (;;) {
    v1::AllocPagesBulkResponse got;
    if (!testing::AllocBulk(stub_.get(), hog_, Mask("GFP_KERNEL"), 4096, &got).ok()) break;
    for (int i = 0; i < got.pfn_size(); ++i) held_[ZoneOf(got.zone(i))].push_back(got.pfn(i));
  }
  grpc::Status refused;
  ASSERT_GE(AllocUntilRefused(Mask("GFP_KERNEL|__GFP_NORETRY"), &refused), 0);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  std::map<std::string, v1::ZoneInfo> z = Zones();
  for (int i = 0; i < static_cast<int>(order.size()); ++i) {
    const v1::ZoneInfo& now = z[order[i]];
    SCOPED_TRACE(order[i] + " after GFP_KERNEL exhaustion: free " + std::to_string(now.free_pages()) + " min " +
                 std::to_string(now.min()) + " low " + std::to_string(now.low()));
    if (i > zc.index) {
      EXPECT_EQ(now.free_pages(), idle.at(order[i]).free_pages()) << "a zone above the preferred one was used";
      EXPECT_TRUE(held_[order[i]].empty());
      continue;
    }
    const uint64_t reserve = now.protection(zc.kernel_index);  // lowmem_reserve[preferred]; 0 for itself
    EXPECT_GE(now.free_pages(), now.min() + reserve) << "GFP_KERNEL went below MIN + lowmem_reserve";
    EXPECT_LE(now.buddy_free_pages(), now.low() + reserve) << "not exhausted";
    EXPECT_FALSE(held_[order[i]].empty());
  }

  const uint64_t z_kernel_free = z[zc.zone].free_pages();

  // 2. GFP_ATOMIC dips into the reserve below MIN, down to 37.5% of it, then fails at once.
  const int atomic = AllocUntilRefused(Mask("GFP_ATOMIC"), &refused);
  EXPECT_GT(atomic, 0) << "GFP_ATOMIC got nothing from the reserve";
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("cannot wait"));
  z = Zones();
  const v1::ZoneInfo& pref = z[zc.zone];
  EXPECT_LT(pref.free_pages(), pref.min()) << "GFP_ATOMIC did not dip below MIN";
  EXPECT_GE(pref.free_pages() + 1, pref.min() * 3 / 8) << "GFP_ATOMIC went below 37.5% of MIN";
  std::printf("%s: GFP_KERNEL stopped at %lu free (min %lu), GFP_ATOMIC took %d more, down to %lu (37.5%% of min: %lu)\n",
              zc.zone, static_cast<unsigned long>(z_kernel_free), static_cast<unsigned long>(pref.min()), atomic,
              static_cast<unsigned long>(pref.free_pages()), static_cast<unsigned long>(pref.min() * 3 / 8));
  for (int i = zc.index + 1; i < static_cast<int>(order.size()); ++i) {
    EXPECT_EQ(z[order[i]].free_pages(), idle.at(order[i]).free_pages()) << order[i] << " was used";
  }
  for (const char* gfp : {"GFP_ATOMIC", "GFP_NOWAIT"}) {
    const auto t0 = std::chrono::steady_clock::now();
    v1::Allocation a;
    const grpc::Status s = testing::AllocPages(stub_.get(), hog_, Mask(gfp), 0, &a, 10000);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << gfp << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("cannot wait"));  // refused before it could be queued
    EXPECT_LT(std::chrono::steady_clock::now() - t0, MaxAllocWait() / 2) << gfp << " waited for memory";
  }

  // 3. GFP_KERNEL waits as long as it may, then RESOURCE_EXHAUSTED, well before the caller's
  //    deadline. (A wait the caller's deadline cuts short ends only 50 ms before it: a margin the
  //    reply can miss on a loaded machine, so the daemon's own bound is the one timed here.) For
  //    DMA and DMA32 this is while Normal is entirely free: their exhaustion takes no Normal page.
  {
    const auto t0 = std::chrono::steady_clock::now();
    v1::Allocation a;
    const grpc::Status s = testing::AllocPages(stub_.get(), hog_, Mask("GFP_KERNEL"), 0, &a,
                                               /*deadline_ms, scaled=*/1500 + 10000);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("waited " + std::to_string(MaxAllocWait().count()) + " ms"));
    EXPECT_GE(waited, MaxAllocWait()) << "GFP_KERNEL did not wait";
    for (int i = zc.index + 1; i < static_cast<int>(order.size()); ++i) {
      EXPECT_EQ(Zones()[order[i]].free_pages(), idle.at(order[i]).free_pages()) << order[i];
    }
  }

  // 4. A parked GFP_KERNEL is released when the hog frees pages of its zone, and gets one of them.
  //    The hog frees once the call is parked: its first attempt and a retry of the daemon's waiter
  //    queue have failed.
  {
    v1::Allocation a;
    grpc::Status s;
    const double failures = AllocFailures();
    std::thread waiter([&] { s = testing::AllocPages(stub_.get(), hog_, Mask("GFP_KERNEL"), 0, &a, 10000); });
    EXPECT_TRUE(testing::Eventually(testing::ScaledTimeout(std::chrono::seconds(5)),
                                    [&] { return AllocFailures() >= failures + 2; }))
        << "the call did not wait";
    const grpc::Status freed = FreeSome(zc.zone, static_cast<size_t>(atomic) + 16);
    if (!freed.ok()) waiter.join();
    ASSERT_TRUE(freed.ok()) << freed.error_message();
    waiter.join();
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(a.zone(), zc.zone);
  }

  // 5. The pressure ends: every page is free again, in every zone.
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), hog_).ok());
  grpc::Status vs;
  const v1::ValidateResponse c = testing::Validate(stub_.get(), &vs);
  ASSERT_TRUE(vs.ok()) << vs.error_message();
  EXPECT_EQ(c.allocated_pages(), 0u);
  EXPECT_EQ(c.free_pages(), c.total_pages());
  for (const auto& [name, zi] : Zones()) EXPECT_EQ(zi.free_pages(), zi.managed_pages()) << name;
}

const std::vector<std::string> kX86_64Zones = {"DMA", "DMA32", "Normal"};
const std::vector<std::string> kI386Zones = {"DMA", "Normal", "HighMem"};

INSTANTIATE_TEST_SUITE_P(X86_64, Exhaustion,
                         ::testing::Values(ZoneCase{"x86_64", "64", kX86_64Zones, "DMA", 0, 0, "__GFP_DMA"},
                                           ZoneCase{"x86_64", "64", kX86_64Zones, "DMA32", 1, 1, "__GFP_DMA32"},
                                           ZoneCase{"x86_64", "64", kX86_64Zones, "Normal", 2, 2, ""}),
                         [](const ::testing::TestParamInfo<ZoneCase>& p) { return std::string(p.param.zone); });
// i386 with 1 GiB: DMA, Normal (up to MAXMEM, 887.99 MiB) and 128 MiB of HighMem, which GFP_HIGHUSER prefers
// and falls back from to Normal and DMA.
INSTANTIATE_TEST_SUITE_P(I386, Exhaustion,
                         ::testing::Values(ZoneCase{"i386", "1024", kI386Zones, "HighMem", 2, 3, "__GFP_HIGHMEM"}),
                         [](const ::testing::TestParamInfo<ZoneCase>& p) { return std::string(p.param.zone); });

}  // namespace
}  // namespace physmem
