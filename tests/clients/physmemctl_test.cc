// Tests the physmemctl binary (clients/physmemctl.cc) as a process against the real physmemd:
// each subcommand's output and exit status, usage errors (2) and refusals (1); leases by name,
// -o json (parsed back into the API's messages), bulk alloc and free, extfrag, watch, and the bash
// completion script (run by bash).
//
// Time: a physmemctl process takes its time to start (much more under a sanitizer on a loaded
// machine), so the leases it works on get TTLs no slow machine outruns, or are held by the test's
// own keep-alive until the CLI holds them; a lease that must expire is expired by the daemon's
// lease clock (CtlLeaseClockTest). `lease keepalive` renews every ttl/4 in real time: its tests
// scale the TTL and their waits by TimeScale() (tests/time_scale.h).

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <regex.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "clients/physmem_client.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "tests/clients/client_options.h"
#include "tests/daemon_process.h"

namespace physmem::client {
namespace {

using ::physmem::testing::DaemonProcess;
using ::physmem::testing::ScaledTimeout;
using ::physmem::testing::TimeScale;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::MatchesRegex;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;

using testing::kSmallI386;
// A TTL that outlives any test, however slow the machine: for leases that must not expire.
using testing::kLongTtlMs;
// Deadlines that only bound a hang (a process's exit, a call): sanitized daemons and CLIs on a
// busy machine are slow.
std::chrono::milliseconds HangBound() { return ScaledTimeout(std::chrono::seconds(20)); }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

uint64_t Number(const std::string& text) {
  uint64_t v = 0;
  const bool ok = text.rfind("0x", 0) == 0 ? absl::SimpleHexAtoi(text.substr(2), &v) : absl::SimpleAtoi(text, &v);
  EXPECT_TRUE(ok) << "not a number: " << text;
  return v;
}

struct CtlResult {
  int exit_code = -1;  // the exit status, or -signal
  std::string out, err;
};

// One physmemctl process, its stdout and stderr captured in files.
class CtlProcess {
 public:
  // `uid`: run as that user (needs root), e.g. to be another identity. `program`: another program
  // than physmemctl (bash, for the completion script).
  CtlProcess(std::vector<std::string> args, std::optional<uid_t> uid = std::nullopt,
             const char* program = PHYSMEMCTL_BINARY) {
    char tmpl[] = "/tmp/physmemctl-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int out = ::open((dir_ + "/out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open((dir_ + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, STDOUT_FILENO);
      ::dup2(err, STDERR_FILENO);
      if (uid && (::setgid(*uid) != 0 || ::setuid(*uid) != 0)) ::_exit(126);
      std::vector<char*> argv = {const_cast<char*>(program)};
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~CtlProcess() {
    if (pid_ > 0 && !result_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void Signal(int sig) { ::kill(pid_, sig); }

  // The result once it exits, or nullopt after `timeout`.
  std::optional<CtlResult> Wait(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!result_) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        CtlResult res;
        res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        res.out = ReadAll(dir_ + "/out");
        res.err = ReadAll(dir_ + "/err");
        result_ = res;
        break;
      }
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return result_;
  }

  std::string out_so_far() const { return ReadAll(dir_ + "/out"); }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::optional<CtlResult> result_;
};

// A full match of `text` against the POSIX extended regular expression `pattern`: the captures
// (0 = the whole text), or nullopt.
std::optional<std::vector<std::string>> FullMatch(const std::string& pattern, const std::string& text) {
  regex_t re;
  if (::regcomp(&re, pattern.c_str(), REG_EXTENDED) != 0) {
    ADD_FAILURE() << "bad regular expression: " << pattern;
    return std::nullopt;
  }
  std::vector<regmatch_t> m(re.re_nsub + 1);
  const bool matched = ::regexec(&re, text.c_str(), m.size(), m.data(), 0) == 0;
  ::regfree(&re);
  // Leftmost-longest: if any match spans the whole text, the first one found does.
  if (!matched || m[0].rm_so != 0 || static_cast<size_t>(m[0].rm_eo) != text.size()) return std::nullopt;
  std::vector<std::string> groups;
  for (const regmatch_t& g : m) {
    groups.push_back(g.rm_so < 0 ? std::string() : text.substr(g.rm_so, g.rm_eo - g.rm_so));
  }
  return groups;
}

using physmem::testing::Eventually;

// A line of -o json output parsed back into the API's message: the CLI prints proto JSON, one
// message per line.
template <typename M>
M FromJson(const std::string& line) {
  M m;
  const auto s = google::protobuf::util::JsonStringToMessage(line, &m);
  EXPECT_TRUE(s.ok()) << s.message() << ": " << line;
  return m;
}
// The whole output as one JSON message on one line.
template <typename M>
M OneJsonLine(const CtlResult& r) {
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Lines(r.out).size(), 1u) << r.out;
  EXPECT_THAT(r.out, ::testing::EndsWith("}\n"));
  return FromJson<M>(r.out);
}
bool SameMessage(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

class CtlTest : public ::testing::Test {
 protected:
  explicit CtlTest(std::vector<std::string> daemon_args = kSmallI386) : daemon_(std::move(daemon_args)) {}

  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    ClientOptions o;
    o.target = daemon_.unix_target();
    o.connect_timeout_ms = o.call_timeout_ms = HangBound().count();
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }

  // physmemctl --target=<the daemon> --timeout_ms=<generous> args... (a sanitized daemon on a
  // busy machine can take longer than the default 2 s to answer; the test's args come last, so
  // that their own --timeout_ms wins).
  std::vector<std::string> Args(const std::vector<std::string>& args) const {
    std::vector<std::string> all = {"--target=" + daemon_.unix_target(),
                                    "--timeout_ms=" + std::to_string(HangBound().count())};
    all.insert(all.end(), args.begin(), args.end());
    return all;
  }
  CtlResult Run(const std::vector<std::string>& args) {
    CtlProcess p(Args(args));
    std::optional<CtlResult> r = p.Wait(HangBound() + HangBound() / 2);
    EXPECT_TRUE(r.has_value()) << "physmemctl did not exit";
    return r.value_or(CtlResult());
  }

  // Options of a lease that outlives the test (kLongTtlMs).
  static LeaseOptions LongLived() {
    LeaseOptions o;
    o.ttl_ms = kLongTtlMs;
    return o;
  }
  // A lease that outlives its object (so that the CLI can use it); nothing renews it.
  uint64_t NewLeaseId(LeaseOptions o = LongLived()) {
    o.keepalive = false;
    absl::StatusOr<std::unique_ptr<Lease>> lease = client_->CreateLease(o);
    EXPECT_TRUE(lease.ok()) << lease.status();
    if (!lease.ok()) return 0;
    const uint64_t id = (*lease)->Release();
    return id;
  }
  std::unique_ptr<Lease> AttachTo(uint64_t id) {
    absl::StatusOr<std::unique_ptr<Lease>> lease = client_->AttachLease(id);
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.ok() ? *std::move(lease) : nullptr;
  }
  // A lease of `ttl_ms` that the test's own keep-alive holds until the object is destroyed, which
  // leaves the lease alive (Release): a short TTL would otherwise race a CLI process's start.
  std::unique_ptr<Lease> KeptAliveLease(int64_t ttl_ms) {
    LeaseOptions o;
    o.ttl_ms = ttl_ms;
    absl::StatusOr<std::unique_ptr<Lease>> lease = client_->CreateLease(o);
    EXPECT_TRUE(lease.ok()) << lease.status();
    if (!lease.ok()) return nullptr;
    (*lease)->Release();
    return *std::move(lease);
  }

  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
};

// A daemon whose lease clock the test advances (DaemonProcess::UseLeaseClock): its leases expire
// when the test says, not while a CLI process is still starting.
class CtlLeaseClockTest : public CtlTest {
 protected:
  void SetUp() override {
    daemon_.UseLeaseClock();
    CtlTest::SetUp();
  }
};

// ---- lease ----

TEST_F(CtlTest, LeaseCreatePrintsTheNewLeasesId) {
  const CtlResult r = Run({"lease", "create", "--ttl_ms=60000", "--quota=0x40", "--name=nic-rx"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_THAT(r.out, MatchesRegex("[0-9]+\n"));
  absl::StatusOr<v1::LeaseInfo> info = client_->GetLease(Number(Lines(r.out)[0]));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name(), "nic-rx");
  EXPECT_EQ(info->page_quota(), 0x40u);
  EXPECT_EQ(info->granted_ttl_ms(), 60000);
}

TEST_F(CtlLeaseClockTest, ALeaseCreatedByTheCliLivesForItsTtlThenExpires) {
  const CtlResult r = Run({"lease", "create", "--ttl_ms=" + std::to_string(kLongTtlMs)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const uint64_t id = Number(Lines(r.out)[0]);
  EXPECT_TRUE(client_->GetLease(id).ok()) << "the lease must outlive the process";
  // Most of its TTL later (all but a minute, scaled, for the real time this test takes) it is
  // still there; past its TTL, it is gone.
  const std::chrono::milliseconds slack = ScaledTimeout(std::chrono::seconds(60));
  daemon_.AdvanceLeaseClock(std::chrono::milliseconds(kLongTtlMs) - slack);
  EXPECT_TRUE(client_->GetLease(id).ok()) << "expired before its TTL";
  daemon_.AdvanceLeaseClock(slack + std::chrono::milliseconds(1));
  EXPECT_TRUE(daemon_.WaitForLog("event=lease_expired lease=" + std::to_string(id) + " ")) << daemon_.log();
  EXPECT_EQ(client_->GetLease(id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CtlTest, LeaseKeepAliveRenewsForTheDuration) {
  // Renewals every ttl/4 in real time: the TTL and the duration are scaled to the build, so that
  // a slow machine sees as many renewals as a fast one. The test's own keep-alive holds the lease
  // until the CLI has renewed it once; from then on only the CLI renews it.
  const int64_t ttl_ms = 600 * TimeScale();
  std::unique_ptr<Lease> own = KeptAliveLease(ttl_ms);
  ASSERT_NE(own, nullptr);
  const uint64_t id = own->id();
  CtlProcess p(Args({"lease", "keepalive", std::to_string(id), "--duration_ms=" + std::to_string(1500 * TimeScale())}));
  ASSERT_TRUE(Eventually(HangBound(), [&] { return !p.out_so_far().empty(); })) << "no renewal by the CLI";
  own.reset();  // released: the lease stays, renewed by the CLI alone
  std::optional<CtlResult> r = p.Wait(HangBound() + std::chrono::milliseconds(1500 * TimeScale()));
  ASSERT_TRUE(r.has_value()) << "keepalive went on past its duration";
  ASSERT_EQ(r->exit_code, 0) << r->err;
  const std::vector<std::string> lines = Lines(r->out);
  EXPECT_GE(lines.size(), 3u);  // one every ttl/4
  for (const std::string& line : lines) EXPECT_EQ(line, absl::StrFormat("lease=%d ttl_ms=%d", id, ttl_ms));
  // Its own keep-alive stopped long ago; the CLI's renewals kept it.
  EXPECT_TRUE(client_->GetLease(id).ok());
}

TEST_F(CtlTest, LeaseKeepAliveStopsCleanlyOnSigterm) {
  // A long TTL: the keep-alive sleeps ttl/4 (15 min) between renewals, and SIGTERM must not wait
  // for it.
  const uint64_t id = NewLeaseId();
  CtlProcess p(Args({"lease", "keepalive", std::to_string(id)}));
  ASSERT_TRUE(Eventually(HangBound(), [&] { return !p.out_so_far().empty(); }));
  p.Signal(SIGTERM);
  std::optional<CtlResult> r = p.Wait(ScaledTimeout(std::chrono::seconds(5)));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->exit_code, 0) << r->err;
  EXPECT_THAT(r->err, IsEmpty());
}

TEST_F(CtlTest, LeaseKeepAliveFailsWithNotFoundWhenTheLeaseIsRevoked) {
  // Renewals every ttl/4 in real time, scaled like the wait for the one that finds the lease
  // gone; the test's own keep-alive holds the lease while the CLI starts.
  const int64_t ttl_ms = 600 * TimeScale();
  std::unique_ptr<Lease> own = KeptAliveLease(ttl_ms);
  ASSERT_NE(own, nullptr);
  const uint64_t id = own->id();
  CtlProcess p(Args({"lease", "keepalive", std::to_string(id)}));
  ASSERT_TRUE(Eventually(HangBound(), [&] { return !p.out_so_far().empty(); }));
  ASSERT_TRUE(client_->RevokeLease(id).ok());
  std::optional<CtlResult> r = p.Wait(ScaledTimeout(std::chrono::seconds(3)));
  ASSERT_TRUE(r.has_value()) << "keepalive went on after its lease was revoked";
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, StartsWith("physmemctl: NOT_FOUND: "));
  EXPECT_THAT(r->out, HasSubstr(absl::StrFormat("lease=%d ttl_ms=0\n", id)));
}

TEST_F(CtlTest, LeaseRevokePrintsThePagesItFreed) {
  const uint64_t id = NewLeaseId();
  std::unique_ptr<Lease> lease = AttachTo(id);
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 2);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  const CtlResult r = Run({"lease", "revoke", std::to_string(id)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrFormat("lease=%d pages_freed=4\n", id));
  EXPECT_EQ(client_->GetLease(id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CtlTest, LeaseGetPrintsTheLeaseAndItsHoldings) {
  LeaseOptions o = LongLived();
  o.name = "blk";
  const uint64_t id = NewLeaseId(o);
  std::unique_ptr<Lease> lease = AttachTo(id);
  for (uint32_t order : {0u, 0u, 2u}) {
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", order);
    ASSERT_TRUE(p.ok()) << p.status();
    p->Release();
  }
  const CtlResult r = Run({"lease", "get", std::to_string(id)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_THAT(lines[0], MatchesRegex(absl::StrFormat(
                            "lease=%d name=blk identity=uid:%d ttl_ms=[0-9]+ granted_ttl_ms=%d page_quota=[0-9]+ "
                            "pages_held=6",
                            id, ::getuid(), o.ttl_ms)));
  EXPECT_EQ(lines[1], "holding zone=Normal order=0 blocks=2");
  EXPECT_EQ(lines[2], "holding zone=Normal order=2 blocks=1");
}

TEST_F(CtlTest, LeaseListPrintsOneLinePerLease) {
  const uint64_t a = NewLeaseId(), b = NewLeaseId();
  const CtlResult r = Run({"lease", "list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_THAT(lines[0], StartsWith(absl::StrFormat("lease=%d ", a)));
  EXPECT_THAT(lines[1], StartsWith(absl::StrFormat("lease=%d ", b)));
}

TEST_F(CtlTest, LeaseListPrintsNothingWithoutLeases) {
  const CtlResult r = Run({"lease", "list"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, IsEmpty());
}

// ---- alloc / free / addresses ----

struct AllocCase {
  std::string name;
  std::vector<std::string> flags;
  uint32_t order;
};

class CtlAllocTest : public CtlTest, public ::testing::WithParamInterface<AllocCase> {};

TEST_P(CtlAllocTest, PrintsTheBlockWhichStaysInTheLease) {
  const uint64_t id = NewLeaseId();
  std::vector<std::string> args = {"alloc", std::to_string(id)};
  args.insert(args.end(), GetParam().flags.begin(), GetParam().flags.end());
  const CtlResult r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::optional<std::vector<std::string>> m = FullMatch(
      "pfn=(0x[0-9a-f]+) order=([0-9]+) zone=([^ ]+) phys=(0x[0-9a-f]+) virt=(0x[0-9a-f]+) "
      "arena_offset=(0x[0-9a-f]+|0)( key=[^ ]+)?\n",
      r.out);
  ASSERT_TRUE(m.has_value()) << r.out;
  const uint64_t pfn = Number((*m)[1]);
  EXPECT_EQ(Number((*m)[2]), GetParam().order);
  EXPECT_EQ(pfn % (uint64_t{1} << GetParam().order), 0u);
  absl::StatusOr<v1::GetTargetResponse> t = client_->GetTarget();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(Number((*m)[4]), pfn * t->profile().page_size());
  absl::StatusOr<v1::LeaseInfo> info = client_->GetLease(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pages_held(), uint64_t{1} << GetParam().order);
  // It is the lease's block: freeing it by pfn works.
  absl::StatusOr<uint64_t> freed = AttachTo(id)->FreePages(pfn, GetParam().order);
  EXPECT_TRUE(freed.ok()) << freed.status();
}

INSTANTIATE_TEST_SUITE_P(
    Forms, CtlAllocTest,
    ::testing::Values(AllocCase{"PfnFormByDefault", {"--order=2"}, 2},
                      AllocCase{"HexOrder", {"--order=0x3", "--gfp=0xcc0"}, 3},
                      AllocCase{"WithKey", {"--order=1", "--key=rx"}, 1},
                      AllocCase{"AddressForm", {"--form=address", "--order=1"}, 1},
                      AllocCase{"ZeroedForm", {"--form=zeroed"}, 0}),
    [](const ::testing::TestParamInfo<AllocCase>& info) { return info.param.name; });

TEST_F(CtlTest, AllocAcceptsTheLeaseIdInHex) {
  const uint64_t id = NewLeaseId();
  const CtlResult r = Run({"alloc", absl::StrFormat("%#x", id)});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("pfn=0x"));
}

struct FreeCase {
  std::string name;
  std::vector<std::string> flags;  // {pfn} and {virt} stand for the block's
};

class CtlFreeTest : public CtlTest, public ::testing::WithParamInterface<FreeCase> {};

TEST_P(CtlFreeTest, FreesTheBlockAndPrintsThePagesFreed) {
  const uint64_t id = NewLeaseId();
  std::unique_ptr<Lease> lease = AttachTo(id);
  absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 2, "k");
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  std::vector<std::string> args = {"free", std::to_string(id)};
  for (const std::string& f : GetParam().flags) {
    args.push_back(absl::StrReplaceAll(
        f, {{"{pfn}", absl::StrFormat("%#x", p->pfn())}, {"{virt}", absl::StrFormat("%#x", p->virt_addr())}}));
  }
  const CtlResult r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "pages_freed=4\n");
  absl::StatusOr<v1::ValidateResponse> v = client_->Validate();
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->allocated_pages(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Selectors, CtlFreeTest,
                         ::testing::Values(FreeCase{"ByPfn", {"--pfn={pfn}", "--order=2"}},
                                           FreeCase{"ByKey", {"--key=k"}},
                                           FreeCase{"ByAddress", {"--addr={virt}", "--order=2"}}),
                         [](const ::testing::TestParamInfo<FreeCase>& info) { return info.param.name; });

TEST_F(CtlTest, AddressPrintsTheDirectMapAddressOfALowmemPage) {
  const uint64_t id = NewLeaseId();
  absl::StatusOr<PageHandle> p = AttachTo(id)->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  const CtlResult r = Run({"address", std::to_string(id), std::to_string(p->pfn())});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrFormat("pfn=%#x virt=%#x\n", p->pfn(), p->virt_addr()));
}

class CtlHighmemTest : public CtlTest {
 protected:
  CtlHighmemTest() : CtlTest({"--target=i386", "--mem_mb=1024"}) {}
};

TEST_F(CtlHighmemTest, KmapMapsAHighmemPageAndKunmapUnmapsIt) {
  const uint64_t id = NewLeaseId();
  absl::StatusOr<PageHandle> p = AttachTo(id)->AllocPages("GFP_HIGHUSER", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->zone(), "HighMem");
  p->Release();
  const std::string pfn = absl::StrFormat("%#x", p->pfn());

  const CtlResult mapped = Run({"kmap", std::to_string(id), pfn});
  ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
  const std::optional<std::vector<std::string>> m = FullMatch("pfn=" + pfn + " virt=(0x[0-9a-f]+)\n", mapped.out);
  ASSERT_TRUE(m.has_value()) << mapped.out;
  absl::StatusOr<v1::GetTargetResponse> t = client_->GetTarget();
  ASSERT_TRUE(t.ok());
  EXPECT_GE(Number((*m)[1]), t->profile().pkmap_base());
  EXPECT_EQ(Run({"address", std::to_string(id), pfn}).out, mapped.out);

  const CtlResult unmapped = Run({"kunmap", std::to_string(id), pfn});
  ASSERT_EQ(unmapped.exit_code, 0) << unmapped.err;
  EXPECT_EQ(unmapped.out, "pfn=" + pfn + " unmapped\n");
  // kunmap_high() leaves the slot mapped (pkmap_count 1) until the window wraps.
  EXPECT_EQ(Run({"address", std::to_string(id), pfn}).out, mapped.out);
}

// ---- machine ----

// --target=/path/to/physmemd.sock is the socket, as unix:///path/to/physmemd.sock is (the later
// --target wins over the fixture's).
TEST_F(CtlTest, ABarePathTargetIsTheUnixSocket) {
  const CtlResult r = Run({"--target=" + daemon_.socket_path(), "buddyinfo"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("Node 0, zone"));
}

TEST_F(CtlTest, BuddyinfoIsTheKernelFormatAndAddsUpToTheBuddyFreePages) {
  // Leave pages on the per-CPU lists, so that buddy free != free.
  {
    std::unique_ptr<Lease> lease = AttachTo(NewLeaseId());
    absl::StatusOr<std::vector<PageHandle>> pages = lease->AllocPagesBulk("GFP_KERNEL", 64);
    ASSERT_TRUE(pages.ok()) << pages.status();
  }
  const CtlResult r = Run({"buddyinfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  absl::StatusOr<v1::GetTargetResponse> t = client_->GetTarget();
  ASSERT_TRUE(t.ok());
  const uint32_t nr_page_orders = t->profile().max_page_order() + 1;
  ASSERT_EQ(nr_page_orders, 11u);  // the i386 profile: MAX_PAGE_ORDER 10

  ASSERT_FALSE(r.out.empty());
  ASSERT_EQ(r.out.back(), '\n');
  // The kernel format's rule, ^Node (\d+), zone +(\S+)( +\d+){NR_PAGE_ORDERS} $, in POSIX spelling.
  const std::string line_pattern = absl::StrFormat("Node ([0-9]+), zone +([^ ]+)( +[0-9]+){%d} ", nr_page_orders);
  std::vector<const v1::ZoneInfo*> populated;
  for (const v1::ZoneInfo& z : info->zones()) {
    if (z.populated()) populated.push_back(&z);
  }
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), populated.size()) << r.out;
  uint64_t pcp_total = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::optional<std::vector<std::string>> m = FullMatch(line_pattern, lines[i]);
    ASSERT_TRUE(m.has_value()) << "'" << lines[i] << "'";
    EXPECT_EQ((*m)[1], "0");
    const v1::ZoneInfo& z = *populated[i];
    EXPECT_EQ((*m)[2], z.zone());
    // "Node 0, zone %8s " then "%6lu " per order.
    EXPECT_EQ(lines[i].substr(0, 22), absl::StrFormat("Node 0, zone %8s ", z.zone()));
    std::vector<std::string> counts = absl::StrSplit(lines[i].substr(22), ' ', absl::SkipEmpty());
    ASSERT_EQ(counts.size(), nr_page_orders);
    uint64_t pages = 0;
    for (uint32_t o = 0; o < nr_page_orders; ++o) {
      EXPECT_EQ(lines[i].substr(22 + 7 * o, 7), absl::StrFormat("%6d ", Number(counts[o])));
      EXPECT_EQ(Number(counts[o]), z.nr_free(static_cast<int>(o)));
      pages += Number(counts[o]) << o;
    }
    uint64_t pcp = 0;
    for (const v1::PerCpuPageset& s : z.pagesets()) pcp += s.count();
    pcp_total += pcp;
    EXPECT_EQ(pages, z.free_pages() - pcp) << z.zone();
    EXPECT_EQ(pages, z.buddy_free_pages()) << z.zone();
  }
  EXPECT_GT(pcp_total, 0u) << "the check above did not involve per-CPU pages";
}

// The daemon's /proc/zoneinfo text (6.12 zoneinfo_show_print() layout: "Node %d, zone %8s", then
// "\n  pages free     %lu" ... "\n        protection: (%ld", ", %ld", ")"): every zone of the
// kernel's list for i386 (DMA, Normal, HighMem, Movable), pages free = NR_FREE_PAGES (per-CPU
// pages excluded), four protection entries, and the empty Movable zone stopping after them. The
// first populated zone (DMA) is preceded by the node's "  per-node stats" block
// (is_zone_first_populated()), all zero: the emulator keeps none of those node counters.
TEST_F(CtlTest, ZoneinfoPrintsEveryZoneWithItsFreePagesAndWatermarks) {
  const CtlResult r = Run({"zoneinfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(r.out, info->zoneinfo());
  EXPECT_THAT(r.out, StartsWith("Node 0, zone      DMA\n  per-node stats\n      nr_inactive_anon 0\n"));
  EXPECT_EQ(r.out.find("per-node stats"), r.out.rfind("per-node stats"));
  for (const v1::ZoneInfo& z : info->zones()) {
    if (!z.populated()) continue;
    const std::string block = absl::StrFormat(
        "%s\n  pages free     %d\n        boost    0\n        min      %d\n        low      %d\n"
        "        high     %d\n        promo    %d\n",
        z.zone() == "DMA" ? "      pgdemote_khugepaged 0" : absl::StrFormat("Node 0, zone %8s", z.zone()),
        z.buddy_free_pages(), z.min(), z.low(), z.high(), z.high() + (z.low() - z.min()));
    EXPECT_THAT(r.out, HasSubstr(block));
  }
  EXPECT_THAT(r.out, HasSubstr("  pagesets\n    cpu: 0\n"));
  EXPECT_THAT(r.out, ::testing::EndsWith("Node 0, zone  Movable\n  pages free     0\n        boost    0\n"
                                         "        min      32\n        low      32\n        high     32\n"
                                         "        promo    32\n        spanned  0\n        present  0\n"
                                         "        managed  0\n        cma      0\n"
                                         "        protection: (0, 0, 0, 0)\n"));
}

TEST_F(CtlTest, TargetPrintsTheProfileTheMemoryMapAndTheArena) {
  const CtlResult r = Run({"target"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::GetTargetResponse> t = client_->GetTarget();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(r.out, StartsWith("name=i386\n"));
  EXPECT_THAT(r.out, HasSubstr(absl::StrFormat("\npage_size=%d\n", t->profile().page_size())));
  EXPECT_THAT(r.out, HasSubstr(absl::StrFormat("\npage_offset=%#x\n", t->profile().page_offset())));
  EXPECT_THAT(r.out, HasSubstr("\nzone=DMA end=0x1000000\n"));
  EXPECT_THAT(r.out, HasSubstr("\nzone=HighMem end=unbounded\n"));
  EXPECT_THAT(r.out, HasSubstr(absl::StrFormat("\narena_backing=%s\n", t->arena_backing())));
  EXPECT_THAT(r.out, HasSubstr(absl::StrFormat("\ntotal_pages=%d\n", t->total_pages())));
  ASSERT_FALSE(t->memory_map().empty());
  EXPECT_THAT(r.out, ::testing::EndsWith("\nmemory_map:\n" + t->memory_map()));
}

TEST_F(CtlTest, ValidatePrintsTheCensus) {
  absl::StatusOr<PageHandle> p = AttachTo(NewLeaseId())->AllocPages("GFP_KERNEL", 3);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  const CtlResult r = Run({"validate"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::ValidateResponse> v = client_->Validate();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(r.out, absl::StrFormat("total_pages=%d free_pages=%d allocated_pages=8 leases=1 lease_pages=8\n",
                                   v->total_pages(), v->total_pages() - 8));
}

// ---- leases by name ----

TEST_F(CtlTest, ALeasesNameWorksWhereverItsIdDoes) {
  LeaseOptions o = LongLived();
  o.name = "nic-rx";
  const uint64_t id = NewLeaseId(o);
  const CtlResult by_id = Run({"lease", "get", std::to_string(id)});
  ASSERT_EQ(by_id.exit_code, 0) << by_id.err;
  // The TTL counts down between the two calls: compare the lines without it.
  auto without_ttl = [](const std::string& s) {
    std::string out = s;
    const size_t at = out.find(" ttl_ms=");
    if (at != std::string::npos) out.erase(at, out.find(' ', at + 1) - at);
    return out;
  };
  const CtlResult by_name = Run({"lease", "get", "nic-rx"});
  ASSERT_EQ(by_name.exit_code, 0) << by_name.err;
  EXPECT_EQ(without_ttl(by_name.out), without_ttl(by_id.out));

  // alloc, address, write, read, free by name.
  CtlResult r = Run({"alloc", "nic-rx", "--order=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::optional<std::vector<std::string>> m = FullMatch("pfn=(0x[0-9a-f]+) .*\n", r.out);
  ASSERT_TRUE(m.has_value()) << r.out;
  const std::string pfn = (*m)[1];
  EXPECT_EQ(client_->GetLease(id)->pages_held(), 2u);
  r = Run({"address", "nic-rx", pfn});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("pfn=" + pfn + " virt=0x"));
  r = Run({"write", "nic-rx", pfn, "--hex=cafe"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = Run({"read", "nic-rx", pfn, "--length=2"});
  EXPECT_EQ(r.out, "cafe\n") << r.err;
  r = Run({"free", "nic-rx", "--pfn=" + pfn, "--order=1"});
  EXPECT_EQ(r.out, "pages_freed=2\n") << r.err;
  r = Run({"lease", "revoke", "nic-rx"});
  EXPECT_EQ(r.out, absl::StrFormat("lease=%d pages_freed=0\n", id)) << r.err;
  EXPECT_EQ(client_->GetLease(id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CtlTest, KeepaliveTakesAName) {
  LeaseOptions o = LongLived();
  o.name = "ka";
  const uint64_t id = NewLeaseId(o);
  CtlProcess p(Args({"lease", "keepalive", "ka"}));
  ASSERT_TRUE(Eventually(HangBound(), [&] { return !p.out_so_far().empty(); }));
  p.Signal(SIGTERM);
  std::optional<CtlResult> r = p.Wait(HangBound());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->exit_code, 0) << r->err;
  EXPECT_THAT(r->out, StartsWith(absl::StrFormat("lease=%d ttl_ms=%d\n", id, kLongTtlMs)));
}

TEST_F(CtlTest, AnUnknownNameIsNotFound) {
  NewLeaseId();  // a lease without a name: no match either
  const CtlResult r = Run({"alloc", "no-such-lease"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, IsEmpty());
  EXPECT_THAT(r.err, StartsWith("physmemctl: NOT_FOUND: no lease of yours is named \"no-such-lease\""));
}

class CtlRepeatedNamesTest : public CtlTest {
 protected:
  CtlRepeatedNamesTest() : CtlTest({"--target=i386", "--mem_mb=64", "--nounique_lease_names"}) {}
};

TEST_F(CtlRepeatedNamesTest, ANameTwoLeasesShareIsRefusedWithBothIds) {
  // A daemon that lets names repeat (--nounique_lease_names): the CLI must not pick one.
  LeaseOptions o = LongLived();
  o.name = "twin";
  const uint64_t a = NewLeaseId(o), b = NewLeaseId(o);
  const CtlResult r = Run({"lease", "revoke", "twin"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith(absl::StrFormat(
                         "physmemctl: FAILED_PRECONDITION: 2 of your leases are named \"twin\" (ids %d, %d)", a, b)));
  EXPECT_TRUE(client_->GetLease(a).ok());
  EXPECT_TRUE(client_->GetLease(b).ok());
}

class CtlUniqueNamesTest : public CtlTest {
 protected:
  CtlUniqueNamesTest() : CtlTest({"--target=i386", "--mem_mb=64"}) {}  // names are unique by default
};

TEST_F(CtlUniqueNamesTest, ASecondLeaseWithTheNameIsAlreadyExists) {
  const std::string ttl = "--ttl_ms=" + std::to_string(kLongTtlMs);
  const CtlResult first = Run({"lease", "create", ttl, "--name=blk"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const CtlResult second = Run({"lease", "create", ttl, "--name=blk"});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_THAT(second.out, IsEmpty());
  EXPECT_THAT(second.err, StartsWith("physmemctl: ALREADY_EXISTS: lease name \"blk\" is already taken by lease " +
                                     Lines(first.out)[0] + " "));
  absl::StatusOr<v1::ListLeasesResponse> list = client_->ListLeases();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->leases_size(), 1);
  // Once it is revoked (by name), the name is free again.
  ASSERT_EQ(Run({"lease", "revoke", "blk"}).exit_code, 0);
  EXPECT_EQ(Run({"lease", "create", ttl, "--name=blk"}).exit_code, 0);
}

// ---- -o json ----

TEST_F(CtlTest, JsonOutputIsTheApisReplyWithProtoJsonNames) {
  const CtlResult created = Run({"lease", "create", "--ttl_ms=" + std::to_string(kLongTtlMs), "--name=js", "-o",
                                 "json"});
  const v1::CreateLeaseResponse c = OneJsonLine<v1::CreateLeaseResponse>(created);
  EXPECT_THAT(created.out, HasSubstr("\"leaseId\":\""));  // lowerCamelCase; 64-bit as a string
  EXPECT_EQ(c.granted_ttl_ms(), kLongTtlMs);
  const std::string id = std::to_string(c.lease_id());

  const CtlResult alloc = Run({"alloc", "js", "--order=2", "--key=k1", "--output=json"});
  const v1::Allocation a = OneJsonLine<v1::Allocation>(alloc);
  EXPECT_EQ(a.order(), 2u);
  EXPECT_EQ(a.key(), "k1");
  EXPECT_EQ(a.zone(), "Normal");
  EXPECT_THAT(alloc.out, HasSubstr("\"arenaOffset\":"));
  EXPECT_THAT(alloc.out, HasSubstr("\"replayed\":false"));  // every field printed, defaults too

  const CtlResult got = Run({"lease", "get", id, "-o", "json"});
  const v1::LeaseInfo info = OneJsonLine<v1::LeaseInfo>(got);
  EXPECT_THAT(got.out, HasSubstr("\"pagesHeld\":\"4\""));
  absl::StatusOr<v1::LeaseInfo> want = client_->GetLease(c.lease_id());
  ASSERT_TRUE(want.ok());
  v1::LeaseInfo without_ttl = info;
  without_ttl.set_ttl_ms(want->ttl_ms());  // it counts down between the two calls
  EXPECT_TRUE(SameMessage(without_ttl, *want)) << got.out << "\n" << want->DebugString();

  const v1::ListLeasesResponse list = OneJsonLine<v1::ListLeasesResponse>(Run({"lease", "list", "-o", "json"}));
  ASSERT_EQ(list.leases_size(), 1);
  EXPECT_EQ(list.leases(0).name(), "js");

  const v1::PageAddressResponse addr =
      OneJsonLine<v1::PageAddressResponse>(Run({"address", "js", std::to_string(a.pfn()), "-o", "json"}));
  EXPECT_EQ(addr.virt_addr(), a.virt_addr());
  const v1::WritePagesResponse wrote = OneJsonLine<v1::WritePagesResponse>(
      Run({"write", "js", std::to_string(a.pfn()), "--hex=00ff", "-o", "json"}));
  EXPECT_EQ(wrote.bytes_written(), 2u);
  const v1::ReadPagesResponse read = OneJsonLine<v1::ReadPagesResponse>(
      Run({"read", "js", std::to_string(a.pfn()), "--length=2", "-o", "json"}));
  EXPECT_EQ(read.data(), std::string("\x00\xff", 2));

  const v1::FreePagesResponse freed =
      OneJsonLine<v1::FreePagesResponse>(Run({"free", "js", "--key=k1", "-o", "json"}));
  EXPECT_EQ(freed.pages_freed(), 4u);
  const v1::RevokeLeaseResponse revoked =
      OneJsonLine<v1::RevokeLeaseResponse>(Run({"lease", "revoke", "js", "-o", "json"}));
  EXPECT_EQ(revoked.pages_freed(), 0u);
}

TEST_F(CtlTest, JsonOutputOfTheMachineCommands) {
  absl::StatusOr<v1::GetTargetResponse> t = client_->GetTarget();
  ASSERT_TRUE(t.ok());
  const CtlResult target = Run({"target", "-o", "json"});
  EXPECT_TRUE(SameMessage(OneJsonLine<v1::GetTargetResponse>(target), *t)) << target.out;
  EXPECT_THAT(target.out, HasSubstr("\"memoryMap\":"));

  const v1::ValidateResponse v = OneJsonLine<v1::ValidateResponse>(Run({"validate", "-o", "json"}));
  EXPECT_EQ(v.total_pages(), t->total_pages());
  EXPECT_EQ(v.allocated_pages(), 0u);

  absl::StatusOr<v1::GetZoneInfoResponse> zi = client_->GetZoneInfo();
  ASSERT_TRUE(zi.ok());
  for (const char* view : {"zoneinfo", "buddyinfo", "extfrag"}) {
    const CtlResult r = Run({view, "-o", "json"});
    const v1::GetZoneInfoResponse got = OneJsonLine<v1::GetZoneInfoResponse>(r);
    EXPECT_THAT(r.out, HasSubstr("\"fragmentationIndex\":["));
    EXPECT_EQ(got.buddyinfo(), zi->buddyinfo()) << view;
    ASSERT_EQ(got.zones_size(), zi->zones_size()) << view;
    for (int i = 0; i < got.zones_size(); ++i) {
      EXPECT_THAT(got.zones(i).nr_free(), ::testing::ElementsAreArray(zi->zones(i).nr_free())) << view;
      EXPECT_THAT(got.zones(i).fragmentation_index(),
                  ::testing::ElementsAreArray(zi->zones(i).fragmentation_index()))
          << view;
    }
  }
}

// ---- bulk alloc and free ----

TEST_F(CtlTest, AllocCountAllocatesThatManyOrderZeroPagesInOneCall) {
  const uint64_t id = NewLeaseId();
  const CtlResult r = Run({"alloc", std::to_string(id), "--count=8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, IsEmpty());
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 8u) << r.out;
  std::vector<uint64_t> pfns;
  for (const std::string& line : lines) {
    const std::optional<std::vector<std::string>> m = FullMatch(
        "pfn=(0x[0-9a-f]+) order=0 zone=(DMA|Normal) phys=(0x[0-9a-f]+) virt=0x[0-9a-f]+ arena_offset=(0x[0-9a-f]+|0)",
        line);
    ASSERT_TRUE(m.has_value()) << line;
    pfns.push_back(Number((*m)[1]));
    EXPECT_EQ(Number((*m)[3]), pfns.back() * 4096);
  }
  EXPECT_EQ(client_->GetLease(id)->pages_held(), 8u);
  // They are the lease's pages: a bulk free of exactly them frees all 8.
  std::vector<std::string> free_args = {"free", std::to_string(id)};
  for (uint64_t p : pfns) free_args.push_back(absl::StrFormat("%#x", p));
  const CtlResult f = Run(free_args);
  ASSERT_EQ(f.exit_code, 0) << f.err;
  EXPECT_EQ(f.out, "pages_freed=8 blocks_freed=8\n");
  EXPECT_EQ(client_->GetLease(id)->pages_held(), 0u);
}

TEST_F(CtlTest, AllocCountWithJsonPrintsTheBulkReply) {
  const uint64_t id = NewLeaseId();
  const v1::AllocPagesBulkResponse resp =
      OneJsonLine<v1::AllocPagesBulkResponse>(Run({"alloc", std::to_string(id), "--count=5", "-o", "json"}));
  EXPECT_EQ(resp.requested(), 5u);
  EXPECT_EQ(resp.pfn_size(), 5);
  EXPECT_EQ(resp.zone_size(), 5);
}

TEST_F(CtlTest, AllocCountBeyondWhatIsFreeGetsWhatThereIsAndSaysSo) {
  const uint64_t id = NewLeaseId();
  const CtlResult r = Run({"alloc", std::to_string(id), "--count=20000"});  // a 64 MiB machine: 16384 pages
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t got = Lines(r.out).size();
  EXPECT_GT(got, 0u);
  EXPECT_LT(got, 20000u);
  EXPECT_EQ(client_->GetLease(id)->pages_held(), got);
  EXPECT_THAT(r.err, StartsWith(absl::StrFormat("physmemctl: got %d of the 20000 pages asked for", got)));
}

TEST_F(CtlTest, FreeOfSeveralBlocksFreesThemInOneCall) {
  const uint64_t id = NewLeaseId();
  std::unique_ptr<Lease> lease = AttachTo(id);
  std::vector<std::string> args = {"free", std::to_string(id), "--order=1"};
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<PageHandle> p = lease->AllocPages("GFP_KERNEL", 1);
    ASSERT_TRUE(p.ok()) << p.status();
    p->Release();
    args.push_back(absl::StrFormat("%#x", p->pfn()));
  }
  const CtlResult r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "pages_freed=6 blocks_freed=3\n");
  absl::StatusOr<v1::ValidateResponse> v = client_->Validate();
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->allocated_pages(), 0u);
}

TEST_F(CtlTest, FreeOfSeveralBlocksReportsTheRefusedOnesAndExitsOne) {
  const uint64_t id = NewLeaseId();
  absl::StatusOr<PageHandle> p = AttachTo(id)->AllocPages("GFP_KERNEL", 0);
  ASSERT_TRUE(p.ok()) << p.status();
  p->Release();
  // pfn 0x100 is free (the first page the buddy manages: page 0 is no RAM and the rest of the
  // first megabyte is memblock-reserved on x86): a double free, refused; the lease's own page is
  // freed all the same.
  const CtlResult r = Run({"free", std::to_string(id), absl::StrFormat("%#x", p->pfn()), "0x100"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "pages_freed=1 blocks_freed=1\n");
  EXPECT_THAT(r.err, MatchesRegex("physmemctl: FAILED_PRECONDITION: 1 of 2 blocks not freed \\(each refusal changed "
                                  "nothing\\): pfn 0x100: FAILED_PRECONDITION: [^\n]+\n"));
  EXPECT_EQ(client_->GetLease(id)->pages_held(), 0u);
  // -o json: the reply, refusals included.
  const CtlResult j = Run({"free", std::to_string(id), "0x100", "-o", "json"});
  EXPECT_EQ(j.exit_code, 1);
  const v1::FreePagesBulkResponse resp = FromJson<v1::FreePagesBulkResponse>(j.out);
  ASSERT_EQ(resp.refused_size(), 1);
  EXPECT_EQ(resp.refused(0).pfn(), 0x100u);
  EXPECT_EQ(resp.refused(0).code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
}

// ---- extfrag and watch ----

TEST_F(CtlTest, ExtfragIsTheKernelsExtfragIndexLayout) {
  // Fill the machine (what a bulk call takes without waiting), so that some orders have no free
  // block and their index is a fraction rather than -1.000.
  ASSERT_EQ(Run({"alloc", std::to_string(NewLeaseId()), "--count=20000"}).exit_code, 0);
  const CtlResult r = Run({"extfrag"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok());
  std::vector<const v1::ZoneInfo*> populated;
  for (const v1::ZoneInfo& z : info->zones()) {
    if (z.populated()) populated.push_back(&z);
  }
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), populated.size()) << r.out;
  bool fraction_seen = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    const v1::ZoneInfo& z = *populated[i];
    ASSERT_EQ(z.fragmentation_index_size(), 11);  // i386: MAX_PAGE_ORDER 10
    // extfrag_show_print(): "Node %d, zone %8s ", then "%2d.%03d " per order.
    const std::optional<std::vector<std::string>> m =
        FullMatch("Node 0, zone +([^ ]+) (( 0\\.[0-9]{3}| 1\\.000|-1\\.000) ){11}", lines[i]);
    ASSERT_TRUE(m.has_value()) << "'" << lines[i] << "'";
    EXPECT_EQ((*m)[1], z.zone());
    EXPECT_EQ(lines[i].substr(0, 22), absl::StrFormat("Node 0, zone %8s ", z.zone()));
    for (int o = 0; o < 11; ++o) {
      const int index = z.fragmentation_index(o);
      const std::string want = index == -1000 ? "-1.000 " : absl::StrFormat(" %d.%03d ", index / 1000, index % 1000);
      EXPECT_EQ(lines[i].substr(22 + 7 * o, 7), want) << z.zone() << " order " << o;
      if (index != -1000) fraction_seen = true;
    }
  }
  EXPECT_TRUE(fraction_seen) << "the full machine left a block of every order free:\n" << r.out;
}

// The unusable free space index, recomputed here from the zone's buddyinfo counts with the
// kernel's formula (mm/vmstat.c unusable_free_index(): (free_pages - (suitable << order)) * 1000
// / free_pages, 1000 with nothing free), in unusable_show_print()'s layout.
TEST_F(CtlTest, UnusableIsTheKernelsUnusableIndexLayout) {
  ASSERT_EQ(Run({"alloc", std::to_string(NewLeaseId()), "--count=20000"}).exit_code, 0);
  const CtlResult r = Run({"unusable"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok());
  std::string want;
  bool between = false;  // an index strictly between 0 and 1: the formula's middle was exercised
  for (const v1::ZoneInfo& z : info->zones()) {
    if (!z.populated()) continue;
    ASSERT_EQ(z.unusable_index_size(), z.nr_free_size());
    want += absl::StrFormat("Node 0, zone %8s ", z.zone());
    for (int order = 0; order < z.nr_free_size(); ++order) {
      uint64_t free_pages = 0, suitable = 0;
      for (int o = 0; o < z.nr_free_size(); ++o) {
        free_pages += z.nr_free(o) << o;
        if (o >= order) suitable += z.nr_free(o) << (o - order);
      }
      const int index = free_pages == 0 ? 1000 : static_cast<int>((free_pages - (suitable << order)) * 1000 / free_pages);
      EXPECT_EQ(z.unusable_index(order), index) << z.zone() << " order " << order;
      if (index > 0 && index < 1000) between = true;
      want += absl::StrFormat("%d.%03d ", index / 1000, index % 1000);
    }
    want += "\n";
  }
  EXPECT_EQ(r.out, want);
  EXPECT_TRUE(between) << r.out;
  const CtlResult watched = Run({"watch", "--count=1", "--interval_ms=1", "unusable"});
  ASSERT_EQ(watched.exit_code, 0) << watched.err;
  EXPECT_EQ(watched.out, want);
}

// /proc/pagetypeinfo through GetZoneInfo.pagetypeinfo: the daemon's FormatPagetypeinfo() text
// (allocator/stats.h; checked against mm/vmstat.c's format strings and this machine's file in
// tests/allocator/stats_test.cc) printed verbatim. Its free counts per migratetype add up to the
// buddyinfo counts of the same state, and the GFP_KERNEL pages allocated here made a fallback
// claim pageblocks for UNMOVABLE (everything is MOVABLE at boot, as memmap_init_range() marks it).
std::vector<std::vector<std::string>> PagetypeinfoRows(const std::string& text, const std::string& prefix) {
  std::vector<std::vector<std::string>> rows;
  for (const std::string& line : Lines(text)) {
    if (line.rfind(prefix, 0) == 0) rows.push_back(absl::StrSplit(line, ' ', absl::SkipEmpty()));
  }
  return rows;
}

TEST_F(CtlTest, PagetypeinfoIsTheKernelsLayoutForTheDaemonsZones) {
  ASSERT_EQ(Run({"alloc", std::to_string(NewLeaseId()), "--count=2000"}).exit_code, 0);
  const CtlResult r = Run({"pagetypeinfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(r.out, info->pagetypeinfo());
  // i386 without PAE: pageblock_order 10 (PGDIR_SHIFT 22 - PAGE_SHIFT 12).
  EXPECT_THAT(r.out, ::testing::StartsWith("Page block order: 10\nPages per block:  1024\n\n"
                                           "Free pages count per migrate type at order       0      1      2      3"
                                           "      4      5      6      7      8      9     10 \n"));
  const auto free_rows = PagetypeinfoRows(r.out, "Node    0, zone ");
  const auto block_rows = PagetypeinfoRows(r.out, "Node 0, zone ");
  int populated = 0;
  uint64_t unmovable_blocks = 0;
  for (const v1::ZoneInfo& z : info->zones()) {
    if (!z.populated()) continue;
    for (int o = 0; o < z.nr_free_size(); ++o) {
      uint64_t sum = 0;
      for (int t = 0; t < 5; ++t) sum += std::stoull(free_rows[populated * 5 + t][6 + o]);
      EXPECT_EQ(sum, z.nr_free(o)) << z.zone() << " order " << o;
    }
    EXPECT_EQ(block_rows[populated][3], z.zone());
    unmovable_blocks += std::stoull(block_rows[populated][4]);
    ++populated;
  }
  EXPECT_EQ(free_rows.size(), 5u * populated);
  EXPECT_GT(unmovable_blocks, 0u) << r.out;
  const CtlResult watched = Run({"watch", "--count=1", "--interval_ms=1", "pagetypeinfo"});
  ASSERT_EQ(watched.exit_code, 0) << watched.err;
  EXPECT_EQ(watched.out, r.out);
}

// physmemd --nopage_group_by_mobility: the kernel's page_group_by_mobility_disabled, under which
// set_pageblock_migratetype() stores UNMOVABLE for every type.
class CtlNoMobilityGroupingTest : public CtlTest {
 protected:
  CtlNoMobilityGroupingTest() : CtlTest({"--target=i386", "--mem_mb=64", "--nopage_group_by_mobility"}) {}
};

TEST_F(CtlNoMobilityGroupingTest, PagetypeinfoShowsEveryPageblockUnmovable) {
  ASSERT_EQ(Run({"alloc", std::to_string(NewLeaseId()), "--count=100", "--gfp=GFP_HIGHUSER_MOVABLE"}).exit_code, 0);
  const CtlResult r = Run({"pagetypeinfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto block_rows = PagetypeinfoRows(r.out, "Node 0, zone ");
  ASSERT_FALSE(block_rows.empty()) << r.out;
  for (const auto& row : block_rows) {
    EXPECT_GT(std::stoull(row[4]), 0u) << r.out;   // Unmovable
    EXPECT_EQ(row[5], "0") << r.out;               // Movable
    EXPECT_EQ(row[6], "0") << r.out;               // Reclaimable
  }
}

TEST_F(CtlTest, WatchWithCountRefreshesThatManyTimesAndExits) {
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok());
  const CtlResult r = Run({"watch", "--count=3", "--interval_ms=1", "buddyinfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Not a terminal: no screen clearing, the refreshes one after another, an empty line between.
  EXPECT_EQ(r.out, info->buddyinfo() + "\n" + info->buddyinfo() + "\n" + info->buddyinfo());
  const CtlResult ext = Run({"watch", "--count=2", "--interval_ms=1", "extfrag"});
  ASSERT_EQ(ext.exit_code, 0) << ext.err;
  const CtlResult once = Run({"extfrag"});
  EXPECT_EQ(ext.out, once.out + "\n" + once.out);
  // JSON: one reply per line.
  const CtlResult j = Run({"watch", "--count=2", "--interval_ms=1", "zoneinfo", "-o", "json"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const std::vector<std::string> lines = Lines(j.out);
  ASSERT_EQ(lines.size(), 2u) << j.out;
  for (const std::string& line : lines) {
    EXPECT_EQ(FromJson<v1::GetZoneInfoResponse>(line).buddyinfo(), info->buddyinfo());
  }
}

TEST_F(CtlTest, WatchRunsUntilStoppedAndExitsZero) {
  CtlProcess p(Args({"watch", "--interval_ms=10", "zoneinfo"}));
  ASSERT_TRUE(Eventually(HangBound(), [&] { return p.out_so_far().find("\n\n") != std::string::npos; }))
      << "no second refresh";
  p.Signal(SIGINT);
  std::optional<CtlResult> r = p.Wait(HangBound());
  ASSERT_TRUE(r.has_value()) << "watch did not stop on SIGINT";
  EXPECT_EQ(r->exit_code, 0) << r->err;
  EXPECT_THAT(r->out, StartsWith("Node 0, zone      DMA\n  per-node stats\n"));
}

TEST_F(CtlTest, WatchOnATerminalClearsTheScreenBeforeEachRefresh) {
  int master = -1, slave = -1;
  ASSERT_EQ(::openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
  std::vector<std::string> args = Args({"watch", "--count=2", "--interval_ms=1", "buddyinfo"});
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(slave, STDOUT_FILENO);
    ::close(master);
    std::vector<char*> argv = {const_cast<char*>(PHYSMEMCTL_BINARY)};
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(slave);
  // Read until the child's end closes the terminal (EIO on Linux), bounded by HangBound().
  std::string out;
  const auto deadline = Clock::now() + HangBound();
  while (Clock::now() < deadline) {
    pollfd pfd = {master, POLLIN, 0};
    if (::poll(&pfd, 1, 50) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, n);
  }
  ::close(master);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  absl::StatusOr<v1::GetZoneInfoResponse> info = client_->GetZoneInfo();
  ASSERT_TRUE(info.ok());
  // The terminal turns each "\n" into "\r\n".
  const std::string body = absl::StrReplaceAll(info->buddyinfo(), {{"\n", "\r\n"}});
  const std::vector<std::string> screens = absl::StrSplit(out, "\033[H\033[2J");
  ASSERT_EQ(screens.size(), 3u) << out;  // "", then one per refresh
  EXPECT_THAT(screens[0], IsEmpty());
  for (int i = 1; i <= 2; ++i) {
    EXPECT_THAT(screens[i], StartsWith("Every 1ms: physmemctl buddyinfo    ")) << screens[i];
    EXPECT_THAT(screens[i], ::testing::EndsWith("\r\n\r\n" + body)) << screens[i];
  }
}

// ---- completion ----

// `bash -c SCRIPT physmemctl`: SCRIPT runs with $0 = the physmemctl binary.
CtlResult RunBash(const std::string& script, std::vector<std::string> more_args = {}) {
  std::vector<std::string> args = {"-c", script, PHYSMEMCTL_BINARY};
  args.insert(args.end(), more_args.begin(), more_args.end());
  CtlProcess p(args, std::nullopt, "/bin/bash");
  std::optional<CtlResult> r = p.Wait(HangBound());
  EXPECT_TRUE(r.has_value()) << "bash did not exit";
  return r.value_or(CtlResult());
}

TEST(CtlCompletion, TheBashScriptLoadsAndRegistersTheCompletion) {
  const CtlResult r = RunBash("source <(\"$0\" completion bash) && complete -p physmemctl");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "complete -F _physmemctl physmemctl\n");
  EXPECT_THAT(r.err, IsEmpty());
}

// Runs the completion function as bash would: COMP_WORDS split the way bash splits them (at '='
// and ':'), COMP_CWORD the last word; prints COMPREPLY on one line, words joined by '|'.
constexpr char kCompletionHarness[] = R"(
source <("$0" completion bash) || exit 3
compopt() { :; }  # outside a real completion bash refuses it
complete_line() {
  COMP_LINE=$1; shift
  COMP_WORDS=("$0" "$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
  _physmemctl
  local IFS='|'; echo "${COMPREPLY[*]}"
}
)";

TEST(CtlCompletion, CompletesCommandsSubcommandsOptionsAndValues) {
  const CtlResult r = RunBash(std::string(kCompletionHarness) + R"(
complete_line "physmemctl " ""
complete_line "physmemctl le" le
complete_line "physmemctl lease " lease ""
complete_line "physmemctl watch " watch ""
complete_line "physmemctl alloc 7 --co" alloc 7 --co
complete_line "physmemctl alloc 7 --form=a" alloc 7 --form = a
complete_line "physmemctl lease list -o j" lease list -o j
complete_line "physmemctl completion " completion ""
complete_line "physmemctl --target=unix:///x/y ex" --target = unix : ///x/y ex
)");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 9u) << r.out << r.err;
  EXPECT_EQ(lines[0],
            "lease|alloc|free|address|kmap|kunmap|read|write|zoneinfo|buddyinfo|extfrag|unusable|pagetypeinfo|watch|"
            "target|"
            "map|"
            "validate|"
            "completion|version|help");
  EXPECT_EQ(lines[1], "lease");
  EXPECT_EQ(lines[2], "create|keepalive|revoke|get|list");
  EXPECT_EQ(lines[3], "buddyinfo|zoneinfo|extfrag|unusable|pagetypeinfo");
  EXPECT_EQ(lines[4], "--count=");
  EXPECT_EQ(lines[5], "address");
  EXPECT_EQ(lines[6], "json");
  EXPECT_EQ(lines[7], "bash");
  EXPECT_EQ(lines[8], "extfrag");
}

TEST_F(CtlTest, CompletionOfALeaseOffersYourLeasesIdsAndNames) {
  LeaseOptions o = LongLived();
  o.name = "rx-ring";
  const uint64_t named = NewLeaseId(o);
  const uint64_t unnamed = NewLeaseId();
  // The daemon's socket path, split the way bash splits "unix:///path".
  const std::string path = "//" + daemon_.socket_path();
  const CtlResult r = RunBash(std::string(kCompletionHarness) + R"(
complete_line "physmemctl --target=unix:$1 lease get " --target = unix : "$1" lease get ""
complete_line "physmemctl --target=unix:$1 alloc rx" --target = unix : "$1" alloc rx
)",
                              {path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out << r.err;
  EXPECT_EQ(lines[0], absl::StrFormat("%d|rx-ring|%d", named, unnamed));
  EXPECT_EQ(lines[1], "rx-ring");
}

// ---- exit codes ----

class CtlUsageTest : public CtlTest, public ::testing::WithParamInterface<std::vector<std::string>> {};

TEST_P(CtlUsageTest, ExitsTwoAndSaysWhatWasWrong) {
  const CtlResult r = Run(GetParam());
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_THAT(r.out, IsEmpty());
  EXPECT_THAT(r.err, StartsWith("physmemctl: "));
  EXPECT_THAT(r.err, HasSubstr("--help"));
}

INSTANTIATE_TEST_SUITE_P(
    Usage, CtlUsageTest,
    ::testing::Values(std::vector<std::string>{}, std::vector<std::string>{"frob"},
                      std::vector<std::string>{"lease"}, std::vector<std::string>{"lease", "frob"},
                      std::vector<std::string>{"lease", "create"},
                      std::vector<std::string>{"lease", "create", "--ttl_ms=ten"},
                      std::vector<std::string>{"lease", "create", "--ttl_ms=-5"},
                      std::vector<std::string>{"lease", "get"}, std::vector<std::string>{"lease", "get", "1", "2"},
                      std::vector<std::string>{"lease", "list", "--gfp=GFP_KERNEL"},
                      std::vector<std::string>{"lease", "keepalive", "1", "--duration_ms=soon"},
                      std::vector<std::string>{"alloc"}, std::vector<std::string>{"alloc", ""},
                      std::vector<std::string>{"alloc", "1", "--form=huge"},
                      std::vector<std::string>{"alloc", "1", "--order=-1"},
                      std::vector<std::string>{"alloc", "1", "--order=0x"},
                      std::vector<std::string>{"alloc", "1", "--form=zeroed", "--order=1"},
                      std::vector<std::string>{"alloc", "1", "--order"}, std::vector<std::string>{"free", "1"},
                      std::vector<std::string>{"free", "1", "--pfn=1", "--key=k"},
                      std::vector<std::string>{"free", "1", "--key=k", "--order=1"},
                      std::vector<std::string>{"address", "1"}, std::vector<std::string>{"kmap", "1", "2", "3"},
                      std::vector<std::string>{"--bogus", "lease", "list"},
                      std::vector<std::string>{"--timeout_ms=soon", "lease", "list"},
                      // -o / --output
                      std::vector<std::string>{"lease", "list", "-o", "yaml"},
                      std::vector<std::string>{"lease", "list", "-o", "json", "--output=text"},
                      std::vector<std::string>{"lease", "list", "-o"},
                      std::vector<std::string>{"completion", "bash", "-o", "json"},
                      std::vector<std::string>{"read", "1", "2", "-o", "json", "--out=/tmp/x"},
                      // alloc --count, free PFN...
                      std::vector<std::string>{"alloc", "1", "--count=0"},
                      std::vector<std::string>{"alloc", "1", "--count=many"},
                      std::vector<std::string>{"alloc", "1", "--count=4", "--order=1"},
                      std::vector<std::string>{"alloc", "1", "--count=4", "--key=k"},
                      std::vector<std::string>{"alloc", "1", "--count=4", "--form=zeroed"},
                      std::vector<std::string>{"free", "1", "0x10", "--pfn=0x10"},
                      std::vector<std::string>{"free", "1", "0x10", "zz"},
                      // watch, extfrag, completion
                      std::vector<std::string>{"watch"}, std::vector<std::string>{"watch", "frob"},
                      std::vector<std::string>{"watch", "buddyinfo", "--interval_ms=0"},
                      std::vector<std::string>{"watch", "buddyinfo", "--count=0"},
                      std::vector<std::string>{"watch", "buddyinfo", "--gfp=GFP_KERNEL"},
                      std::vector<std::string>{"extfrag", "1"}, std::vector<std::string>{"completion"},
                      std::vector<std::string>{"completion", "zsh"}));

struct ServerErrorCase {
  std::string name;
  std::vector<std::string> args;  // {lease} stands for a fresh lease's id
  std::string code;
};

class CtlServerErrorTest : public CtlTest, public ::testing::WithParamInterface<ServerErrorCase> {};

TEST_P(CtlServerErrorTest, ExitsOneWithTheCodeAndMessage) {
  const std::string lease = std::to_string(NewLeaseId());
  std::vector<std::string> args;
  for (const std::string& a : GetParam().args) args.push_back(absl::StrReplaceAll(a, {{"{lease}", lease}}));
  const CtlResult r = Run(args);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, IsEmpty());
  EXPECT_THAT(r.err, MatchesRegex("physmemctl: " + GetParam().code + ": [^\n]+\n"));
}

INSTANTIATE_TEST_SUITE_P(
    Refusals, CtlServerErrorTest,
    ::testing::Values(
        ServerErrorCase{"UnknownGfp", {"alloc", "{lease}", "--gfp=GFP_BOGUS"}, "INVALID_ARGUMENT"},
        ServerErrorCase{"OrderTooLarge", {"alloc", "{lease}", "--order=11"}, "INVALID_ARGUMENT"},
        ServerErrorCase{"TtlTooShort", {"lease", "create", "--ttl_ms=1"}, "INVALID_ARGUMENT"},
        ServerErrorCase{"UnknownLease", {"lease", "get", "987654"}, "NOT_FOUND"},
        ServerErrorCase{"RevokeUnknownLease", {"lease", "revoke", "987654"}, "NOT_FOUND"},
        ServerErrorCase{"AllocInUnknownLease", {"alloc", "987654"}, "NOT_FOUND"},
        ServerErrorCase{"AllocInUnknownNamedLease", {"alloc", "x1"}, "NOT_FOUND"},
        ServerErrorCase{"RevokeUnknownNamedLease", {"lease", "revoke", "nic-tx"}, "NOT_FOUND"},
        ServerErrorCase{"UnknownKey", {"free", "{lease}", "--key=nope"}, "NOT_FOUND"},
        ServerErrorCase{"DoubleFree", {"free", "{lease}", "--pfn=0x100", "--order=0"}, "FAILED_PRECONDITION"},
        // pfn 1 is RAM the x86 boot memblock-reserves (reserve_real_mode()): never the buddy's.
        ServerErrorCase{"ReservedPfn", {"free", "{lease}", "--pfn=1", "--order=0"}, "OUT_OF_RANGE"},
        ServerErrorCase{"HighmemAddressForm", {"alloc", "{lease}", "--form=address", "--gfp=GFP_HIGHUSER"},
                        "FAILED_PRECONDITION"},
        ServerErrorCase{"PfnBeyondRam", {"address", "{lease}", "0x10000000"}, "OUT_OF_RANGE"}),
    [](const ::testing::TestParamInfo<ServerErrorCase>& info) { return info.param.name; });

TEST(CtlNoDaemon, ExitsOneWithUnavailable) {
  char dir[] = "/tmp/physmemctl-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  CtlProcess p({std::string("--target=unix://") + dir + "/absent.sock", "lease", "list"});
  std::optional<CtlResult> r = p.Wait(ScaledTimeout(std::chrono::seconds(10)));
  ::rmdir(dir);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, StartsWith("physmemctl: UNAVAILABLE: "));
}

TEST(CtlHelp, PrintsEveryCommandAndExitsZero) {
  CtlProcess p({"--help"});
  std::optional<CtlResult> r = p.Wait(ScaledTimeout(std::chrono::seconds(10)));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->exit_code, 0);
  for (const char* cmd : {"lease create", "lease keepalive", "lease revoke", "lease get", "lease list", "alloc",
                          "free", "address", "kmap", "kunmap", "read", "write", "zoneinfo", "buddyinfo", "extfrag",
                          "watch", "target", "validate", "completion bash", "--count=N", "-o, --output"}) {
    EXPECT_THAT(r->out, HasSubstr(cmd));
  }
  EXPECT_THAT(r->err, IsEmpty());
}

TEST_F(CtlTest, WriteThenReadRoundTripsHexAndFiles) {
  const uint64_t id = NewLeaseId();
  std::unique_ptr<Lease> lease = AttachTo(id);
  absl::StatusOr<PageHandle> page = lease->AllocPages("GFP_KERNEL", 2);  // 4 pages
  ASSERT_TRUE(page.ok()) << page.status();
  page->Release();
  const std::string pfn = absl::StrFormat("%#x", page->pfn() + 1);  // the block's second page
  CtlResult r = Run({"write", std::to_string(id), pfn, "--offset=4094", "--hex=48656c6c6f"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "bytes_written=5\n");
  r = Run({"read", std::to_string(id), pfn, "--offset=4094", "--length=2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "4865\n");
  absl::StatusOr<std::string> bytes = lease->ReadPages(page->pfn(), 2 * 4096 - 2, 5);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, "Hello") << "the write runs from the second page into the third";
  // Past the block's end: the daemon refuses, exit 1 with its code.
  r = Run({"read", std::to_string(id), pfn, "--offset=12000", "--length=400"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("physmemctl: OUT_OF_RANGE: "));
  r = Run({"write", std::to_string(id), pfn, "--hex=abc"});
  EXPECT_EQ(r.exit_code, 2) << "odd hex is a usage error";
  // Raw bytes from a file and back to another file.
  char dir[] = "/tmp/physmemctl-io-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string in = std::string(dir) + "/in", out = std::string(dir) + "/out";
  std::string blob(5000, '\0');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 31);
  std::ofstream(in, std::ios::binary) << blob;
  r = Run({"write", std::to_string(id), pfn, "--in=" + in});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Run({"read", std::to_string(id), pfn, "--length=5000", "--out=" + out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "bytes_read=5000\n");
  EXPECT_EQ(ReadAll(out), blob);
  std::filesystem::remove_all(dir);
}

// A daemon on the alpha-8k profile (8 KiB pages): `read` without --length reads one page of the
// target, 8192 bytes, not 4096.
class CtlAlpha8KTest : public CtlTest {
 protected:
  CtlAlpha8KTest()
      : CtlTest({"--target_file=" + std::string(PHYSMEM_SOURCE_DIR) + "/deploy/targets/alpha-8k.textproto"}) {}
};

TEST_F(CtlAlpha8KTest, ReadDefaultsToOnePageOfTheTarget) {
  const uint64_t id = NewLeaseId();
  std::unique_ptr<Lease> lease = AttachTo(id);
  absl::StatusOr<PageHandle> page = lease->AllocPages("GFP_KERNEL", 1);  // 2 pages of 8 KiB
  ASSERT_TRUE(page.ok()) << page.status();
  page->Release();
  const std::string pfn = absl::StrFormat("%#x", page->pfn());
  ASSERT_EQ(Run({"write", std::to_string(id), pfn, "--offset=8190", "--hex=abcd"}).exit_code, 0);
  ASSERT_EQ(Run({"write", std::to_string(id), pfn, "--offset=8192", "--hex=ef"}).exit_code, 0);
  const CtlResult r = Run({"read", std::to_string(id), pfn});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(r.out.size(), 2 * 8192 + 1) << "one 8 KiB page as hex and a newline";
  EXPECT_TRUE(r.out.ends_with("abcd\n")) << r.out.substr(r.out.size() - 9);
}

class CtlOtherUserTest : public CtlTest {
 protected:
  CtlOtherUserTest() : CtlTest({"--target=i386", "--mem_mb=64", "--unix_socket_mode=0666"}) {}
};

TEST_F(CtlOtherUserTest, AnotherUsersLeaseIsPermissionDenied) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to run physmemctl as another user";
  const uint64_t id = NewLeaseId();
  // Let the other user reach the socket in the daemon's private directory.
  const std::string dir = std::filesystem::path(daemon_.socket_path()).parent_path();
  ASSERT_EQ(::chmod(dir.c_str(), 0711), 0);
  constexpr uid_t kNobody = 65534;
  CtlProcess p(Args({"lease", "get", std::to_string(id)}), kNobody);
  std::optional<CtlResult> r = p.Wait(HangBound());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->exit_code, 1) << r->err;
  EXPECT_THAT(r->err, StartsWith("physmemctl: PERMISSION_DENIED: "));
}

}  // namespace
}  // namespace physmem::client
