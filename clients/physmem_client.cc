#include "clients/physmem_client.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"

namespace physmem::client {

namespace internal {

struct Connection {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::PhysMem::Stub> stub;
};

struct LeaseCore {
  LeaseCore(std::shared_ptr<Connection> c, uint64_t lease_id) : conn(std::move(c)), id(lease_id) {}

  // Records that the lease no longer exists; the first reason sticks.
  void MarkGone(std::string why) {
    MutexLock l(&mu);
    if (gone.load()) return;
    gone_reason = std::move(why);
    gone.store(true);
  }

  // NOT_FOUND, without asking the daemon, once the lease is known to be gone.
  absl::Status CheckAlive() const {
    if (!gone.load()) return absl::OkStatus();
    MutexLock l(&mu);
    return absl::NotFoundError(gone_reason);
  }

  const std::shared_ptr<Connection> conn;
  const uint64_t id;
  std::atomic<bool> gone{false};
  mutable Mutex mu;
  std::string gone_reason ABSL_GUARDED_BY(mu);  // set once, before `gone` turns true
};

}  // namespace internal

namespace {

using internal::Connection;
using internal::LeaseCore;

// Which allocation RPC Lease::Allocate calls.
enum Form { kPfn, kAddress, kZeroed };

// The daemon's limit for a reply (--max_message_bytes): a large bulk allocation or a long lease
// list is bigger than gRPC's 4 MiB default.
constexpr int kMaxMessageBytes = 64 << 20;
// The keep-alive's rhythm (docs/recovery.md, "What a restart does to clients"). A renewal every
// ttl/4. When the stream breaks, a new one after 50 ms (doubling up to ttl/20, at most 1 s, while
// streams keep failing on a daemon that answers), which waits for the channel: it reconnects every
// 200 ms at most, so the renewal comes at most ~200 ms after the daemon is back, and a restart of
// D ms plus the daemon's start-up S is survived whenever D + S < TTL - ttl/4 - 200 ms.
constexpr int64_t kRenewDivisor = 4;
constexpr int kReconnectInitialMs = 50;
constexpr int kReconnectMaxMs = 200;
constexpr int64_t kMinBackoffMs = 50;
constexpr int64_t kMaxBackoffMs = 1000;
constexpr int64_t kBackoffTtlDivisor = 20;

// Runs one unary call with a deadline `timeout_ms` from now.
template <typename Resp, typename Fn>
absl::StatusOr<Resp> Call(int64_t timeout_ms, Fn&& fn) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  Resp resp;
  const grpc::Status s = fn(&ctx, &resp);
  if (!s.ok()) return ToAbslStatus(s);
  return resp;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrFormat("cannot read the %s file %s: %s", what, path, std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The socket path of a "unix:" target ("unix:///abs/path", "unix:/abs/path", "unix:rel/path"),
// or "" for any other kind of target.
std::string UnixSocketPath(const std::string& target) {
  if (absl::StartsWith(target, "unix://")) return target.substr(7);
  if (absl::StartsWith(target, "unix:")) return target.substr(5);
  return "";
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(const ClientOptions& o) {
  const bool tls = !o.tls_ca_file.empty() || !o.tls_cert_file.empty() || !o.tls_key_file.empty();
  if (!tls) return grpc::InsecureChannelCredentials();
  if (!UnixSocketPath(o.target).empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "TLS options are for TCP targets; %s is a Unix socket, which is plaintext and identifies the caller "
        "by uid: drop the TLS files or use the daemon's TCP address (host:port)",
        o.target));
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate and its key go together: set both tls_cert_file and tls_key_file (mutual TLS), or "
        "neither");
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(o.tls_ca_file, "TLS CA");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!o.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(o.tls_cert_file, "TLS client certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(o.tls_key_file, "TLS client key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

// A clearer answer than gRPC's for the common Unix-socket failures, before trying to connect.
absl::Status CheckUnixSocket(const std::string& target, const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return absl::UnavailableError(
          absl::StrFormat("cannot connect to physmemd at %s: no such socket file (is physmemd running, and "
                          "serving --unix_socket=%s?)",
                          target, path));
    }
    if (errno != EACCES) return absl::OkStatus();  // let gRPC say what it finds
  } else if (!S_ISSOCK(st.st_mode)) {
    return absl::UnavailableError(
        absl::StrFormat("cannot connect to physmemd at %s: %s is not a socket", target, path));
  }
  if (::access(path.c_str(), R_OK | W_OK) != 0 && errno == EACCES) {
    return absl::UnavailableError(
        absl::StrFormat("cannot connect to physmemd at %s: permission denied (connecting needs write access to "
                        "the socket and search access to its directory; the daemon makes it mode 0660 "
                        "by default: owner and group)",
                        target));
  }
  return absl::OkStatus();
}

// The zone names of Allocation.zone, for the enum in packed bulk replies.
std::string ZoneName(int zone) {
  switch (zone) {
    case v1::ZONE_DMA: return "DMA";
    case v1::ZONE_DMA32: return "DMA32";
    case v1::ZONE_NORMAL: return "Normal";
    case v1::ZONE_HIGHMEM: return "HighMem";
    default: return absl::StrFormat("zone-%d", zone);
  }
}

const char* ChannelStateName(grpc_connectivity_state s) {
  switch (s) {
    case GRPC_CHANNEL_IDLE: return "IDLE";
    case GRPC_CHANNEL_CONNECTING: return "CONNECTING";
    case GRPC_CHANNEL_READY: return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE: return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN: return "SHUTDOWN";
  }
  return "UNKNOWN";
}

// Errors in destructors have no caller to return to. NOT_FOUND is expected there (the lease
// ended first, and took the block with it) and stays quiet; anything else is worth a line.
void ReportDestructorError(const std::string& what, const absl::Status& s) {
  if (s.ok() || s.code() == absl::StatusCode::kNotFound) return;
  std::fprintf(stderr, "physmem client: %s on destruction failed: %s\n", what.c_str(), s.ToString().c_str());
}

absl::StatusOr<uint64_t> FreeInLease(LeaseCore& core, v1::FreePagesRequest req) {
  if (absl::Status s = core.CheckAlive(); !s.ok()) return s;
  req.set_lease_id(core.id);
  Connection& c = *core.conn;
  absl::StatusOr<v1::FreePagesResponse> r =
      Call<v1::FreePagesResponse>(c.options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::FreePagesResponse* resp) {
        return c.stub->FreePages(ctx, req, resp);
      });
  if (!r.ok()) return r.status();
  return r->pages_freed();
}

}  // namespace

absl::Status ToAbslStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// ---- PageHandle ----

PageHandle::PageHandle(std::shared_ptr<internal::LeaseCore> core, v1::Allocation alloc)
    : core_(std::move(core)), alloc_(std::move(alloc)) {}

PageHandle::PageHandle(PageHandle&& other) noexcept
    : core_(std::move(other.core_)), alloc_(std::move(other.alloc_)), released_(other.released_) {
  other.core_ = nullptr;
}

PageHandle& PageHandle::operator=(PageHandle&& other) noexcept {
  if (this != &other) {
    FreeQuietly();
    core_ = std::move(other.core_);
    alloc_ = std::move(other.alloc_);
    released_ = other.released_;
    other.core_ = nullptr;
  }
  return *this;
}

PageHandle::~PageHandle() { FreeQuietly(); }

uint64_t PageHandle::lease_id() const { return core_ == nullptr ? 0 : core_->id; }

absl::Status PageHandle::Free() {
  if (!owns()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the handle of pfn %#x no longer owns the block (freed, released, or moved from)", alloc_.pfn()));
  }
  released_ = true;
  v1::FreePagesRequest req;
  req.set_pfn(alloc_.pfn());
  req.set_order(alloc_.order());
  return FreeInLease(*core_, req).status();
}

void PageHandle::FreeQuietly() {
  if (!owns()) return;
  const uint64_t pfn = alloc_.pfn();
  const uint32_t order = alloc_.order();
  ReportDestructorError(absl::StrFormat("freeing pfn %#x order %d of lease %d", pfn, order, core_->id), Free());
}

// ---- Lease ----

Lease::Lease(std::shared_ptr<internal::LeaseCore> core, int64_t granted_ttl_ms, uint64_t page_quota,
             bool revoke_on_destroy)
    : core_(std::move(core)),
      granted_ttl_ms_(granted_ttl_ms),
      page_quota_(page_quota),
      revoke_on_destroy_(revoke_on_destroy) {}

Lease::~Lease() {
  StopKeepAlive();
  if (!revoke_on_destroy_.load() || core_->gone.load()) return;
  ReportDestructorError(absl::StrFormat("revoking lease %d", core_->id), Revoke().status());
}

uint64_t Lease::id() const { return core_->id; }

bool Lease::gone() const { return core_->gone.load(); }

uint64_t Lease::Release() {
  revoke_on_destroy_.store(false);
  return core_->id;
}

absl::Status Lease::keepalive_status() const {
  MutexLock l(&ka_mu_);
  return ka_status_;
}

void Lease::StartKeepAlive(KeepAliveCallback on_keepalive) {
  ka_thread_ = std::thread([this, cb = std::move(on_keepalive)] { KeepAliveLoop(cb); });
}

void Lease::StopKeepAlive() {
  {
    MutexLock l(&ka_mu_);
    ka_stop_ = true;
    // Unblocks a Read() waiting on a daemon that does not answer.
    if (ka_context_ != nullptr) ka_context_->TryCancel();
  }
  ka_cv_.SignalAll();
  // A keep-alive callback that revokes the lease runs on this very thread: it cannot join itself
  // (the loop ends on its own once it sees ka_stop_).
  MutexLock join(&ka_join_mu_);
  if (ka_thread_.joinable() && ka_thread_.get_id() != std::this_thread::get_id()) ka_thread_.join();
}

bool Lease::SleepUnlessStopping(int64_t ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  MutexLock l(&ka_mu_);
  while (!ka_stop_) {
    if (ka_cv_.WaitUntil(&ka_mu_, deadline)) return !ka_stop_;  // timed out
  }
  return false;
}

void Lease::KeepAliveLoop(const KeepAliveCallback& on_keepalive) {
  const int64_t max_backoff_ms = std::clamp(granted_ttl_ms_ / kBackoffTtlDivisor, kMinBackoffMs, kMaxBackoffMs);
  int64_t backoff_ms = kMinBackoffMs;
  while (KeepAliveStream(on_keepalive, &backoff_ms)) {
    if (!SleepUnlessStopping(backoff_ms)) return;
    backoff_ms = std::min(backoff_ms * 2, max_backoff_ms);
  }
}

bool Lease::KeepAliveStream(const KeepAliveCallback& on_keepalive, int64_t* backoff_ms) {
  grpc::ClientContext ctx;
  // While the daemon is away (a restart) the stream waits for the channel to connect — it retries
  // every 200 ms at most (Client::Connect) — instead of failing at once: a call failed in
  // TRANSIENT_FAILURE never tries, and without a call waiting nobody drives a new connection's
  // handshake, which then sat unread for seconds. StopKeepAlive() cancels the wait.
  ctx.set_wait_for_ready(true);
  {
    MutexLock l(&ka_mu_);
    if (ka_stop_) return false;
    ka_context_ = &ctx;
  }
  std::unique_ptr<grpc::ClientReaderWriter<v1::KeepAliveRequest, v1::KeepAliveResponse>> stream =
      core_->conn->stub->KeepAlive(&ctx);
  v1::KeepAliveRequest req;
  req.set_lease_id(core_->id);
  v1::KeepAliveResponse resp;
  bool broken = false;  // the stream failed: Finish() says why, and we retry
  bool stop = false;    // the lease is gone, or we are told to stop
  while (!stop) {
    AddCachedPagesReport(req);
    if (!stream->Write(req) || !stream->Read(&resp)) {
      broken = true;
      break;
    }
    if (on_keepalive) on_keepalive(resp);
    if (resp.ttl_ms() <= 0) {
      core_->MarkGone(absl::StrFormat(
          "lease %d no longer exists: the keep-alive was answered with ttl_ms 0 (it expired, was revoked, or the "
          "daemon restarted)",
          core_->id));
      stop = true;
      break;
    }
    renewals_.fetch_add(1);
    *backoff_ms = kMinBackoffMs;
    {
      MutexLock l(&ka_mu_);
      ka_status_ = absl::OkStatus();
    }
    stop = !SleepUnlessStopping(std::max<int64_t>(resp.ttl_ms() / kRenewDivisor, 1));
  }
  if (!broken) stream->WritesDone();
  const grpc::Status status = stream->Finish();
  MutexLock l(&ka_mu_);
  ka_context_ = nullptr;
  if (stop || ka_stop_) return false;
  ka_status_ = status.ok() ? absl::UnavailableError("the KeepAlive stream closed without an answer")
                           : ToAbslStatus(status);
  // Not ours, or not served: retrying cannot help.
  const grpc::StatusCode code = status.error_code();
  return code != grpc::StatusCode::PERMISSION_DENIED && code != grpc::StatusCode::UNAUTHENTICATED &&
         code != grpc::StatusCode::UNIMPLEMENTED;
}

absl::StatusOr<PageHandle> Lease::Allocate(const std::string& gfp, uint32_t order, const std::string& key,
                                           int form) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::AllocPagesRequest req;
  req.set_lease_id(core_->id);
  req.set_gfp(gfp);
  req.set_order(order);
  req.set_key(key);
  Connection& c = *core_->conn;
  absl::StatusOr<v1::Allocation> a =
      Call<v1::Allocation>(c.options.alloc_timeout_ms, [&](grpc::ClientContext* ctx, v1::Allocation* resp) {
        switch (form) {
          case kAddress: return c.stub->GetFreePages(ctx, req, resp);
          case kZeroed: return c.stub->GetZeroedPage(ctx, req, resp);
          default: return c.stub->AllocPages(ctx, req, resp);
        }
      });
  if (!a.ok()) return a.status();
  return PageHandle(core_, *std::move(a));
}

absl::StatusOr<PageHandle> Lease::AllocPages(const std::string& gfp, uint32_t order, const std::string& key) {
  return Allocate(gfp, order, key, kPfn);
}

absl::StatusOr<PageHandle> Lease::GetFreePages(const std::string& gfp, uint32_t order, const std::string& key) {
  return Allocate(gfp, order, key, kAddress);
}

absl::StatusOr<PageHandle> Lease::GetZeroedPage(const std::string& gfp, const std::string& key) {
  return Allocate(gfp, 0, key, kZeroed);
}

absl::StatusOr<v1::AllocPagesBulkResponse> Lease::CallAllocPagesBulk(const v1::AllocPagesBulkRequest& req) {
  Connection& c = *core_->conn;
  absl::StatusOr<v1::AllocPagesBulkResponse> r = Call<v1::AllocPagesBulkResponse>(
      c.options.alloc_timeout_ms, [&](grpc::ClientContext* ctx, v1::AllocPagesBulkResponse* resp) {
        return c.stub->AllocPagesBulk(ctx, req, resp);
      });
  if (!r.ok()) return r.status();
  // The reply is parallel packed arrays, entry i of each describing page i.
  const int n = r->pfn_size();
  if (r->zone_size() != n || r->phys_addr_size() != n || r->virt_addr_size() != n || r->arena_offset_size() != n) {
    return absl::InternalError(absl::StrFormat(
        "malformed AllocPagesBulk reply: %d pfns but %d zones, %d phys_addrs, %d virt_addrs, %d arena_offsets "
        "(expected one of each per page)",
        n, r->zone_size(), r->phys_addr_size(), r->virt_addr_size(), r->arena_offset_size()));
  }
  // Or runs (AllocPagesBulkRequest.runs): each of at least one page, with the page size that
  // places its later pages.
  if (r->run_size() != 0 && (r->page_shift() == 0 || r->page_shift() > 30)) {
    return absl::InternalError(absl::StrFormat("malformed AllocPagesBulk reply: %d runs with page_shift %d",
                                               r->run_size(), r->page_shift()));
  }
  for (const v1::PageRun& run : r->run()) {
    if (run.count() == 0) {
      return absl::InternalError(absl::StrFormat("malformed AllocPagesBulk reply: an empty run at pfn %#x", run.pfn()));
    }
  }
  return r;
}

absl::StatusOr<v1::FreePagesBulkResponse> Lease::CallFreePagesBulk(const v1::FreePagesBulkRequest& req) {
  Connection& c = *core_->conn;
  return Call<v1::FreePagesBulkResponse>(
      c.options.alloc_timeout_ms, [&](grpc::ClientContext* ctx, v1::FreePagesBulkResponse* resp) {
        return c.stub->FreePagesBulk(ctx, req, resp);
      });
}

absl::StatusOr<std::vector<PageHandle>> Lease::AllocPagesBulk(const std::string& gfp, uint32_t count) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::AllocPagesBulkRequest req;
  req.set_lease_id(core_->id);
  req.set_gfp(gfp);
  req.set_count(count);
  req.set_runs(true);  // a daemon before issue #15 ignores it and sends the per-page arrays
  absl::StatusOr<v1::AllocPagesBulkResponse> r = CallAllocPagesBulk(req);
  if (!r.ok()) return r.status();
  const int n = r->pfn_size();
  std::vector<PageHandle> pages;
  pages.reserve(n);
  for (const v1::PageRun& run : r->run()) {
    const uint64_t page_size = uint64_t{1} << r->page_shift();
    for (uint32_t i = 0; i < run.count(); ++i) {
      v1::Allocation a;
      a.set_pfn(run.pfn() + i);
      a.set_order(0);
      a.set_zone(ZoneName(run.zone()));
      a.set_phys_addr(run.phys_addr() + i * page_size);
      a.set_virt_addr(run.virt_addr() == 0 ? 0 : run.virt_addr() + i * page_size);
      a.set_arena_offset(run.arena_offset() + i * page_size);
      pages.push_back(PageHandle(core_, std::move(a)));
    }
  }
  for (int i = 0; i < n; ++i) {
    v1::Allocation a;
    a.set_pfn(r->pfn(i));
    a.set_order(0);
    a.set_zone(ZoneName(r->zone(i)));
    a.set_phys_addr(r->phys_addr(i));
    a.set_virt_addr(r->virt_addr(i));
    a.set_arena_offset(r->arena_offset(i));
    pages.push_back(PageHandle(core_, std::move(a)));
  }
  return pages;
}

absl::StatusOr<v1::AllocPagesBulkResponse> Lease::AllocBulkRaw(uint32_t gfp_mask, uint32_t count) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::AllocPagesBulkRequest req;
  req.set_lease_id(core_->id);
  req.set_gfp_mask(gfp_mask);
  req.set_count(count);
  return CallAllocPagesBulk(req);
}

absl::StatusOr<v1::Allocation> Lease::AllocRaw(uint32_t gfp_mask, uint32_t order) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::AllocPagesRequest req;
  req.set_lease_id(core_->id);
  req.set_gfp_mask(gfp_mask);
  req.set_order(order);
  Connection& c = *core_->conn;
  return Call<v1::Allocation>(c.options.alloc_timeout_ms, [&](grpc::ClientContext* ctx, v1::Allocation* resp) {
    return c.stub->AllocPages(ctx, req, resp);
  });
}

absl::StatusOr<v1::FreePagesBulkResponse> Lease::FreeRaw(const std::vector<uint64_t>& pfns,
                                                         const std::vector<uint32_t>& orders) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::FreePagesBulkRequest req;
  req.set_lease_id(core_->id);
  req.mutable_pfn()->Add(pfns.begin(), pfns.end());
  req.mutable_order()->Add(orders.begin(), orders.end());
  return CallFreePagesBulk(req);
}

const std::atomic<bool>& Lease::gone_flag() const { return core_->gone; }

void Lease::MarkGone(std::string why) { core_->MarkGone(std::move(why)); }

bool Lease::SetCachedPagesReporter(std::function<uint64_t()> reporter) {
  MutexLock l(&report_mu_);
  if (!reporter) {
    cached_pages_reporter_ = [] { return uint64_t{0}; };
    cache_attached_ = false;
    return true;
  }
  if (cache_attached_) return false;
  cached_pages_reporter_ = std::move(reporter);
  cache_attached_ = true;
  return true;
}

void Lease::AddCachedPagesReport(v1::KeepAliveRequest& req) {
  MutexLock l(&report_mu_);
  if (cached_pages_reporter_) req.set_client_cached_pages(cached_pages_reporter_());
}

absl::StatusOr<v1::FreePagesBulkResponse> Lease::FreeAsRuns(const v1::FreePagesBulkRequest& blocks) {
  if (blocks.order_size() == 0) return absl::InvalidArgumentError("no blocks");
  for (uint32_t order : blocks.order()) {
    if (order != 0) return absl::InvalidArgumentError("runs carry order-0 pages only");
  }
  std::vector<uint64_t> pfns(blocks.pfn().begin(), blocks.pfn().end());
  std::sort(pfns.begin(), pfns.end());
  v1::FreePagesBulkRequest req;
  req.set_lease_id(blocks.lease_id());
  for (size_t i = 0; i < pfns.size();) {
    size_t j = i + 1;
    while (j < pfns.size() && pfns[j] == pfns[j - 1] + 1) ++j;
    v1::PageRun* run = req.add_run();
    run->set_pfn(pfns[i]);
    run->set_count(static_cast<uint32_t>(j - i));
    i = j;
  }
  return CallFreePagesBulk(req);
}

bool Lease::RunsRefused(const absl::Status& s) {
  // The refusals of a run form that change nothing (an older daemon's "0 blocks" included): the
  // per-block form then frees what it can and names each refused block, as it always did.
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<v1::FreePagesBulkResponse> Lease::FreePagesBulk(std::vector<PageHandle>& pages) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::FreePagesBulkRequest req;
  req.set_lease_id(core_->id);
  for (const PageHandle& p : pages) {
    if (!p.owns()) continue;
    if (p.core_ != core_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "pfn %#x belongs to lease %d, not to lease %d: free it through its own lease", p.pfn(), p.lease_id(),
          core_->id));
    }
    req.add_pfn(p.pfn());
    req.add_order(p.order());
  }
  if (req.pfn_size() == 0) return v1::FreePagesBulkResponse();
  absl::StatusOr<v1::FreePagesBulkResponse> r = FreeAsRuns(req);
  if (!r.ok() && RunsRefused(r.status())) r = CallFreePagesBulk(req);
  if (!r.ok()) return r.status();
  // Freed or refused, no handle owns its block any more (a refused free changed nothing, and a
  // retry would be refused the same way).
  for (PageHandle& p : pages) p.released_ = true;
  return r;
}

absl::StatusOr<uint64_t> Lease::FreePages(uint64_t pfn, uint32_t order) {
  v1::FreePagesRequest req;
  req.set_pfn(pfn);
  req.set_order(order);
  return FreeInLease(*core_, req);
}

absl::StatusOr<uint64_t> Lease::FreePagesByKey(const std::string& key) {
  if (key.empty()) return absl::InvalidArgumentError("FreePagesByKey needs a non-empty key");
  v1::FreePagesRequest req;
  req.set_key(key);
  return FreeInLease(*core_, req);
}

absl::StatusOr<uint64_t> Lease::FreePagesByAddress(uint64_t addr, uint32_t order) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::FreePagesByAddressRequest req;
  req.set_lease_id(core_->id);
  req.set_addr(addr);
  req.set_order(order);
  Connection& c = *core_->conn;
  absl::StatusOr<v1::FreePagesResponse> r = Call<v1::FreePagesResponse>(
      c.options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::FreePagesResponse* resp) {
        return c.stub->FreePagesByAddress(ctx, req, resp);
      });
  if (!r.ok()) return r.status();
  return r->pages_freed();
}

absl::StatusOr<uint64_t> Lease::PageAddress(uint64_t pfn) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::PageAddressRequest req;
  req.set_lease_id(core_->id);
  req.set_pfn(pfn);
  Connection& c = *core_->conn;
  absl::StatusOr<v1::PageAddressResponse> r = Call<v1::PageAddressResponse>(
      c.options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::PageAddressResponse* resp) {
        return c.stub->PageAddress(ctx, req, resp);
      });
  if (!r.ok()) return r.status();
  return r->virt_addr();
}

absl::StatusOr<uint64_t> Lease::Kmap(uint64_t pfn) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::KmapRequest req;
  req.set_lease_id(core_->id);
  req.set_pfn(pfn);
  Connection& c = *core_->conn;
  absl::StatusOr<v1::KmapResponse> r = Call<v1::KmapResponse>(
      c.options.call_timeout_ms,
      [&](grpc::ClientContext* ctx, v1::KmapResponse* resp) { return c.stub->Kmap(ctx, req, resp); });
  if (!r.ok()) return r.status();
  return r->virt_addr();
}

absl::StatusOr<std::string> Lease::ReadPages(uint64_t pfn, uint64_t offset, uint64_t length) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::ReadPagesRequest req;
  req.set_lease_id(core_->id);
  req.set_pfn(pfn);
  req.set_offset(offset);
  req.set_length(length);
  Connection& c = *core_->conn;
  absl::StatusOr<v1::ReadPagesResponse> r = Call<v1::ReadPagesResponse>(
      c.options.call_timeout_ms,
      [&](grpc::ClientContext* ctx, v1::ReadPagesResponse* resp) { return c.stub->ReadPages(ctx, req, resp); });
  if (!r.ok()) return r.status();
  return std::move(*r->mutable_data());
}

absl::Status Lease::WritePages(uint64_t pfn, uint64_t offset, const std::string& data) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::WritePagesRequest req;
  req.set_lease_id(core_->id);
  req.set_pfn(pfn);
  req.set_offset(offset);
  req.set_data(data);
  Connection& c = *core_->conn;
  return Call<v1::WritePagesResponse>(c.options.call_timeout_ms,
                                      [&](grpc::ClientContext* ctx, v1::WritePagesResponse* resp) {
                                        return c.stub->WritePages(ctx, req, resp);
                                      })
      .status();
}

absl::Status Lease::Kunmap(uint64_t pfn) {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::KmapRequest req;
  req.set_lease_id(core_->id);
  req.set_pfn(pfn);
  Connection& c = *core_->conn;
  return Call<v1::KunmapResponse>(c.options.call_timeout_ms,
                                  [&](grpc::ClientContext* ctx, v1::KunmapResponse* resp) {
                                    return c.stub->Kunmap(ctx, req, resp);
                                  })
      .status();
}

absl::StatusOr<v1::LeaseInfo> Lease::Info() {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::GetLeaseRequest req;
  req.set_lease_id(core_->id);
  Connection& c = *core_->conn;
  return Call<v1::LeaseInfo>(c.options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::LeaseInfo* resp) {
    return c.stub->GetLease(ctx, req, resp);
  });
}

absl::StatusOr<v1::KeepAliveResponse> Lease::Renew() {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::KeepAliveRequest req;
  req.set_lease_id(core_->id);
  AddCachedPagesReport(req);
  Connection& c = *core_->conn;
  return Call<v1::KeepAliveResponse>(c.options.call_timeout_ms,
                                     [&](grpc::ClientContext* ctx, v1::KeepAliveResponse* resp) {
                                       return c.stub->RenewLease(ctx, req, resp);
                                     });
}

absl::StatusOr<uint64_t> Lease::Revoke() {
  if (absl::Status s = core_->CheckAlive(); !s.ok()) return s;
  v1::RevokeLeaseRequest req;
  req.set_lease_id(core_->id);
  Connection& c = *core_->conn;
  absl::StatusOr<v1::RevokeLeaseResponse> r = Call<v1::RevokeLeaseResponse>(
      c.options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::RevokeLeaseResponse* resp) {
        return c.stub->RevokeLease(ctx, req, resp);
      });
  // Only a definite answer ends the lease here; after UNAVAILABLE it may still be alive, and the
  // keep-alive goes on holding it.
  if (r.ok()) {
    core_->MarkGone(absl::StrFormat("lease %d was revoked by this client", core_->id));
  } else if (r.status().code() == absl::StatusCode::kNotFound) {
    core_->MarkGone(std::string(r.status().message()));
  } else {
    return r.status();
  }
  StopKeepAlive();
  if (!r.ok()) return r.status();
  return r->pages_freed();
}

// ---- Client ----

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& given) {
  if (given.target.empty()) return absl::InvalidArgumentError("the target is empty: expected unix:///path or host:port");
  ClientOptions options = given;
  // A bare absolute path is a Unix socket (gRPC would take it for a host name and time out).
  if (options.target[0] == '/') options.target = "unix://" + options.target;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = Credentials(options);
  if (!creds.ok()) return creds.status();
  if (const std::string path = UnixSocketPath(options.target); !path.empty()) {
    if (absl::Status s = CheckUnixSocket(options.target, path); !s.ok()) return s;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnection every 50 ms growing to at most 200 ms (gRPC's default: 1 s growing to 2 min): a
  // lease's keep-alive waits on the channel while the daemon restarts (Lease::KeepAliveStream),
  // and must get through well within the TTL once it is back.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, kReconnectInitialMs);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kReconnectMaxMs);
  auto conn = std::make_shared<Connection>();
  conn->options = options;
  conn->channel = grpc::CreateCustomChannel(options.target, *creds, args);
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  if (!conn->channel->WaitForConnected(deadline)) {
    return absl::UnavailableError(absl::StrFormat(
        "cannot connect to physmemd at %s within %d ms (channel state %s): is the daemon running and serving "
        "there%s?",
        options.target, options.connect_timeout_ms, ChannelStateName(conn->channel->GetState(false)),
        UnixSocketPath(options.target).empty() ? ", and do the TLS options match its listener" : ""));
  }
  conn->stub = v1::PhysMem::NewStub(conn->channel);
  return std::unique_ptr<Client>(new Client(std::move(conn)));
}

Client::~Client() = default;

v1::PhysMem::Stub& Client::stub() { return *conn_->stub; }

std::shared_ptr<grpc::Channel> Client::channel() const { return conn_->channel; }

const ClientOptions& Client::options() const { return conn_->options; }

absl::StatusOr<v1::GetZoneInfoResponse> Client::GetZoneInfo() {
  return Call<v1::GetZoneInfoResponse>(conn_->options.call_timeout_ms,
                                       [&](grpc::ClientContext* ctx, v1::GetZoneInfoResponse* resp) {
                                         return conn_->stub->GetZoneInfo(ctx, v1::GetZoneInfoRequest(), resp);
                                       });
}

absl::StatusOr<v1::GetTargetResponse> Client::GetTarget() {
  return Call<v1::GetTargetResponse>(conn_->options.call_timeout_ms,
                                     [&](grpc::ClientContext* ctx, v1::GetTargetResponse* resp) {
                                       return conn_->stub->GetTarget(ctx, v1::GetTargetRequest(), resp);
                                     });
}

absl::StatusOr<v1::ValidateResponse> Client::Validate() {
  return Call<v1::ValidateResponse>(conn_->options.call_timeout_ms,
                                    [&](grpc::ClientContext* ctx, v1::ValidateResponse* resp) {
                                      return conn_->stub->Validate(ctx, v1::ValidateRequest(), resp);
                                    });
}

absl::StatusOr<v1::ListLeasesResponse> Client::ListLeases() {
  return Call<v1::ListLeasesResponse>(conn_->options.call_timeout_ms,
                                      [&](grpc::ClientContext* ctx, v1::ListLeasesResponse* resp) {
                                        return conn_->stub->ListLeases(ctx, v1::ListLeasesRequest(), resp);
                                      });
}

absl::StatusOr<v1::LeaseInfo> Client::GetLease(uint64_t lease_id) {
  v1::GetLeaseRequest req;
  req.set_lease_id(lease_id);
  return Call<v1::LeaseInfo>(conn_->options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::LeaseInfo* resp) {
    return conn_->stub->GetLease(ctx, req, resp);
  });
}

absl::StatusOr<v1::KeepAliveResponse> Client::RenewLease(uint64_t lease_id) {
  v1::KeepAliveRequest req;
  req.set_lease_id(lease_id);
  return Call<v1::KeepAliveResponse>(conn_->options.call_timeout_ms,
                                     [&](grpc::ClientContext* ctx, v1::KeepAliveResponse* resp) {
                                       return conn_->stub->RenewLease(ctx, req, resp);
                                     });
}

absl::StatusOr<uint64_t> Client::RevokeLease(uint64_t lease_id) {
  v1::RevokeLeaseRequest req;
  req.set_lease_id(lease_id);
  absl::StatusOr<v1::RevokeLeaseResponse> r = Call<v1::RevokeLeaseResponse>(
      conn_->options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::RevokeLeaseResponse* resp) {
        return conn_->stub->RevokeLease(ctx, req, resp);
      });
  if (!r.ok()) return r.status();
  return r->pages_freed();
}

absl::StatusOr<std::unique_ptr<Lease>> Client::CreateLease(const LeaseOptions& options) {
  v1::CreateLeaseRequest req;
  req.set_ttl_ms(options.ttl_ms);
  req.set_page_quota(options.page_quota);
  req.set_name(options.name);
  absl::StatusOr<v1::CreateLeaseResponse> r = Call<v1::CreateLeaseResponse>(
      conn_->options.call_timeout_ms, [&](grpc::ClientContext* ctx, v1::CreateLeaseResponse* resp) {
        return conn_->stub->CreateLease(ctx, req, resp);
      });
  if (!r.ok()) return r.status();
  std::unique_ptr<Lease> lease(new Lease(std::make_shared<LeaseCore>(conn_, r->lease_id()), r->granted_ttl_ms(),
                                         r->page_quota(), /*revoke_on_destroy=*/true));
  if (options.keepalive) lease->StartKeepAlive(options.on_keepalive);
  return lease;
}

absl::StatusOr<std::unique_ptr<Lease>> Client::AttachLease(uint64_t lease_id, const AttachOptions& options) {
  absl::StatusOr<v1::LeaseInfo> info = GetLease(lease_id);
  if (!info.ok()) return info.status();
  std::unique_ptr<Lease> lease(new Lease(std::make_shared<LeaseCore>(conn_, lease_id), info->granted_ttl_ms(),
                                         info->page_quota(), options.revoke_on_destroy));
  if (options.keepalive) lease->StartKeepAlive(options.on_keepalive);
  return lease;
}

}  // namespace physmem::client
