// The C++ client of physmemd: a connection (Client), leases that keep themselves alive and end
// when their owner does (Lease), and allocated blocks that free themselves (PageHandle).
//
// Who uses it: physmemctl, the load generator, integration tests, and any program that wants
// emulated physical pages. The API it speaks is proto/physmem/v1/physmem.proto; every call
// returns absl::Status / absl::StatusOr carrying the server's exact gRPC code and message (or
// gRPC's own, e.g. UNAVAILABLE or DEADLINE_EXCEEDED, when the call never got an answer).
//
//   absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect({});   // the default Unix socket
//   if (!c.ok()) return c.status();
//   absl::StatusOr<std::unique_ptr<Lease>> lease = (*c)->CreateLease({.ttl_ms = 10000, .name = "rx"});
//   if (!lease.ok()) return lease.status();
//   absl::StatusOr<PageHandle> page = (*lease)->AllocPages("GFP_KERNEL", 2);  // 4 pages
//   ... page->pfn(), page->virt_addr() ...
//   // page's destructor frees the block; then lease's destructor stops the keep-alive and
//   // revokes the lease (which would also have freed anything still held).
//
// Lifetimes: a PageHandle should be freed (or released) before its Lease ends. If it outlives
// it, nothing breaks: ending the lease freed the block on the server, the handle knows the
// lease is gone, and its Free() returns NOT_FOUND without a call (its destructor stays quiet).
// A Lease may outlive the Client that made it: both share the channel.
//
// Thread-safety: Client and Lease are thread-safe (calls may run concurrently on one object; the
// gRPC stub is). A PageHandle is a single-owner value, like std::unique_ptr: do not use one
// handle from two threads at once. Callbacks passed in run on the lease's keep-alive thread.
#ifndef PHYSMEM_CLIENTS_PHYSMEM_CLIENT_H_
#define PHYSMEM_CLIENTS_PHYSMEM_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/mutex.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/default_socket.h"

namespace physmem::client {

// The target when none is given: $PHYSMEM_TARGET, else the system daemon's socket if it exists,
// else this user's (server/default_socket.h has the rule, shared with the daemon).
inline std::string DefaultTarget() { return DefaultClientTarget(); }

struct ClientOptions {
  // gRPC target: "unix:///path/to/physmemd.sock" or just "/path/to/physmemd.sock" (identity =
  // this process's uid), or "host:port" for the daemon's TCP listener.
  std::string target = DefaultTarget();
  // TLS for TCP targets: the CA that signed the server's certificate; with cert and key as well,
  // mutual TLS (identity = the certificate's subject). All empty on TCP: plaintext, which the
  // daemon accepts only with --allow_insecure_tcp. Not allowed with a unix: target.
  std::string tls_ca_file, tls_cert_file, tls_key_file;
  // How long Connect() waits for the channel to become ready.
  int64_t connect_timeout_ms = 2000;
  // Deadline of each allocating call: AllocPages, GetFreePages and GetZeroedPage may wait for
  // memory (the daemon waits at most min(this, its --max_alloc_wait_ms), then answers
  // RESOURCE_EXHAUSTED); the bulk calls carry thousands of pages.
  int64_t alloc_timeout_ms = 10000;
  // Deadline of every other call.
  int64_t call_timeout_ms = 2000;
};

// The grpc::Status -> absl::Status mapping every method uses: same code, same message. The
// codes are the same canonical set on both sides.
absl::Status ToAbslStatus(const grpc::Status& status);

// Called on the keep-alive thread with every renewal's answer; ttl_ms == 0 means the lease no
// longer exists (the keep-alive then stops). It may call the Lease's methods, Revoke() included,
// but must not destroy the Lease (whose destructor waits for this thread).
using KeepAliveCallback = std::function<void(const v1::KeepAliveResponse&)>;

struct LeaseOptions {
  int64_t ttl_ms = 10000;   // time to live; the daemon allows [--min_lease_ttl_ms, --max_lease_ttl_ms]
  uint64_t page_quota = 0;  // most pages held at once; 0 = the daemon's default
  std::string name;         // free text, at most 64 bytes
  bool keepalive = true;    // renew over the KeepAlive stream every ttl/4 while the Lease lives
  KeepAliveCallback on_keepalive;
};

// For Client::AttachLease: taking charge of a lease that already exists (made by another process,
// e.g. `physmemctl lease create`, by the same identity).
struct AttachOptions {
  bool keepalive = false;          // keep it alive while the Lease object lives
  bool revoke_on_destroy = false;  // false: the destructor leaves it (as after Lease::Release())
  KeepAliveCallback on_keepalive;
};

namespace internal {
struct Connection;  // channel + stub + options, shared by a Client and its Leases
struct LeaseCore;   // a lease's id and liveness, shared by a Lease and its PageHandles
}  // namespace internal

class Lease;
class PageCache;

// One allocated block (2^order pages) held by a lease. Move-only; the destructor frees the block
// unless Free() or Release() was called. The accessors keep the block's values after either.
class PageHandle {
 public:
  PageHandle() = default;
  PageHandle(PageHandle&& other) noexcept;
  PageHandle& operator=(PageHandle&& other) noexcept;
  PageHandle(const PageHandle&) = delete;
  PageHandle& operator=(const PageHandle&) = delete;
  ~PageHandle();

  uint64_t pfn() const { return alloc_.pfn(); }
  uint32_t order() const { return alloc_.order(); }
  const std::string& zone() const { return alloc_.zone(); }       // "DMA", "DMA32", "Normal", "HighMem"
  uint64_t phys_addr() const { return alloc_.phys_addr(); }       // emulated physical address
  uint64_t virt_addr() const { return alloc_.virt_addr(); }       // 0 for an unmapped highmem page
  uint64_t arena_offset() const { return alloc_.arena_offset(); } // byte offset in the arena
  const std::string& key() const { return alloc_.key(); }
  bool replayed() const { return alloc_.replayed(); }             // a retry with the same key
  const v1::Allocation& allocation() const { return alloc_; }
  uint64_t lease_id() const;
  // True while the handle will free the block on destruction.
  bool owns() const { return core_ != nullptr && !released_; }

  // __free_pages() now. FAILED_PRECONDITION if the handle no longer owns the block; NOT_FOUND if
  // the lease has ended (its end freed the block). The handle owns nothing afterwards, even on
  // error: a refused free changed nothing on the server, and retrying would not help.
  absl::Status Free();
  // Gives the block up without freeing it: it stays allocated until freed by pfn or key, or
  // until the lease ends.
  void Release() { released_ = true; }

 private:
  friend class Lease;
  PageHandle(std::shared_ptr<internal::LeaseCore> core, v1::Allocation alloc);
  void FreeQuietly();

  std::shared_ptr<internal::LeaseCore> core_;
  v1::Allocation alloc_;
  bool released_ = false;
};

// A lease owned by this process. While it lives, a background thread renews it over the
// KeepAlive stream every ttl/4. When the stream breaks (the daemon restarted, the connection
// dropped) a new stream waits for the channel, which reconnects every 200 ms at most, and renews
// as soon as the daemon is back: a lease survives a daemon restart (kill -9 with a journal,
// docs/recovery.md) of D ms, start-up included, whenever D < TTL - ttl/4 - 200 ms;
// keepalive_status() is UNAVAILABLE meanwhile. When the daemon answers
// ttl_ms = 0 the lease is gone (expired, revoked elsewhere, or the daemon restarted): the Lease
// records it and every later call fails fast with NOT_FOUND. The destructor stops the keep-alive
// and revokes the lease, freeing everything it holds, unless Release() was called.
class Lease {
 public:
  ~Lease();
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  uint64_t id() const;
  int64_t granted_ttl_ms() const { return granted_ttl_ms_; }
  uint64_t page_quota() const { return page_quota_; }

  // alloc_pages(gfp, order): a 2^order block. `gfp` is the kernel's spelling ("GFP_KERNEL",
  // "GFP_KERNEL|__GFP_DMA32") or a number ("0xcc0"). With `key`, a retry returns the same block
  // (replayed() == true) instead of a second one.
  absl::StatusOr<PageHandle> AllocPages(const std::string& gfp, uint32_t order, const std::string& key = "");
  // __get_free_pages(gfp, order): the same, for callers that want virt_addr();
  // FAILED_PRECONDITION with __GFP_HIGHMEM.
  absl::StatusOr<PageHandle> GetFreePages(const std::string& gfp, uint32_t order, const std::string& key = "");
  // get_zeroed_page(gfp): one zeroed page.
  absl::StatusOr<PageHandle> GetZeroedPage(const std::string& gfp, const std::string& key = "");
  // alloc_pages_bulk(gfp, count): up to `count` order-0 pages, without waiting; may be fewer.
  absl::StatusOr<std::vector<PageHandle>> AllocPagesBulk(const std::string& gfp, uint32_t count);

  // Frees the blocks of all the handles that own one, in one call (FreePagesBulk); every handle
  // owns nothing afterwards. The reply counts what was freed and lists the refused blocks with
  // their codes (each refusal changed nothing). INVALID_ARGUMENT, before any call, for a handle
  // of another lease.
  absl::StatusOr<v1::FreePagesBulkResponse> FreePagesBulk(std::vector<PageHandle>& pages);

  // Frees by pfn and order, by allocation key, or by direct-map address (free_pages(addr, order));
  // each returns the pages freed. For blocks not held by a PageHandle (released, or allocated by
  // another process with this lease).
  absl::StatusOr<uint64_t> FreePages(uint64_t pfn, uint32_t order);
  absl::StatusOr<uint64_t> FreePagesByKey(const std::string& key);
  absl::StatusOr<uint64_t> FreePagesByAddress(uint64_t addr, uint32_t order);

  absl::StatusOr<uint64_t> PageAddress(uint64_t pfn);  // page_address(): 0 for unmapped highmem
  absl::StatusOr<uint64_t> Kmap(uint64_t pfn);         // the page's kmap() virtual address
  absl::Status Kunmap(uint64_t pfn);
  // Page contents over RPC (ReadPages / WritePages): `length` bytes (or `data`) at `offset` bytes
  // from the start of page `pfn`, all inside one block this lease holds; at most the daemon's
  // --max_page_io_bytes per call. For a zero-copy view of a local file-backed arena, see
  // clients/arena_mapping.h.
  absl::StatusOr<std::string> ReadPages(uint64_t pfn, uint64_t offset, uint64_t length);
  absl::Status WritePages(uint64_t pfn, uint64_t offset, const std::string& data);

  absl::StatusOr<v1::LeaseInfo> Info();            // GetLease
  absl::StatusOr<v1::KeepAliveResponse> Renew();   // one unary renewal (RenewLease)
  // Revokes now (stopping the keep-alive first); returns the pages that freed. Later calls, and
  // the destructor, do nothing but report NOT_FOUND.
  absl::StatusOr<uint64_t> Revoke();
  // Leaves the lease to the daemon: the destructor stops the keep-alive but does not revoke, so
  // the lease expires one TTL after its last renewal. Returns the id.
  uint64_t Release();

  // True once the lease is known to be gone (ttl 0 from the keep-alive, or revoked here).
  bool gone() const;
  // Renewals answered with a live TTL so far.
  uint64_t renewals() const { return renewals_.load(); }
  // The keep-alive stream's last error (OK while it is healthy or not running).
  absl::Status keepalive_status() const;

 private:
  friend class Client;
  friend class PageCache;  // the raw calls below, and the report of its cached pages
  Lease(std::shared_ptr<internal::LeaseCore> core, int64_t granted_ttl_ms, uint64_t page_quota, bool revoke_on_destroy);
  // For PageCache: the calls without PageHandles (it keeps pages as plain values), the lease's
  // liveness flag (true once known gone), and the source of the count every renewal reports
  // (KeepAliveRequest.client_cached_pages); an empty function stops the reports.
  absl::StatusOr<v1::AllocPagesBulkResponse> AllocBulkRaw(uint32_t gfp_mask, uint32_t count);
  absl::StatusOr<v1::Allocation> AllocRaw(uint32_t gfp_mask, uint32_t order);
  absl::StatusOr<v1::FreePagesBulkResponse> FreeRaw(const std::vector<uint64_t>& pfns,
                                                   const std::vector<uint32_t>& orders);
  const std::atomic<bool>& gone_flag() const;
  void MarkGone(std::string why);
  // False if another PageCache already reports for this lease (one cache per lease). Detaching
  // (an empty reporter) keeps reporting 0, so the daemon's figure does not stay at the last count.
  bool SetCachedPagesReporter(std::function<uint64_t()> reporter);
  void AddCachedPagesReport(v1::KeepAliveRequest& req);
  void StartKeepAlive(KeepAliveCallback on_keepalive);
  void StopKeepAlive();  // idempotent
  void KeepAliveLoop(const KeepAliveCallback& on_keepalive);
  // Runs one KeepAlive stream until it breaks, the lease is gone, or the keep-alive is stopped.
  // True: retry after *backoff_ms. False: stop for good.
  bool KeepAliveStream(const KeepAliveCallback& on_keepalive, int64_t* backoff_ms);
  // False if the keep-alive was stopped (at once or during the sleep).
  bool SleepUnlessStopping(int64_t ms);
  absl::StatusOr<PageHandle> Allocate(const std::string& gfp, uint32_t order, const std::string& key, int form);
  // One AllocPagesBulk / FreePagesBulk call under the connection's allocation deadline; the bulk
  // reply's parallel arrays are checked to have one entry per page.
  absl::StatusOr<v1::AllocPagesBulkResponse> CallAllocPagesBulk(const v1::AllocPagesBulkRequest& req);
  absl::StatusOr<v1::FreePagesBulkResponse> CallFreePagesBulk(const v1::FreePagesBulkRequest& req);
  // FreePagesBulk's fast form: order-0 blocks as runs of consecutive pfns (all or nothing on the
  // daemon); INVALID_ARGUMENT without a call if a block is of a higher order. RunsRefused: the
  // statuses after which FreePagesBulk sends the per-block form instead.
  absl::StatusOr<v1::FreePagesBulkResponse> FreeAsRuns(const v1::FreePagesBulkRequest& blocks);
  static bool RunsRefused(const absl::Status& s);

  const std::shared_ptr<internal::LeaseCore> core_;
  const int64_t granted_ttl_ms_;
  const uint64_t page_quota_;
  std::atomic<bool> revoke_on_destroy_;
  std::atomic<uint64_t> renewals_{0};

  mutable Mutex ka_mu_;
  CondVar ka_cv_;
  bool ka_stop_ ABSL_GUARDED_BY(ka_mu_) = false;
  grpc::ClientContext* ka_context_ ABSL_GUARDED_BY(ka_mu_) = nullptr;  // the live stream's, to cancel it
  absl::Status ka_status_ ABSL_GUARDED_BY(ka_mu_);
  Mutex report_mu_;
  std::function<uint64_t()> cached_pages_reporter_ ABSL_GUARDED_BY(report_mu_);
  bool cache_attached_ ABSL_GUARDED_BY(report_mu_) = false;
  Mutex ka_join_mu_;  // one joiner at a time (guards no field)
  std::thread ka_thread_;
};

// A connection to physmemd.
class Client {
 public:
  // Creates the channel and waits (up to connect_timeout_ms) until it is ready. UNAVAILABLE,
  // saying why when it can tell (no socket file, permission denied), if the daemon is not there;
  // INVALID_ARGUMENT or NOT_FOUND for unusable TLS options or files.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();

  v1::PhysMem::Stub& stub();  // the raw stub, for calls this class does not wrap
  std::shared_ptr<grpc::Channel> channel() const;
  const ClientOptions& options() const;

  absl::StatusOr<v1::GetZoneInfoResponse> GetZoneInfo();
  absl::StatusOr<v1::GetTargetResponse> GetTarget();
  absl::StatusOr<v1::ValidateResponse> Validate();
  absl::StatusOr<v1::ListLeasesResponse> ListLeases();
  // By id, for leases this process does not hold a Lease object for.
  absl::StatusOr<v1::LeaseInfo> GetLease(uint64_t lease_id);
  absl::StatusOr<v1::KeepAliveResponse> RenewLease(uint64_t lease_id);
  absl::StatusOr<uint64_t> RevokeLease(uint64_t lease_id);  // pages freed

  absl::StatusOr<std::unique_ptr<Lease>> CreateLease(const LeaseOptions& options);
  // An existing lease of this identity, by id (checked with GetLease: NOT_FOUND,
  // PERMISSION_DENIED).
  absl::StatusOr<std::unique_ptr<Lease>> AttachLease(uint64_t lease_id, const AttachOptions& options = {});

 private:
  explicit Client(std::shared_ptr<internal::Connection> conn) : conn_(std::move(conn)) {}
  std::shared_ptr<internal::Connection> conn_;
};

}  // namespace physmem::client

#endif  // PHYSMEM_CLIENTS_PHYSMEM_CLIENT_H_
