// The C++ client's bulk calls in the run form (issue #15 part 1), against the real daemon:
// AllocPagesBulk asks for runs and expands them into handles whose every address matches what
// the daemon says of the page (lowmem and highmem), FreePagesBulk sends order-0 handles as runs
// and frees them all, and when the daemon refuses the runs (a page no longer the lease's: all or
// nothing) the client falls back to the per-block form, which frees the rest and names the one.
#include <unistd.h>

#include <set>
#include <string>
#include <vector>

#include "clients/physmem_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/time_scale.h"

namespace physmem::client {
namespace {

using ::physmem::testing::DaemonProcess;
using ::testing::SizeIs;

class BulkRunsClient : public ::testing::Test {
 protected:
  // i386 with 1 GiB: lowmem ends at MAXMEM (887.99 MiB), HighMem above it.
  BulkRunsClient() : daemon_({"--target=i386", "--mem_mb=1024"}) {}

  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    ClientOptions o;
    o.target = daemon_.unix_target();
    o.connect_timeout_ms = o.call_timeout_ms = ::physmem::testing::ScaledTimeout(std::chrono::seconds(20)).count();
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
    absl::StatusOr<std::unique_ptr<Lease>> l = client_->CreateLease({.ttl_ms = int64_t{3600} * 1000});
    ASSERT_TRUE(l.ok()) << l.status();
    lease_ = *std::move(l);
  }

  uint64_t AllocatedPages() {
    absl::StatusOr<v1::ValidateResponse> v = client_->Validate();
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? v->allocated_pages() : 0;
  }

  // Every handle against the daemon's own answer for its pfn.
  void ExpectHandlesMatchTheDaemon(const std::vector<PageHandle>& pages, const std::string& zone) {
    std::set<uint64_t> pfns;
    for (const PageHandle& p : pages) {
      EXPECT_EQ(p.order(), 0u);
      EXPECT_EQ(p.zone(), zone);
      EXPECT_EQ(p.phys_addr(), p.pfn() << 12);
      absl::StatusOr<uint64_t> virt = lease_->PageAddress(p.pfn());
      ASSERT_TRUE(virt.ok()) << virt.status();
      EXPECT_EQ(p.virt_addr(), *virt) << "pfn " << p.pfn();
      pfns.insert(p.pfn());
    }
    EXPECT_EQ(pfns.size(), pages.size());
    // The arena offset against a page allocated singly in the same zone (the per-page form):
    // i386's mem_map has no hole, so offset - pfn * PAGE_SIZE is the same for every page.
    absl::StatusOr<PageHandle> ref = lease_->AllocPages(zone == "HighMem" ? "GFP_HIGHUSER" : "GFP_KERNEL", 0);
    ASSERT_TRUE(ref.ok()) << ref.status();
    const uint64_t delta = (ref->pfn() << 12) - ref->arena_offset();
    for (const PageHandle& p : pages) EXPECT_EQ((p.pfn() << 12) - p.arena_offset(), delta) << "pfn " << p.pfn();
  }

  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Lease> lease_;
};

TEST_F(BulkRunsClient, AllocPagesBulkExpandsRunsIntoHandlesTheDaemonAgreesWith) {
  absl::StatusOr<std::vector<PageHandle>> low = lease_->AllocPagesBulk("GFP_KERNEL", 700);
  ASSERT_TRUE(low.ok()) << low.status();
  ASSERT_THAT(*low, SizeIs(700));
  ExpectHandlesMatchTheDaemon(*low, "Normal");
  absl::StatusOr<std::vector<PageHandle>> high = lease_->AllocPagesBulk("GFP_HIGHUSER", 300);
  ASSERT_TRUE(high.ok()) << high.status();
  ASSERT_THAT(*high, SizeIs(300));
  ExpectHandlesMatchTheDaemon(*high, "HighMem");
  for (const PageHandle& p : *high) EXPECT_EQ(p.virt_addr(), 0u);
  EXPECT_EQ(AllocatedPages(), 1000u);  // the reference pages went with their handles

  absl::StatusOr<v1::FreePagesBulkResponse> r = lease_->FreePagesBulk(*low);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_freed(), 700u);
  EXPECT_EQ(r->blocks_freed(), 700u);
  EXPECT_THAT(r->refused(), SizeIs(0));
  for (const PageHandle& p : *low) EXPECT_FALSE(p.owns());
  EXPECT_EQ(AllocatedPages(), 300u);
}

TEST_F(BulkRunsClient, ARefusedRunFallsBackToPerBlockFreesThatNameTheBadPage) {
  absl::StatusOr<std::vector<PageHandle>> pages = lease_->AllocPagesBulk("GFP_KERNEL", 64);
  ASSERT_TRUE(pages.ok()) << pages.status();
  // A page freed behind its handle's back: the runs are refused as a whole, then the per-block
  // form frees the other 63 and lists this one, as FreePagesBulk always did.
  const uint64_t gone = (*pages)[10].pfn();
  ASSERT_TRUE(lease_->FreePages(gone, 0).ok());
  absl::StatusOr<v1::FreePagesBulkResponse> r = lease_->FreePagesBulk(*pages);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_freed(), 63u);
  ASSERT_THAT(r->refused(), SizeIs(1));
  EXPECT_EQ(r->refused(0).pfn(), gone);
  EXPECT_EQ(r->refused(0).code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(BulkRunsClient, HandlesOfHigherOrdersGoInThePerBlockForm) {
  absl::StatusOr<std::vector<PageHandle>> pages = lease_->AllocPagesBulk("GFP_KERNEL", 8);
  ASSERT_TRUE(pages.ok()) << pages.status();
  absl::StatusOr<PageHandle> block = lease_->AllocPages("GFP_KERNEL", 3);
  ASSERT_TRUE(block.ok()) << block.status();
  pages->push_back(*std::move(block));
  absl::StatusOr<v1::FreePagesBulkResponse> r = lease_->FreePagesBulk(*pages);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_freed(), 16u);
  EXPECT_EQ(r->blocks_freed(), 9u);
  EXPECT_EQ(AllocatedPages(), 0u);
}

}  // namespace
}  // namespace physmem::client
