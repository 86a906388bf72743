// Two real identities over the Unix socket: the test runs as root (uid 0, identity "uid:0") and
// starts a second client as uid 65534 (nobody), which the daemon names "uid:65534" from the
// socket's peer credentials. The second client is this very test binary, re-executed after
// setgid/setuid with PHYSMEM_PEER set: a static initializer sees the variable, runs the peer's
// script with real gRPC calls, prints one line per call and exits before gtest's main runs.
//
// Proves: uid 65534 cannot see, renew, keep alive, revoke, allocate in, free, read, write, kmap,
// kunmap or page_address uid 0's lease or pages (PERMISSION_DENIED each, and the census taken
// right after each call unchanged); and the per-identity limits stop one identity while the other
// still allocates its full share; and a page's bytes never reach the other uid on any path a block
// can leave a lease by (FreePages by pfn, key or address, FreePagesBulk, revoke, expiry, a clean
// stop, kill -9 and restart, kmapped HighMem blocks), without __GFP_ZERO (server/page_tenancy.h).
//
// Leases live a day: the peer makes some thirty calls, each followed by a Validate of a 1 GiB
// machine, which a sanitized build on a loaded machine can stretch past a minute.
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using v1::PhysMem;

constexpr uid_t kNobody = 65534;
constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;

// Calls here wait up to 10 s.
struct Ctx : testing::Deadline {
  Ctx() : Deadline(10000) {}
};

std::string CodeName(grpc::StatusCode c) {
  return std::string(absl::StatusCodeToString(static_cast<absl::StatusCode>(c)));
}

// ---- The peer (runs as uid 65534, in a child process) ----

// "name CODE allocated free lease_pages": the call's code and the census right after it.
void Report(PhysMem::Stub* s, const std::string& name, const grpc::Status& st, const std::string& extra = "") {
  v1::ValidateResponse v;
  Ctx ctx;
  s->Validate(&ctx, v1::ValidateRequest(), &v);
  std::printf("%s %s %llu %llu %llu %s\n", name.c_str(), CodeName(st.error_code()).c_str(),
              static_cast<unsigned long long>(v.allocated_pages()), static_cast<unsigned long long>(v.free_pages()),
              static_cast<unsigned long long>(v.lease_pages()), extra.c_str());
}


// Every use of the victim's lease `lease` and its page `pfn` (a highmem page, so kmap applies).
void PeerAttack(PhysMem::Stub* s, uint64_t lease, uint64_t pfn) {
  {
    v1::ListLeasesResponse out;
    Ctx ctx;
    grpc::Status st = s->ListLeases(&ctx, v1::ListLeasesRequest(), &out);
    Report(s, "list", st, absl::StrFormat("seen=%d", out.leases_size()));
  }
  auto each_lease = [&](uint64_t l, const std::string& tag) {
    {
      v1::GetLeaseRequest r;
      r.set_lease_id(l);
      v1::LeaseInfo out;
      Ctx ctx;
      Report(s, tag + "get", s->GetLease(&ctx, r, &out));
    }
    {
      v1::AllocPagesRequest r;
      r.set_lease_id(l);
      r.set_gfp("GFP_KERNEL");
      v1::Allocation out;
      Ctx ctx;
      Report(s, tag + "alloc", s->AllocPages(&ctx, r, &out));
    }
    {
      v1::AllocPagesBulkRequest r;
      r.set_lease_id(l);
      r.set_gfp("GFP_KERNEL");
      r.set_count(4);
      v1::AllocPagesBulkResponse out;
      Ctx ctx;
      Report(s, tag + "alloc_bulk", s->AllocPagesBulk(&ctx, r, &out));
    }
    {
      v1::FreePagesRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      v1::FreePagesResponse out;
      Ctx ctx;
      Report(s, tag + "free", s->FreePages(&ctx, r, &out));
    }
    {
      v1::FreePagesBulkRequest r;
      r.set_lease_id(l);
      r.add_pfn(pfn);
      v1::FreePagesBulkResponse out;
      Ctx ctx;
      grpc::Status st = s->FreePagesBulk(&ctx, r, &out);
      // Bulk frees report refusals per block: fold the block's code into the line.
      if (st.ok() && out.refused_size() == 1) {
        st = grpc::Status(static_cast<grpc::StatusCode>(out.refused(0).code()), out.refused(0).message());
      }
      Report(s, tag + "free_bulk", st);
    }
    {
      v1::ReadPagesRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      r.set_length(64);
      v1::ReadPagesResponse out;
      Ctx ctx;
      grpc::Status st = s->ReadPages(&ctx, r, &out);
      Report(s, tag + "read", st, absl::StrFormat("bytes=%d", out.data().size()));
    }
    {
      v1::WritePagesRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      r.set_data("stolen");
      v1::WritePagesResponse out;
      Ctx ctx;
      Report(s, tag + "write", s->WritePages(&ctx, r, &out));
    }
    {
      v1::KmapRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      v1::KmapResponse out;
      Ctx ctx;
      Report(s, tag + "kmap", s->Kmap(&ctx, r, &out));
    }
    {
      v1::KmapRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      v1::KunmapResponse out;
      Ctx ctx;
      Report(s, tag + "kunmap", s->Kunmap(&ctx, r, &out));
    }
    {
      v1::PageAddressRequest r;
      r.set_lease_id(l);
      r.set_pfn(pfn);
      v1::PageAddressResponse out;
      Ctx ctx;
      Report(s, tag + "address", s->PageAddress(&ctx, r, &out));
    }
  };
  each_lease(lease, "");
  {
    v1::KeepAliveRequest r;
    r.set_lease_id(lease);
    v1::KeepAliveResponse out;
    Ctx ctx;
    Report(s, "renew", s->RenewLease(&ctx, r, &out));
  }
  {
    Ctx ctx;
    auto stream = s->KeepAlive(&ctx);
    v1::KeepAliveRequest r;
    r.set_lease_id(lease);
    stream->Write(r);
    stream->WritesDone();
    v1::KeepAliveResponse out;
    while (stream->Read(&out)) {
    }
    Report(s, "keepalive", stream->Finish());
  }
  {
    Report(s, "revoke", testing::RevokeLease(s, lease));
  }
  // Its own, real lease, aimed at the victim's page: the block-ownership check must stop it.
  each_lease(testing::CreateLease(s, kDayMs), "own_");
}

// Allocates with each "gfp:order" step until refused (at most 5000 calls a step):
// "alloc:<gfp> OK-or-CODE ... got=<n> msg=<refusal>".
void PeerAlloc(PhysMem::Stub* s, const std::vector<std::string>& steps) {
  const uint64_t lease = testing::CreateLease(s, kDayMs);
  for (const std::string& step : steps) {
    int got = 0;
    grpc::Status st;
    for (; got < 5000; ++got) {
      st = testing::AllocPages(s, lease, step, 0, nullptr, 10000);
      if (!st.ok()) break;
    }
    std::string msg = st.error_message();
    for (char& c : msg) c = c == ' ' ? '_' : c;
    Report(s, "alloc:" + step, st, absl::StrFormat("got=%d msg=%s", got, msg));
  }
}

// Takes every order-`order` block of `gfp` it can get, at most `max_blocks` (no __GFP_ZERO), and
// reads each whole: "readall OK ... blocks=<n> dirty=<blocks with a non-zero byte> pfns=<p1>,...".
void PeerReadAll(PhysMem::Stub* s, uint32_t order, const std::string& gfp, int max_blocks) {
  const uint64_t lease = testing::CreateLease(s, kDayMs);
  int blocks = 0, dirty = 0;
  std::string pfns;
  while (blocks < max_blocks) {
    v1::Allocation a;
    if (!testing::AllocPages(s, lease, gfp, order, &a, 10000).ok()) break;
    v1::ReadPagesRequest r;
    r.set_lease_id(lease);
    r.set_pfn(a.pfn());
    r.set_length(uint64_t{4096} << order);
    v1::ReadPagesResponse out;
    Ctx ctx;
    if (!s->ReadPages(&ctx, r, &out).ok() || out.data().size() != r.length()) {
      std::printf("readall READ_FAILED 0 0 0 pfn=%llu\n", static_cast<unsigned long long>(a.pfn()));
      return;
    }
    ++blocks;
    if (out.data().find_first_not_of('\0') != std::string::npos) ++dirty;
    absl::StrAppend(&pfns, pfns.empty() ? "" : ",", a.pfn());
  }
  Report(s, "readall", grpc::Status::OK, absl::StrFormat("blocks=%d dirty=%d pfns=%s", blocks, dirty, pfns));
}

int RunPeer() {
  const char* socket = std::getenv("PHYSMEM_PEER_SOCKET");
  const char* script = std::getenv("PHYSMEM_PEER");
  auto stub = testing::ConnectStub(std::string("unix://") + socket);
  std::vector<std::string> words = absl::StrSplit(script, ' ', absl::SkipEmpty());
  if (words.size() == 3 && words[0] == "attack") {
    PeerAttack(stub.get(), std::stoull(words[1]), std::stoull(words[2]));
  } else if (words.size() >= 2 && words.size() <= 4 && words[0] == "readall") {
    // readall ORDER [GFP [MAX_BLOCKS]]
    PeerReadAll(stub.get(), static_cast<uint32_t>(std::stoul(words[1])),
                words.size() >= 3 ? words[2] : "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY",
                words.size() == 4 ? std::stoi(words[3]) : std::numeric_limits<int>::max());
  } else if (!words.empty() && words[0] == "alloc") {
    PeerAlloc(stub.get(), std::vector<std::string>(words.begin() + 1, words.end()));
  } else {
    std::printf("bad peer script '%s'\n", script);
    return 2;
  }
  std::fflush(stdout);
  return 0;
}

// The peer runs here, before main(), in the re-executed child.
[[maybe_unused]] const bool kPeerRan = [] {
  if (std::getenv("PHYSMEM_PEER") == nullptr) return false;
  std::_Exit(RunPeer());
}();

// ---- The test side (root) ----

struct PeerLine {
  std::string code;
  uint64_t allocated = 0, free = 0, lease_pages = 0;
  std::string extra;
};

// Runs the peer script as uid 65534; its lines by name.
std::map<std::string, PeerLine> RunAsNobody(const std::string& socket, const std::string& script, std::string* raw) {
  std::string self(4096, '\0');
  self.resize(::readlink("/proc/self/exe", self.data(), self.size()));
  std::vector<std::string> env_s = {"PHYSMEM_PEER=" + script, "PHYSMEM_PEER_SOCKET=" + socket};
  std::vector<char*> envp;
  for (std::string& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  char* argv[] = {self.data(), nullptr};
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(126);
    ::execve(self.c_str(), argv, envp.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "peer status " << status << "\n" << out;
  *raw = out;
  std::map<std::string, PeerLine> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream l(line);
    std::string name;
    PeerLine p;
    l >> name >> p.code >> p.allocated >> p.free >> p.lease_pages;
    std::getline(l, p.extra);
    lines[name] = p;
  }
  return lines;
}

class TwoUids : public testing::DaemonStubTest {
 protected:
  void SetUp() override {
    if (::getuid() != 0) GTEST_SKIP() << "needs root to run a client as uid 65534";
  }
  // The lease clock is the test's (tests/daemon_process.h): moving it shows whether the peer's
  // renewals took.
  void Start(std::vector<std::string> flags) {
    flags.insert(flags.begin(), {"--target=i386", "--mem_mb=64", "--unix_socket_mode=0666",
                                 "--max_alloc_wait_ms=200"});
    ASSERT_NO_FATAL_FAILURE(StartDaemon(std::move(flags), /*tcp=*/false, testing::LeaseClockMode::kTestControlled));
    // Let uid 65534 reach the socket in the daemon's private temporary directory.
    const std::string dir = std::filesystem::path(daemon_->socket_path()).parent_path();
    ASSERT_EQ(::chmod(dir.c_str(), 0711), 0);
  }
  grpc::Status Alloc(uint64_t lease, const std::string& gfp, v1::Allocation* out) {
    return testing::AllocPages(stub_.get(), lease, gfp, 0, out, 10000);
  }
  // Fills the order-9 block at `pfn` with `byte` (2 MiB: the daemon runs with --max_page_io_bytes=2097152).
  void FillBlock(uint64_t lease, uint64_t pfn, char byte) {
    v1::WritePagesRequest w;
    w.set_lease_id(lease);
    w.set_pfn(pfn);
    w.set_data(std::string(uint64_t{4096} << 9, byte));
    v1::WritePagesResponse out;
    Ctx ctx;
    const grpc::Status s = stub_->WritePages(&ctx, w, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  // uid 65534 takes order-9 blocks (`args`: "[GFP [MAX_BLOCKS]]") and reads each whole; EXPECTs that
  // no byte of them was non-zero, and returns the pfns it got.
  std::set<uint64_t> NobodyReadsOnlyZeros(const std::string& args) {
    std::string raw;
    std::map<std::string, PeerLine> got = RunAsNobody(daemon_->socket_path(), "readall 9 " + args, &raw);
    SCOPED_TRACE(raw);
    std::set<uint64_t> pfns;
    EXPECT_TRUE(got.count("readall")) << raw;
    if (!got.count("readall")) return pfns;
    const std::string& extra = got["readall"].extra;
    EXPECT_THAT(extra, HasSubstr(" dirty=0 ")) << "uid 65534 read uid 0's bytes";
    for (absl::string_view p : absl::StrSplit(extra.substr(extra.find("pfns=") + 5), ',', absl::SkipEmpty())) {
      pfns.insert(std::stoull(std::string(p)));
    }
    return pfns;
  }
};

TEST_F(TwoUids, AnotherUidCanNeitherSeeNorTouchALeaseOrItsPages) {
  Start({"--mem_mb=1024"});  // (the later flag wins) enough RAM for i386 to have HighMem
  const uint64_t lease = NewLease(kDayMs);
  v1::Allocation page;
  ASSERT_TRUE(Alloc(lease, "GFP_HIGHUSER", &page).ok());
  ASSERT_EQ(page.zone(), "HighMem");
  const std::string secret(4096, 's');
  {
    v1::WritePagesRequest w;
    w.set_lease_id(lease);
    w.set_pfn(page.pfn());
    w.set_data(secret);
    v1::WritePagesResponse out;
    Ctx ctx;
    ASSERT_TRUE(stub_->WritePages(&ctx, w, &out).ok());
  }
  // An hour of the lease's day gone: a renewal by the peer would give it back.
  daemon_->AdvanceLeaseClock(std::chrono::hours(1));
  v1::LeaseInfo before_info;
  {
    v1::GetLeaseRequest g;
    g.set_lease_id(lease);
    Ctx ctx;
    ASSERT_TRUE(stub_->GetLease(&ctx, g, &before_info).ok());
    EXPECT_EQ(before_info.identity(), "uid:0");
    EXPECT_LE(before_info.ttl_ms(), kDayMs - 3600 * 1000);
  }
  const v1::ValidateResponse before = Census();

  std::string raw;
  std::map<std::string, PeerLine> got =
      RunAsNobody(daemon_->socket_path(), absl::StrFormat("attack %d %d", lease, page.pfn()), &raw);
  SCOPED_TRACE(raw);
  ASSERT_TRUE(got.count("list"));
  EXPECT_EQ(got["list"].code, "OK");
  EXPECT_THAT(got["list"].extra, HasSubstr("seen=0"));
  // The peer's own lease allocated pages of its own (own_alloc, own_alloc_bulk) before its
  // refused calls on our page: those are measured against the census after its own allocations.
  ASSERT_TRUE(got.count("own_alloc_bulk"));
  const PeerLine own_base = got["own_alloc_bulk"];
  EXPECT_EQ(own_base.allocated, before.allocated_pages() + 5);
  const std::vector<std::string> denied = {"get",       "alloc",    "alloc_bulk", "free",       "free_bulk",
                                           "read",      "write",    "kmap",       "kunmap",     "address",
                                           "renew",     "keepalive", "revoke",    "own_free",   "own_free_bulk",
                                           "own_read",  "own_write", "own_kmap",  "own_kunmap", "own_address"};
  for (const std::string& name : denied) {
    ASSERT_TRUE(got.count(name)) << name;
    const PeerLine& p = got[name];
    EXPECT_EQ(p.code, "PERMISSION_DENIED") << name;
    // The census taken right after the call: nothing moved.
    const bool own = name.rfind("own_", 0) == 0;
    EXPECT_EQ(p.allocated, own ? own_base.allocated : before.allocated_pages()) << name;
    EXPECT_EQ(p.free, own ? own_base.free : before.free_pages()) << name;
    EXPECT_EQ(p.lease_pages, own ? own_base.lease_pages : before.lease_pages()) << name;
  }
  EXPECT_THAT(got["read"].extra, HasSubstr("bytes=0"));
  EXPECT_THAT(got["own_read"].extra, HasSubstr("bytes=0"));
  // The peer's own lease works for itself (it can allocate), which proves it was a real client.
  EXPECT_EQ(got["own_get"].code, "OK");
  EXPECT_EQ(got["own_alloc"].code, "OK");

  // uid 0's lease, page and bytes are as they were; its TTL was not extended by the renewals.
  v1::LeaseInfo after_info;
  {
    v1::GetLeaseRequest g;
    g.set_lease_id(lease);
    Ctx ctx;
    ASSERT_TRUE(stub_->GetLease(&ctx, g, &after_info).ok());
  }
  EXPECT_EQ(after_info.pages_held(), before_info.pages_held());
  EXPECT_LE(after_info.ttl_ms(), before_info.ttl_ms());
  {
    v1::ReadPagesRequest r;
    r.set_lease_id(lease);
    r.set_pfn(page.pfn());
    r.set_length(4096);
    v1::ReadPagesResponse out;
    Ctx ctx;
    ASSERT_TRUE(stub_->ReadPages(&ctx, r, &out).ok());
    EXPECT_EQ(out.data(), secret);
  }
  // And uid 0 does not see the peer's lease either.
  v1::ListLeasesResponse mine;
  Ctx ctx;
  ASSERT_TRUE(stub_->ListLeases(&ctx, v1::ListLeasesRequest(), &mine).ok());
  ASSERT_EQ(mine.leases_size(), 1);
  EXPECT_EQ(mine.leases(0).lease_id(), lease);
}

// uid 0 exhausts its own allowance; uid 65534 still gets all of its own, and each refusal names
// the identity and the limit.
TEST_F(TwoUids, PageLimitStopsOneIdentityNotTheOther) {
  Start({"--identity_max_pages=64"});
  const uint64_t lease = NewLease(kDayMs);
  v1::Allocation a;
  int n = 0;
  grpc::Status s;
  while ((s = Alloc(lease, "GFP_KERNEL", &a)).ok()) ++n;
  EXPECT_EQ(n, 64);
  EXPECT_THAT(s.error_message(), HasSubstr("identity uid:0 holds 64 of its 64 pages limit (--identity_max_pages)"));
  std::string raw;
  std::map<std::string, PeerLine> got = RunAsNobody(daemon_->socket_path(), "alloc GFP_KERNEL", &raw);
  SCOPED_TRACE(raw);
  ASSERT_TRUE(got.count("alloc:GFP_KERNEL"));
  EXPECT_THAT(got["alloc:GFP_KERNEL"].extra, HasSubstr("got=64 "));
  EXPECT_THAT(got["alloc:GFP_KERNEL"].extra, HasSubstr("identity_uid:65534_holds_64_of_its_64_pages_limit"));
  const v1::ValidateResponse v = Census();
  EXPECT_EQ(v.allocated_pages(), 128u);
  EXPECT_EQ(v.lease_pages(), 128u);
}

TEST_F(TwoUids, ZoneShareAndDmaCapStopOneIdentityNotTheOther) {
  Start({"--identity_zone_share_percent=Normal:2", "--identity_dma_pages=8"});
  const uint64_t lease = NewLease(kDayMs);
  v1::Allocation a;
  std::map<std::string, int> zones;
  grpc::Status s;
  while ((s = Alloc(lease, "GFP_KERNEL", &a)).ok()) ++zones[a.zone()];
  EXPECT_THAT(s.error_message(), HasSubstr("--identity_zone_share_percent"));
  EXPECT_EQ(zones["DMA"], 8) << "fallback into DMA stops at the DMA cap";
  EXPECT_EQ(Alloc(lease, "GFP_DMA", &a).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  std::string raw;
  std::map<std::string, PeerLine> got = RunAsNobody(daemon_->socket_path(), "alloc GFP_DMA GFP_KERNEL", &raw);
  SCOPED_TRACE(raw);
  EXPECT_THAT(got["alloc:GFP_DMA"].extra, HasSubstr("got=8 "));
  EXPECT_THAT(got["alloc:GFP_DMA"].extra, HasSubstr("--identity_dma_pages"));
  EXPECT_THAT(got["alloc:GFP_KERNEL"].extra, HasSubstr(absl::StrFormat("got=%d ", zones["Normal"])));
  EXPECT_THAT(got["alloc:GFP_KERNEL"].extra, HasSubstr("identity_uid:65534"));
}

// Page contents never reach another uid, also across a kill -9 and a restart on the same
// file-backed arena (server/page_tenancy.h): uid 0 fills the machine with 2 MiB blocks and writes
// a pattern into every byte, frees half, and the daemon is SIGKILLed. The restarted daemon
// recovers the other half into uid 0's lease from the journal (their last owner is uid 0 again)
// and knows nothing of the freed half's history (a file-backed arena's bytes outlive the daemon,
// so such pages are "unknown" and scrubbed on first hand-out). uid 0 revokes its lease; uid 65534
// then takes every block it can — the same memory — without __GFP_ZERO and reads every byte.
TEST_F(TwoUids, ContentsNeverReachTheOtherUidAcrossKillNineAndRestart) {
  constexpr uint32_t kOrder = 9;
  const std::string arena = "/dev/shm/physmemd-two-uids-test-" + std::to_string(::getpid());
  auto cleanup = [&] {
    testing::RemoveShmFiles(arena);
  };
  cleanup();
  struct AtExit {
    std::function<void()> f;
    ~AtExit() { f(); }
  } at_exit{cleanup};
  Start({"--arena_path=" + arena, "--max_page_io_bytes=2097152"});
  if (HasFatalFailure()) return;
  const uint64_t lease = NewLease(kDayMs);
  std::vector<uint64_t> written;
  for (v1::Allocation a;
       testing::AllocPages(stub_.get(), lease, "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY", kOrder, &a, 10000).ok();) {
    written.push_back(a.pfn());
  }
  ASSERT_GE(written.size(), 8u);
  for (uint64_t pfn : written) {
    v1::WritePagesRequest w;
    w.set_lease_id(lease);
    w.set_pfn(pfn);
    w.set_data(std::string(uint64_t{4096} << kOrder, '\xab'));
    v1::WritePagesResponse out;
    Ctx ctx;
    ASSERT_TRUE(stub_->WritePages(&ctx, w, &out).ok());
  }
  for (size_t i = 0; i < written.size(); i += 2) {
    ASSERT_TRUE(testing::FreePages(stub_.get(), lease, written[i], kOrder).ok());
  }
  daemon_->Kill(SIGKILL);
  ASSERT_TRUE(daemon_->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10))).has_value());
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  // A connection of its own: gRPC shares connections between channels to one target, and the
  // shared one may still be the killed daemon's, whose first call would fail with a broken pipe.
  std::shared_ptr<grpc::Channel> ch = testing::OwnChannel(daemon_->unix_target());
  ASSERT_TRUE(ch->WaitForConnected(std::chrono::system_clock::now() + testing::ScaledTimeout(std::chrono::seconds(5))));
  stub_ = PhysMem::NewStub(ch);
  // The journal gave uid 0 its held half back.
  const v1::ValidateResponse recovered = Census();
  EXPECT_EQ(recovered.lease_pages(), (written.size() / 2) << kOrder);
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), lease).ok());

  std::string raw;
  std::map<std::string, PeerLine> got = RunAsNobody(daemon_->socket_path(), "readall 9", &raw);
  SCOPED_TRACE(raw);
  ASSERT_TRUE(got.count("readall")) << raw;
  const std::string& extra = got["readall"].extra;
  EXPECT_THAT(extra, HasSubstr(" dirty=0 ")) << "uid 65534 read uid 0's bytes";
  // The point of the test: uid 65534 got uid 0's memory, both the freed and the recovered half.
  const std::string pfn_list = extra.substr(extra.find("pfns=") + 5);
  std::set<uint64_t> theirs;
  for (absl::string_view p : absl::StrSplit(pfn_list, ',', absl::SkipEmpty())) theirs.insert(std::stoull(std::string(p)));
  size_t freed_half = 0, held_half = 0;
  for (size_t i = 0; i < written.size(); ++i) {
    if (theirs.contains(written[i])) ++(i % 2 == 0 ? freed_half : held_half);
  }
  EXPECT_GE(freed_half, written.size() / 4) << "uid 65534 got few of the blocks uid 0 freed before the crash";
  EXPECT_GE(held_half, written.size() / 4) << "uid 65534 got few of the blocks recovered for uid 0";
}

// Every path a block can leave a lease by, between two real uids: uid 0 takes every 2 MiB block of
// a small all-lowmem machine into three leases, writes a pattern into every byte, and lets each
// sixth of them go by one path — FreePages by pfn, FreePages by key, FreePagesByAddress,
// FreePagesBulk, RevokeLease of a second lease, expiry of a third. uid 65534 then takes every
// block it can (the same memory: the machine has no other 2 MiB blocks) without __GFP_ZERO and
// reads every byte: all zero, and it got blocks of every path.
TEST_F(TwoUids, ContentsNeverReachTheOtherUidOnAnyFreePath) {
  constexpr uint32_t kOrder = 9;
  Start({"--mem_mb=48", "--max_page_io_bytes=2097152"});
  if (HasFatalFailure()) return;
  enum Path { kByPfn, kByKey, kByAddress, kBulk, kRevoke, kExpiry, kPaths };
  const char* const kPathName[kPaths] = {"FreePages by pfn", "FreePages by key", "FreePagesByAddress",
                                         "FreePagesBulk",    "RevokeLease",      "expiry"};
  constexpr int64_t kHourMs = int64_t{3600} * 1000;
  const uint64_t frees = NewLease(kDayMs), revoked = NewLease(kDayMs), expiring = NewLease(kHourMs);
  struct Block {
    Path path;
    v1::Allocation a;
  };
  std::vector<Block> blocks;
  for (int i = 0;; ++i) {
    const Path path = static_cast<Path>(i % kPaths);
    v1::AllocPagesRequest req;
    req.set_lease_id(path == kRevoke ? revoked : path == kExpiry ? expiring : frees);
    req.set_gfp("GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY");
    req.set_order(kOrder);
    if (path == kByKey) req.set_key(absl::StrCat("block-", i));
    Block b{path, {}};
    Ctx ctx;
    if (!stub_->AllocPages(&ctx, req, &b.a).ok()) break;
    ASSERT_NO_FATAL_FAILURE(FillBlock(req.lease_id(), b.a.pfn(), '\xab'));
    blocks.push_back(b);
  }
  ASSERT_GE(blocks.size(), size_t{2} * kPaths);

  v1::FreePagesBulkRequest bulk;
  bulk.set_lease_id(frees);
  for (const Block& b : blocks) {
    grpc::Status st;
    v1::FreePagesResponse out;
    Ctx ctx;
    switch (b.path) {
      case kByPfn:
        st = testing::FreePages(stub_.get(), frees, b.a.pfn(), kOrder);
        break;
      case kByKey: {
        v1::FreePagesRequest r;
        r.set_lease_id(frees);
        r.set_key(b.a.key());
        st = stub_->FreePages(&ctx, r, &out);
        break;
      }
      case kByAddress: {
        v1::FreePagesByAddressRequest r;
        r.set_lease_id(frees);
        r.set_addr(b.a.virt_addr());
        r.set_order(kOrder);
        st = stub_->FreePagesByAddress(&ctx, r, &out);
        break;
      }
      case kBulk:
        bulk.add_pfn(b.a.pfn());
        bulk.add_order(kOrder);
        break;
      default:
        break;
    }
    ASSERT_TRUE(st.ok()) << kPathName[b.path] << ": " << st.error_message();
  }
  {
    v1::FreePagesBulkResponse out;
    Ctx ctx;
    ASSERT_TRUE(stub_->FreePagesBulk(&ctx, bulk, &out).ok());
    ASSERT_EQ(out.refused_size(), 0);
  }
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), revoked).ok());
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(expiring, std::chrono::milliseconds(kHourMs)));
  ASSERT_EQ(Census().lease_pages(), 0u);

  const std::set<uint64_t> theirs = NobodyReadsOnlyZeros("");
  int written[kPaths] = {}, reached[kPaths] = {};
  for (const Block& b : blocks) {
    ++written[b.path];
    if (theirs.contains(b.a.pfn())) ++reached[b.path];
  }
  for (int p = 0; p < kPaths; ++p) {
    // The point of the test: uid 65534 got the memory each path gave back.
    EXPECT_GE(reached[p] * 2, written[p]) << kPathName[p] << ": uid 65534 got " << reached[p] << " of its "
                                          << written[p] << " blocks";
  }
}

// A clean stop (SIGTERM) ends every lease; a daemon restarted on the same file-backed arena knows
// nothing of its pages' history (the file keeps their bytes), so it zeroes each as it first hands
// it out: uid 65534 takes the memory uid 0 had filled and reads only zeros.
TEST_F(TwoUids, ContentsNeverReachTheOtherUidAcrossACleanStopAndRestart) {
  constexpr uint32_t kOrder = 9;
  const std::string arena = "/dev/shm/physmemd-two-uids-stop-test-" + std::to_string(::getpid());
  testing::RemoveShmFiles(arena);
  struct AtExit {
    std::string arena;
    ~AtExit() { testing::RemoveShmFiles(arena); }
  } at_exit{arena};
  Start({"--mem_mb=48", "--arena_path=" + arena, "--max_page_io_bytes=2097152"});
  if (HasFatalFailure()) return;
  const uint64_t lease = NewLease(kDayMs);
  std::vector<uint64_t> written;
  for (v1::Allocation a;
       testing::AllocPages(stub_.get(), lease, "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY", kOrder, &a, 10000).ok();) {
    ASSERT_NO_FATAL_FAILURE(FillBlock(lease, a.pfn(), '\xcd'));
    written.push_back(a.pfn());
  }
  ASSERT_GE(written.size(), 8u);
  daemon_->Kill(SIGTERM);
  ASSERT_TRUE(daemon_->WaitExit(testing::ScaledTimeout(std::chrono::seconds(10))).has_value());
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  // A connection of its own (the shared one may still be the stopped daemon's).
  std::shared_ptr<grpc::Channel> ch = testing::OwnChannel(daemon_->unix_target());
  ASSERT_TRUE(ch->WaitForConnected(std::chrono::system_clock::now() + testing::ScaledTimeout(std::chrono::seconds(5))));
  stub_ = PhysMem::NewStub(ch);
  ASSERT_EQ(Census().lease_pages(), 0u) << "a clean stop ends every lease";

  const std::set<uint64_t> theirs = NobodyReadsOnlyZeros("");
  size_t reached = 0;
  for (uint64_t pfn : written) reached += theirs.contains(pfn) ? 1 : 0;
  EXPECT_GE(reached * 2, written.size()) << "uid 65534 got few of the blocks uid 0 filled before the stop";
}

// HighMem blocks with live kmap()s (i386 with 1 GiB: 128 MiB of HighMem): uid 0 takes every
// HighMem 2 MiB block into two leases, writes a pattern and kmap()s two pages of each. A kmapped
// block cannot be freed (FAILED_PRECONDITION, census unchanged) until it is kunmapped; the rest go
// with their lease, kmaps and all, by RevokeLease and by expiry. uid 65534 then takes as many
// GFP_HIGHUSER blocks (HighMem first: the same memory) and reads only zeros.
TEST_F(TwoUids, KmappedHighMemBlocksReachTheOtherUidZeroed) {
  constexpr uint32_t kOrder = 9;
  const std::string kGfp = "GFP_HIGHUSER|__GFP_NOWARN|__GFP_NORETRY";
  Start({"--mem_mb=1024", "--max_page_io_bytes=2097152"});
  if (HasFatalFailure()) return;
  constexpr int64_t kHourMs = int64_t{3600} * 1000;
  const uint64_t revoked = NewLease(kDayMs), expiring = NewLease(kHourMs);
  auto kmap = [&](bool map, uint64_t lease, uint64_t pfn) {
    v1::KmapRequest r;
    r.set_lease_id(lease);
    r.set_pfn(pfn);
    Ctx ctx;
    v1::KmapResponse km;
    v1::KunmapResponse ku;
    return map ? stub_->Kmap(&ctx, r, &km) : stub_->Kunmap(&ctx, r, &ku);
  };
  std::vector<uint64_t> written;
  for (int i = 0;; ++i) {
    const uint64_t lease = i % 2 == 0 ? revoked : expiring;
    v1::Allocation a;
    if (!testing::AllocPages(stub_.get(), lease, kGfp, kOrder, &a, 10000).ok()) break;
    if (a.zone() != "HighMem") {  // HighMem is used up
      ASSERT_TRUE(testing::FreePages(stub_.get(), lease, a.pfn(), kOrder).ok());
      break;
    }
    ASSERT_NO_FATAL_FAILURE(FillBlock(lease, a.pfn(), '\xef'));
    ASSERT_TRUE(kmap(true, lease, a.pfn()).ok());
    ASSERT_TRUE(kmap(true, lease, a.pfn() + 7).ok());
    written.push_back(a.pfn());
  }
  ASSERT_GE(written.size(), 8u);
  {
    const v1::ValidateResponse before = Census();
    const grpc::Status s = testing::FreePages(stub_.get(), revoked, written[0], kOrder);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("kmap()ed"));
    EXPECT_EQ(Census().allocated_pages(), before.allocated_pages());
    ASSERT_TRUE(kmap(false, revoked, written[0]).ok());
    ASSERT_TRUE(kmap(false, revoked, written[0] + 7).ok());
    ASSERT_TRUE(testing::FreePages(stub_.get(), revoked, written[0], kOrder).ok());
  }
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), revoked).ok());
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(expiring, std::chrono::milliseconds(kHourMs)));
  ASSERT_EQ(Census().lease_pages(), 0u);

  const std::set<uint64_t> theirs =
      NobodyReadsOnlyZeros(absl::StrCat(kGfp, " ", written.size()));
  size_t reached[2] = {0, 0};  // by revoke (written[0]: kunmap and FreePages), by expiry
  for (size_t i = 0; i < written.size(); ++i) reached[i % 2] += theirs.contains(written[i]) ? 1 : 0;
  EXPECT_GE(reached[0] * 2, (written.size() + 1) / 2) << "revoked HighMem blocks reached: " << reached[0];
  EXPECT_GE(reached[1] * 2, written.size() / 2) << "expired HighMem blocks reached: " << reached[1];
}

}  // namespace
}  // namespace physmem
