// Tests clients/physmem_client.h against the real physmemd, started as a process per test.
//
// Time: leases that must stay alive get TTLs no slow machine outruns, and leases that must expire
// are expired by the daemon's lease clock (LeaseClockClientTest), not by racing a short TTL. The
// client's keep-alive renews every ttl/4 in real time: the tests of it scale the TTL by
// TimeScale() (tests/time_scale.h) and count renewals rather than sleeping. Real-time guarantees
// (Connect gives up, a destructor returns promptly, a waiting allocation ends at its bound) keep
// their bounds, scaled to the build.

#include "clients/physmem_client.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "allocator/target.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/clients/client_options.h"
#include "tests/daemon_process.h"

namespace physmem::client {
namespace {

using ::physmem::testing::DaemonProcess;
using ::physmem::testing::ScaledTimeout;
using ::physmem::testing::TimeScale;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAre;
using Clock = std::chrono::steady_clock;

using testing::kSmallI386;
// 1 GiB on i386: 896 MiB of lowmem, the rest HighMem (reached through kmap()).
const std::vector<std::string> kI386WithHighmem = {"--target=i386", "--mem_mb=1024"};
using testing::kLongTtlMs;

// Deadlines that only bound a hang: sanitized daemons on a busy machine are slow.
int64_t HangBoundMs() { return ScaledTimeout(std::chrono::seconds(20)).count(); }

using testing::OptionsFor;

std::string Uid() { return "uid:" + std::to_string(::getuid()); }

using physmem::testing::Eventually;

class ClientTest : public ::testing::Test {
 protected:
  explicit ClientTest(std::vector<std::string> daemon_args = kSmallI386) : daemon_(std::move(daemon_args)) {}

  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    client_ = Connect();
    ASSERT_NE(client_, nullptr);
    absl::StatusOr<v1::GetTargetResponse> t = client_->GetTarget();
    ASSERT_TRUE(t.ok()) << t.status();
    target_ = *t;
  }

  std::unique_ptr<Client> Connect(ClientOptions o) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status() << "\n" << daemon_.log();
    return c.ok() ? *std::move(c) : nullptr;
  }
  std::unique_ptr<Client> Connect() { return Connect(OptionsFor(daemon_)); }

  // By default a lease of an hour, kept alive: nothing in the test can outrun it.
  static LeaseOptions LongLived() {
    LeaseOptions o;
    o.ttl_ms = kLongTtlMs;
    return o;
  }
  std::unique_ptr<Lease> NewLease(LeaseOptions o = LongLived()) {
    absl::StatusOr<std::unique_ptr<Lease>> lease = client_->CreateLease(o);
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.ok() ? *std::move(lease) : nullptr;
  }

  // The allocator's census, asked over a separate connection.
  v1::ValidateResponse Census() {
    std::unique_ptr<Client> other = Connect();
    absl::StatusOr<v1::ValidateResponse> v = other->Validate();
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : v1::ValidateResponse();
  }
  uint64_t AllocatedPages() { return Census().allocated_pages(); }

  uint64_t page_size() const { return target_.profile().page_size(); }
  // page_address() of a lowmem pfn: PAGE_OFFSET + (phys - PHYS_OFFSET).
  uint64_t DirectMapAddress(uint64_t pfn) const {
    return target_.profile().page_offset() + pfn * page_size() - target_.profile().phys_offset();
  }

  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  v1::GetTargetResponse target_;
};

// A daemon whose lease clock the test advances (DaemonProcess::UseLeaseClock): its leases expire
// when the test says, not while a slow machine is still making calls into them.
class LeaseClockClientTest : public ClientTest {
 protected:
  void SetUp() override {
    daemon_.UseLeaseClock();
    ClientTest::SetUp();
  }
  // Moves the lease clock `by` forward and waits (scaled) for the reaper to end `lease`.
  bool ExpireByClock(uint64_t lease, std::chrono::milliseconds by) {
    daemon_.AdvanceLeaseClock(by);
    return daemon_.WaitForLog("event=lease_expired lease=" + std::to_string(lease) + " ");
  }
};

// ---- TLS ----

// A CA, a server certificate for 127.0.0.1 and a client certificate (CN=test-client), made with
// the openssl command in a temporary directory.
class TlsFiles {
 public:
  TlsFiles() {
    char tmpl[] = "/tmp/physmem-tls-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    const std::string script = absl::StrFormat(
        "cd %s && "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem "
        "-days 2 -subj /CN=physmem-test-ca && "
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext && "
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr "
        "-subj /CN=localhost && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
        "-extfile server.ext && "
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout client.key -out client.csr "
        "-subj /CN=test-client && "
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2",
        dir_);
    ok_ = std::system((script + " > openssl.log 2>&1").c_str()) == 0;
  }
  ~TlsFiles() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  bool ok() const { return ok_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
  bool ok_ = false;
};

bool HaveOpenssl() { return std::system("command -v openssl > /dev/null 2>&1") == 0; }

class MutualTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveOpenssl()) GTEST_SKIP() << "needs the openssl command to make certificates";
    ASSERT_TRUE(tls_.ok()) << "openssl failed; see " << tls_.path("openssl.log");
    daemon_ = std::make_unique<DaemonProcess>(
        std::vector<std::string>{"--target=i386", "--mem_mb=64", "--tls_cert=" + tls_.path("server.pem"),
                                 "--tls_key=" + tls_.path("server.key"), "--tls_client_ca=" + tls_.path("ca.pem")},
        /*tcp=*/true);
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  }

  ClientOptions TcpOptions() const {
    ClientOptions o;
    o.target = absl::StrFormat("127.0.0.1:%d", daemon_->tcp_port());
    o.tls_ca_file = tls_.path("ca.pem");
    o.connect_timeout_ms = o.call_timeout_ms = HangBoundMs();
    return o;
  }

  TlsFiles tls_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(MutualTlsTest, IdentifiesTheCallerByItsCertificateSubject) {
  ClientOptions o = TcpOptions();
  o.tls_cert_file = tls_.path("client.pem");
  o.tls_key_file = tls_.path("client.key");
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status() << "\n" << daemon_->log();
  absl::StatusOr<std::unique_ptr<Lease>> lease = (*c)->CreateLease({});
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<v1::LeaseInfo> info = (*lease)->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->identity(), "x509:CN=test-client");
}

TEST_F(MutualTlsTest, ConnectWithoutAClientCertificateIsUnavailable) {
  ClientOptions o = TcpOptions();
  o.connect_timeout_ms = 500;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
}

// ---- Client ----

TEST_F(ClientTest, ConnectReachesTheDaemonOnItsUnixSocket) {
  EXPECT_EQ(target_.profile().name(), "i386");
  EXPECT_GT(target_.total_pages(), 0u);
}

TEST(ClientConnect, FailsWithUnavailableWhenNoSocketExists) {
  char dir[] = "/tmp/physmem-client-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  ClientOptions o;
  o.target = std::string("unix://") + dir + "/absent.sock";
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  ::rmdir(dir);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("no such socket file"));
}

TEST(ClientConnect, FailsWithUnavailableWithinItsTimeoutWhenTheDaemonIsDead) {
  DaemonProcess d(kSmallI386);
  ASSERT_TRUE(d.Start()) << d.log();
  d.Kill(SIGKILL);
  ASSERT_TRUE(d.WaitExit(ScaledTimeout(std::chrono::seconds(5))).has_value());
  ClientOptions o = OptionsFor(d);  // the socket file is still there; nothing accepts on it
  o.connect_timeout_ms = 300;
  const auto start = Clock::now();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  // It gives up near its 300 ms, far from the 20 s (scaled) call deadlines of OptionsFor.
  EXPECT_LT(Clock::now() - start, ScaledTimeout(std::chrono::seconds(3)));
}

TEST(ClientConnect, RefusesTlsOptionsForAUnixTarget) {
  ClientOptions o;
  o.target = "unix:///tmp/whatever.sock";
  o.tls_ca_file = "/tmp/ca.pem";
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("TCP"));
}

TEST(ClientConnect, RefusesACertificateWithoutItsKey) {
  ClientOptions o;
  o.target = "localhost:1";
  o.tls_cert_file = "/tmp/cert.pem";
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
}

TEST(ClientConnect, ReportsAnUnreadableCaFileAsNotFound) {
  ClientOptions o;
  o.target = "localhost:1";
  o.tls_ca_file = "/nonexistent/ca.pem";
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kNotFound) << c.status();
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/ca.pem"));
}

TEST_F(ClientTest, GetZoneInfoCountsEveryPageFreeOnAnIdleDaemon) {
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  uint64_t free = 0, present = 0;
  for (const v1::ZoneInfo& z : info->zones()) {
    free += z.free_pages();
    present += z.present_pages();
  }
  // GetTarget's total_pages counts the pages the allocator manages; present pages also hold the
  // i386 built-in's memblock-reserved first megabyte (reserve_real_mode()), 158 RAM pages.
  EXPECT_EQ(free, target_.total_pages());
  EXPECT_EQ(present, physmem::FromProto(target_.profile()).total_pages());
  EXPECT_EQ(present, target_.total_pages() + 158);
  EXPECT_FALSE(info->buddyinfo().empty());
}

TEST_F(ClientTest, ValidateCountsThePagesALeaseHolds) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(p.ok()) << p.status();
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.allocated_pages(), 4u);
  EXPECT_EQ(v.lease_pages(), 4u);
  EXPECT_EQ(v.free_pages() + v.allocated_pages(), v.total_pages());
  EXPECT_EQ(v.leases(), 1u);
}

TEST_F(ClientTest, ListLeasesShowsTheCallersLeasesWithTheirNames) {
  LeaseOptions a, b;
  a.name = "rx";
  b.name = "tx";
  std::unique_ptr<Lease> la = NewLease(a), lb = NewLease(b);
  absl::StatusOr<v1::ListLeasesResponse> list = client_->ListLeases();
  ASSERT_TRUE(list.ok()) << list.status();
  std::set<std::string> names;
  for (const v1::LeaseInfo& l : list->leases()) {
    names.insert(l.name());
    EXPECT_EQ(l.identity(), Uid());
  }
  EXPECT_THAT(names, UnorderedElementsAre("rx", "tx"));
}

TEST_F(ClientTest, CreateLeaseGrantsTheRequestedTtlAndQuota) {
  LeaseOptions o;
  o.ttl_ms = kLongTtlMs;
  o.page_quota = 64;
  std::unique_ptr<Lease> lease = NewLease(o);
  EXPECT_EQ(lease->granted_ttl_ms(), kLongTtlMs);
  EXPECT_EQ(lease->page_quota(), 64u);
  absl::StatusOr<v1::LeaseInfo> info = client_->GetLease(lease->id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->page_quota(), 64u);
  EXPECT_GT(info->ttl_ms(), 0);
  EXPECT_LE(info->ttl_ms(), kLongTtlMs);
}

TEST_F(ClientTest, RenewLeaseByIdAnswersTheGrantedTtl) {
  LeaseOptions o;
  o.ttl_ms = kLongTtlMs;  // no keep-alive: it must not expire before the renewals below
  o.keepalive = false;
  std::unique_ptr<Lease> lease = NewLease(o);
  absl::StatusOr<v1::KeepAliveResponse> r = client_->RenewLease(lease->id());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ttl_ms(), kLongTtlMs);
  absl::StatusOr<v1::KeepAliveResponse> again = lease->Renew();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->lease_id(), lease->id());
}

TEST_F(ClientTest, RevokeLeaseByIdFreesItsPages) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 3);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  absl::StatusOr<uint64_t> freed = client_->RevokeLease(lease->id());
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 8u);
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, AttachLeaseTakesChargeOfAnExistingLease) {
  std::unique_ptr<Lease> owner = NewLease();
  absl::StatusOr<std::unique_ptr<Lease>> attached = Connect()->AttachLease(owner->id());
  ASSERT_TRUE(attached.ok()) << attached.status();
  absl::StatusOr<PageHandle> p = (*attached)->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<v1::LeaseInfo> info = owner->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pages_held(), 1u);
}

TEST_F(ClientTest, AttachedLeaseIsNotRevokedWhenItsObjectIsDestroyed) {
  std::unique_ptr<Lease> owner = NewLease();
  {
    absl::StatusOr<std::unique_ptr<Lease>> attached = client_->AttachLease(owner->id());
    ASSERT_TRUE(attached.ok()) << attached.status();
  }
  EXPECT_TRUE(client_->GetLease(owner->id()).ok());
}

// ---- Lease: allocation ----

class AllocOrderTest : public ClientTest, public ::testing::WithParamInterface<uint32_t> {};

TEST_P(AllocOrderTest, AllocPagesReturnsAnAlignedBlockOfTheOrder) {
  const uint32_t order = GetParam();
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", order);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->order(), order);
  EXPECT_EQ(p->pfn() % (uint64_t{1} << order), 0u);
  EXPECT_EQ(p->phys_addr(), p->pfn() * page_size());
  EXPECT_EQ(p->virt_addr(), DirectMapAddress(p->pfn()));
  EXPECT_EQ(p->zone(), "Normal");  // GFP_KERNEL's highest zone, with room to spare
  EXPECT_EQ(p->lease_id(), lease->id());
  EXPECT_EQ(AllocatedPages(), uint64_t{1} << order);
}

INSTANTIATE_TEST_SUITE_P(Orders, AllocOrderTest, ::testing::Values(0u, 1u, 3u, 6u, 10u));

TEST_F(ClientTest, AllocPagesWithAKeyReplaysTheSameBlock) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> first = lease->AllocPages("GFP_KERNEL", 1, "rx-ring");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<PageHandle> retry = lease->AllocPages("GFP_KERNEL", 1, "rx-ring");
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->pfn(), first->pfn());
  EXPECT_TRUE(retry->replayed());
  EXPECT_FALSE(first->replayed());
  EXPECT_EQ(first->key(), "rx-ring");
  retry->Release();  // one block, one free
  EXPECT_EQ(AllocatedPages(), 2u);
}

TEST_F(ClientTest, AllocPagesHonoursTheZoneModifier) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL|__GFP_DMA", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->zone(), "DMA");
}

TEST_F(ClientTest, GetFreePagesReturnsTheDirectMapAddress) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->GetFreePages("GFP_KERNEL", 2);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->order(), 2u);
  EXPECT_EQ(p->virt_addr(), DirectMapAddress(p->pfn()));
}

TEST_F(ClientTest, GetZeroedPageReturnsOneOrderZeroPage) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->GetZeroedPage("GFP_KERNEL");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->order(), 0u);
  EXPECT_NE(p->virt_addr(), 0u);
  EXPECT_EQ(AllocatedPages(), 1u);
}

TEST_F(ClientTest, AllocPagesBulkReturnsDistinctOrderZeroPages) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<std::vector<PageHandle>> pages = lease->AllocPagesBulk("GFP_KERNEL", 32);
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_THAT(*pages, SizeIs(32));
  std::set<uint64_t> pfns;
  for (const PageHandle& p : *pages) {
    EXPECT_EQ(p.order(), 0u);
    EXPECT_EQ(p.zone(), "Normal");
    EXPECT_EQ(p.phys_addr(), p.pfn() * page_size());
    EXPECT_EQ(p.virt_addr(), DirectMapAddress(p.pfn()));
    pfns.insert(p.pfn());
  }
  EXPECT_EQ(pfns.size(), 32u);
  EXPECT_EQ(AllocatedPages(), 32u);
  pages->clear();
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, FreePagesBulkFreesEveryHandleInOneCall) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<std::vector<PageHandle>> pages = lease->AllocPagesBulk("GFP_KERNEL", 48);
  ASSERT_TRUE(pages.ok()) << pages.status();
  absl::StatusOr<PageHandle> block = lease->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(block.ok()) << block.status();
  pages->push_back(*std::move(block));
  absl::StatusOr<v1::FreePagesBulkResponse> r = lease->FreePagesBulk(*pages);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_freed(), 52u);
  EXPECT_EQ(r->blocks_freed(), 49u);
  EXPECT_THAT(r->refused(), SizeIs(0));
  for (const PageHandle& p : *pages) EXPECT_FALSE(p.owns());
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, FreePagesBulkReportsTheBlocksItRefused) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<std::vector<PageHandle>> pages = lease->AllocPagesBulk("GFP_KERNEL", 4);
  ASSERT_TRUE(pages.ok()) << pages.status();
  const uint64_t already_freed = (*pages)[1].pfn();
  ASSERT_TRUE(lease->FreePages(already_freed, 0).ok());
  absl::StatusOr<v1::FreePagesBulkResponse> r = lease->FreePagesBulk(*pages);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_freed(), 3u);
  ASSERT_THAT(r->refused(), SizeIs(1));
  EXPECT_EQ(r->refused(0).pfn(), already_freed);
  EXPECT_EQ(r->refused(0).code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
}

TEST_F(ClientTest, FreePagesBulkRefusesAnotherLeasesHandles) {
  std::unique_ptr<Lease> mine = NewLease(), other = NewLease();
  absl::StatusOr<std::vector<PageHandle>> pages = other->AllocPagesBulk("GFP_KERNEL", 2);
  ASSERT_TRUE(pages.ok()) << pages.status();
  EXPECT_EQ(mine->FreePagesBulk(*pages).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*pages)[0].owns());
  EXPECT_EQ(AllocatedPages(), 2u);
}

// ---- Lease: frees and addresses ----

TEST_F(ClientTest, FreePagesByPfnFreesAReleasedBlock) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  absl::StatusOr<uint64_t> freed = lease->FreePages(p->pfn(), 2);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 4u);
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, FreePagesByKeyFreesTheBlockAllocatedWithIt) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 1, "k");
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  absl::StatusOr<uint64_t> freed = lease->FreePagesByKey("k");
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 2u);
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, FreePagesByAddressFreesTheBlockAtThatAddress) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->GetFreePages("GFP_KERNEL", 1);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  absl::StatusOr<uint64_t> freed = lease->FreePagesByAddress(p->virt_addr(), 1);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 2u);
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, PageAddressOfALowmemPageIsItsDirectMapAddress) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<uint64_t> addr = lease->PageAddress(p->pfn());
  ASSERT_TRUE(addr.ok()) << addr.status();
  EXPECT_EQ(*addr, DirectMapAddress(p->pfn()));
}

class HighmemClientTest : public ClientTest {
 protected:
  HighmemClientTest() : ClientTest(kI386WithHighmem) {}
};

TEST_F(HighmemClientTest, KmapMapsAHighmemPageIntoThePkmapWindowUntilKunmap) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_HIGHUSER", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->zone(), "HighMem");
  EXPECT_EQ(p->virt_addr(), 0u);  // no permanent address

  absl::StatusOr<uint64_t> mapped = lease->Kmap(p->pfn());
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  const uint64_t base = target_.profile().pkmap_base();
  EXPECT_GE(*mapped, base);
  EXPECT_LT(*mapped, base + uint64_t{target_.profile().pkmap_slots()} * page_size());
  absl::StatusOr<uint64_t> while_mapped = lease->PageAddress(p->pfn());
  ASSERT_TRUE(while_mapped.ok()) << while_mapped.status();
  EXPECT_EQ(*while_mapped, *mapped);

  ASSERT_TRUE(lease->Kunmap(p->pfn()).ok());
  absl::StatusOr<uint64_t> after = lease->PageAddress(p->pfn());
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *mapped);  // kunmap_high() leaves the slot mapped until the window wraps
}

TEST_F(ClientTest, InfoReportsHoldingsByZoneAndOrder) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> a = lease->AllocPages("GFP_KERNEL", 2);
  absl::StatusOr<PageHandle> b = lease->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<v1::LeaseInfo> info = lease->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->lease_id(), lease->id());
  EXPECT_EQ(info->pages_held(), 8u);
  ASSERT_THAT(info->holdings(), SizeIs(1));
  EXPECT_EQ(info->holdings(0).zone(), "Normal");
  EXPECT_EQ(info->holdings(0).order(), 2u);
  EXPECT_EQ(info->holdings(0).blocks(), 2u);
}

// ---- Lease: lifetime ----

TEST_F(ClientTest, RevokeFreesEveryPageAndLaterCallsFailFastWithNotFound) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 1);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<uint64_t> freed = lease->Revoke();
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 2u);
  EXPECT_TRUE(lease->gone());
  EXPECT_EQ(lease->AllocPages("GFP_KERNEL", 0).status().code(), absl::StatusCode::kNotFound);
  // The handle's block went with the lease: its Free says so.
  EXPECT_EQ(p->Free().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, DestroyingALeaseRevokesIt) {
  uint64_t id = 0;
  {
    std::unique_ptr<Lease> lease = NewLease();
    id = lease->id();
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 3);
    ASSERT_TRUE(p.ok()) << p.status();
    p->Release();
  }
  std::unique_ptr<Client> other = Connect();
  absl::StatusOr<v1::ListLeasesResponse> list = other->ListLeases();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_THAT(list->leases(), SizeIs(0));
  EXPECT_EQ(other->GetLease(id).status().code(), absl::StatusCode::kNotFound);
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.allocated_pages(), 0u);
  EXPECT_EQ(v.leases(), 0u);
}

TEST_F(ClientTest, KeepAliveHoldsAShortTtlLeasePastItsTtl) {
  // The keep-alive renews every ttl/4 in real time: a TTL scaled to the build gives a slow
  // machine the same margin (two renewals) that a fast one has.
  LeaseOptions o;
  o.ttl_ms = 1000 * TimeScale();
  const auto created = Clock::now();
  std::unique_ptr<Lease> lease = NewLease(o);
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  // The first renewal comes at once, then one every ttl/4: the sixth is at least 5 × ttl/4 after
  // the lease was granted, when it would have expired without them.
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::seconds(15)), [&] { return lease->renewals() >= 6; }))
      << lease->renewals() << " renewals; " << lease->keepalive_status();
  EXPECT_GT(Clock::now() - created, std::chrono::milliseconds(o.ttl_ms));
  absl::StatusOr<v1::LeaseInfo> info = Connect()->GetLease(lease->id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pages_held(), 1u);
  EXPECT_FALSE(lease->gone());
  EXPECT_TRUE(lease->keepalive_status().ok()) << lease->keepalive_status();
}

TEST_F(LeaseClockClientTest, ALeaseWithoutKeepAliveExpiresAfterItsTtl) {
  LeaseOptions o;
  o.ttl_ms = kLongTtlMs;
  o.keepalive = false;
  std::unique_ptr<Lease> lease = NewLease(o);
  ASSERT_TRUE(lease->AllocPages("GFP_KERNEL", 0).ok());  // handle dropped: freed at once
  absl::StatusOr<PageHandle> held = lease->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(held.ok()) << held.status();
  held->Release();
  // Most of its TTL later (all but a minute, scaled, for the real time this test takes) it is
  // still there with its pages...
  const std::chrono::milliseconds slack = ScaledTimeout(std::chrono::seconds(60));
  daemon_.AdvanceLeaseClock(std::chrono::milliseconds(o.ttl_ms) - slack);
  ASSERT_TRUE(lease->Info().ok()) << "expired before its TTL";
  EXPECT_EQ(AllocatedPages(), 4u);
  // ...and past its TTL the reaper ends it and its pages go back.
  ASSERT_TRUE(ExpireByClock(lease->id(), slack + std::chrono::milliseconds(1))) << daemon_.log();
  EXPECT_EQ(AllocatedPages(), 0u);
  EXPECT_EQ(lease->Info().status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LeaseClockClientTest, AReleasedLeaseOutlivesItsObjectThenExpiresWithItsPages) {
  LeaseOptions o;
  o.ttl_ms = kLongTtlMs;  // renewed at once by the keep-alive, which stops with the object
  uint64_t id = 0;
  {
    std::unique_ptr<Lease> lease = NewLease(o);
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 2);
    ASSERT_TRUE(p.ok()) << p.status();
    p->Release();
    id = lease->Release();
  }
  std::unique_ptr<Client> other = Connect();
  ASSERT_TRUE(other->GetLease(id).ok()) << "the lease must survive its object";
  EXPECT_EQ(AllocatedPages(), 4u);
  // Its last renewal was before the drop: one TTL after the drop, it is gone and its pages back.
  ASSERT_TRUE(ExpireByClock(id, std::chrono::milliseconds(o.ttl_ms + 1))) << daemon_.log();
  EXPECT_EQ(other->GetLease(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, KeepAliveNoticesALeaseRevokedElsewhereAndCallsFailFast) {
  // Renewals every ttl/4 in real time (150 ms on the normal build), scaled like the wait for the
  // next one: the keep-alive holds the lease until the revoke, and notices it at its next renewal.
  LeaseOptions o;
  o.ttl_ms = 600 * TimeScale();
  std::vector<int64_t> ttls;
  std::mutex mu;
  o.on_keepalive = [&](const v1::KeepAliveResponse& r) {
    std::lock_guard<std::mutex> l(mu);
    ttls.push_back(r.ttl_ms());
  };
  std::unique_ptr<Lease> lease = NewLease(o);
  ASSERT_TRUE(Connect()->RevokeLease(lease->id()).ok());
  ASSERT_TRUE(Eventually(ScaledTimeout(std::chrono::milliseconds(1000)), [&] { return lease->gone(); }));
  {
    std::lock_guard<std::mutex> l(mu);
    ASSERT_FALSE(ttls.empty());
    EXPECT_EQ(ttls.back(), 0);
  }
  absl::Status s = lease->AllocPages("GFP_KERNEL", 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("ttl_ms 0"));  // answered locally
}

TEST_F(ClientTest, DestroyingALeaseReturnsPromptlyWhenTheDaemonDied) {
  // A long TTL: the keep-alive's stream waits for the channel while the daemon is away, and the
  // destructor must not wait for it (nor can the lease expire before the kill).
  LeaseOptions o;
  o.ttl_ms = kLongTtlMs;
  std::unique_ptr<Lease> lease = NewLease(o);
  daemon_.Kill(SIGKILL);
  ASSERT_TRUE(daemon_.WaitExit(ScaledTimeout(std::chrono::seconds(5))).has_value());
  EXPECT_EQ(lease->AllocPages("GFP_KERNEL", 0).status().code(), absl::StatusCode::kUnavailable);
  const auto start = Clock::now();
  lease.reset();
  // Far from the call deadline (20 s, scaled) its revoke could have waited for.
  EXPECT_LT(Clock::now() - start, ScaledTimeout(std::chrono::seconds(3)));
}

// ---- PageHandle ----

TEST_F(ClientTest, DestroyingAHandleFreesItsBlock) {
  std::unique_ptr<Lease> lease = NewLease();
  {
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 3);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(AllocatedPages(), 8u);
  }
  EXPECT_EQ(AllocatedPages(), 0u);
}

TEST_F(ClientTest, AReleasedHandleLeavesItsBlockAllocated) {
  std::unique_ptr<Lease> lease = NewLease();
  uint64_t pfn = 0;
  {
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 1);
    ASSERT_TRUE(p.ok()) << p.status();
    p->Release();
    EXPECT_FALSE(p->owns());
    pfn = p->pfn();
  }
  EXPECT_EQ(AllocatedPages(), 2u);
  EXPECT_TRUE(lease->FreePages(pfn, 1).ok());
}

TEST_F(ClientTest, AMovedHandleFreesItsBlockOnce) {
  std::unique_ptr<Lease> lease = NewLease();
  {
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 0);
    ASSERT_TRUE(p.ok()) << p.status();
    PageHandle moved = *std::move(p);
    EXPECT_TRUE(moved.owns());
    std::vector<PageHandle> v;
    v.push_back(std::move(moved));
    EXPECT_FALSE(moved.owns());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  }
  EXPECT_EQ(AllocatedPages(), 0u);
  absl::StatusOr<v1::LeaseInfo> info = lease->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->pages_held(), 0u);
}

TEST_F(ClientTest, FreeingAHandleTwiceIsFailedPrecondition) {
  std::unique_ptr<Lease> lease = NewLease();
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->Free().ok());
  EXPECT_EQ(p->Free().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(AllocatedPages(), 0u);
}

// ---- Errors: the server's code and message, unchanged ----

struct ErrorCase {
  std::string name;
  std::function<absl::Status(Client&, Lease&)> call;
  absl::StatusCode code;
  std::string message_part;
};

class ClientErrorTest : public ClientTest, public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(ClientErrorTest, CarriesTheServersCodeAndMessage) {
  LeaseOptions o;
  o.page_quota = 4;
  std::unique_ptr<Lease> lease = NewLease(o);
  const absl::Status s = GetParam().call(*client_, *lease);
  EXPECT_EQ(s.code(), GetParam().code) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(GetParam().message_part));
}

INSTANTIATE_TEST_SUITE_P(
    Errors, ClientErrorTest,
    ::testing::Values(
        ErrorCase{"UnknownGfpName",
                  [](Client&, Lease& l) { return l.AllocPages("GFP_BOGUS", 0).status(); },
                  absl::StatusCode::kInvalidArgument, "GFP_BOGUS"},
        ErrorCase{"ImpossibleZoneCombination",
                  [](Client&, Lease& l) { return l.AllocPages("GFP_KERNEL|__GFP_DMA|__GFP_DMA32", 0).status(); },
                  absl::StatusCode::kInvalidArgument, ""},
        ErrorCase{"OrderAboveMaxPageOrder",
                  [](Client&, Lease& l) { return l.AllocPages("GFP_KERNEL", 11).status(); },
                  absl::StatusCode::kInvalidArgument, "MAX_PAGE_ORDER"},
        ErrorCase{"UnknownLeaseById", [](Client& c, Lease&) { return c.GetLease(987654).status(); },
                  absl::StatusCode::kNotFound, "987654"},
        ErrorCase{"AttachToUnknownLease", [](Client& c, Lease&) { return c.AttachLease(987654).status(); },
                  absl::StatusCode::kNotFound, "987654"},
        ErrorCase{"TtlBelowTheMinimum",
                  [](Client& c, Lease&) {
                    LeaseOptions o;
                    o.ttl_ms = 1;
                    return c.CreateLease(o).status();
                  },
                  absl::StatusCode::kInvalidArgument, "ttl_ms"},
        ErrorCase{"QuotaExceeded", [](Client&, Lease& l) { return l.AllocPages("GFP_KERNEL", 3).status(); },
                  absl::StatusCode::kResourceExhausted, "quota"},
        ErrorCase{"FreeOfAPageNotAllocated",
                  [](Client&, Lease& l) {
                    absl::StatusOr<PageHandle> p = l.AllocPages("GFP_KERNEL", 0);
                    if (!p.ok()) return p.status();
                    if (absl::Status s = p->Free(); !s.ok()) return s;
                    return l.FreePages(p->pfn(), 0).status();
                  },
                  absl::StatusCode::kFailedPrecondition, "not allocated"},
        ErrorCase{"FreeByUnknownKey", [](Client&, Lease& l) { return l.FreePagesByKey("nope").status(); },
                  absl::StatusCode::kNotFound, "nope"},
        ErrorCase{"GetFreePagesWithHighmem",
                  [](Client&, Lease& l) { return l.GetFreePages("GFP_HIGHUSER", 0).status(); },
                  absl::StatusCode::kFailedPrecondition, "__GFP_HIGHMEM"},
        ErrorCase{"PfnBeyondTheEndOfRam", [](Client&, Lease& l) { return l.PageAddress(uint64_t{1} << 40).status(); },
                  absl::StatusCode::kOutOfRange, ""}),
    [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.name; });

// Takes every page GFP_KERNEL may have into `all`, in bulk (bulk never waits).
void TakeEveryPage(Lease& lease, std::vector<PageHandle>* all) {
  for (;;) {
    absl::StatusOr<std::vector<PageHandle>> more = lease.AllocPagesBulk("GFP_KERNEL", 4096);
    if (!more.ok()) {
      ASSERT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted) << more.status();
      return;
    }
    for (PageHandle& p : *more) all->push_back(std::move(p));
  }
}

// The daemon waits for memory up to the caller's deadline (less a margin), here far shorter
// than its own --max_alloc_wait_ms.
class ClientDeadlineTest : public ClientTest {
 protected:
  ClientDeadlineTest()
      : ClientTest({"--target=i386", "--mem_mb=64",
                    "--max_alloc_wait_ms=" + std::to_string(ScaledTimeout(std::chrono::seconds(30)).count())}) {}
};

TEST_F(ClientDeadlineTest, ABlockingAllocationGivesUpWithinTheConfiguredDeadline) {
  ClientOptions o = OptionsFor(daemon_);
  o.alloc_timeout_ms = 600;
  std::unique_ptr<Client> c = Connect(o);
  absl::StatusOr<std::unique_ptr<Lease>> lease = c->CreateLease({});
  ASSERT_TRUE(lease.ok()) << lease.status();
  std::vector<PageHandle> all;
  ASSERT_NO_FATAL_FAILURE(TakeEveryPage(**lease, &all));
  const auto start = Clock::now();
  absl::Status s = (*lease)->AllocPages("GFP_KERNEL", 0).status();
  const auto waited = Clock::now() - start;
  // The daemon answers RESOURCE_EXHAUSTED 50 ms before the caller's deadline; on a loaded machine
  // that answer may arrive after it, and the client reports its own DEADLINE_EXCEEDED. Either
  // way the call ended at the client's 600 ms, not at the daemon's 30 s wait.
  EXPECT_THAT(s.code(), ::testing::AnyOf(absl::StatusCode::kResourceExhausted, absl::StatusCode::kDeadlineExceeded))
      << s;
  EXPECT_GE(waited, std::chrono::milliseconds(300));  // it did wait for memory
  EXPECT_LT(waited, ScaledTimeout(std::chrono::milliseconds(1500)));
  for (PageHandle& p : all) p.Release();  // the lease's end frees them at once
}

// The caller would wait far longer (its deadline only bounds a hang); the daemon's
// --max_alloc_wait_ms ends the wait.
class DaemonWaitBoundTest : public ClientTest {
 protected:
  DaemonWaitBoundTest() : ClientTest({"--target=i386", "--mem_mb=64", "--max_alloc_wait_ms=600"}) {}
};

TEST_F(DaemonWaitBoundTest, ABlockingAllocationGivesUpWithResourceExhaustedAtTheDaemonsLongestWait) {
  ClientOptions o = OptionsFor(daemon_);
  o.alloc_timeout_ms = HangBoundMs();
  std::unique_ptr<Client> c = Connect(o);
  absl::StatusOr<std::unique_ptr<Lease>> lease = c->CreateLease({});
  ASSERT_TRUE(lease.ok()) << lease.status();
  std::vector<PageHandle> all;
  ASSERT_NO_FATAL_FAILURE(TakeEveryPage(**lease, &all));
  const auto start = Clock::now();
  absl::Status s = (*lease)->AllocPages("GFP_KERNEL", 0).status();
  const auto waited = Clock::now() - start;
  // The daemon's answer, code and message, unchanged: it waited its --max_alloc_wait_ms.
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("(waited 600 ms for memory to be freed)"));
  EXPECT_GE(waited, std::chrono::milliseconds(300));  // it did wait for memory
  EXPECT_LT(waited, ScaledTimeout(std::chrono::milliseconds(1500)));
  for (PageHandle& p : all) p.Release();  // the lease's end frees them at once
}

}  // namespace
}  // namespace physmem::client
