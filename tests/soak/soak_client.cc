// physmem_soak_client: one soak-test client process. N threads, each churning its own leases
// (create, allocate, free, check, then revoke or abandon to expiry) with mixed orders (0..10,
// weighted toward small), mixed GFP masks, every allocation and free form, bulk calls and
// allocation-key retries, until --seconds pass. At the end it revokes what it still holds and
// writes its own counts as one flat JSON object (--report), which tests/soak/soak.py compares with
// the daemon's census and metrics.
//
// What it checks by itself, and counts as "unexpected" when it fails:
//   - every reply's status is one this call can legitimately give (see Classify*() below: e.g.
//     RESOURCE_EXHAUSTED for a mask that cannot wait on a full machine is expected; INTERNAL,
//     UNKNOWN, a lost lease that was kept alive, or a quota error the client's own book does not
//     predict are not);
//   - a key retry returns the same block with replayed = true;
//   - GetLease's pages_held equals the client's own book of the lease, and RevokeLease frees
//     exactly the pages the book says the lease held;
//   - with --arena_file (the daemon's --arena_path on /dev/shm, mapped MAP_SHARED here): every
//     page it is handed gets a signature (owner tag and pfn) in its first 16 bytes, verified
//     before the page is freed or its lease revoked: a page handed to two owners at once gets
//     overwritten by the other; a __GFP_ZERO page must arrive zeroed (the previous owner's
//     signature gone);
//   - with --ledger: every held block's [acquired, released] interval goes to a ledger file that
//     physmem_soak_ledger_check checks across all clients (tests/soak/ledger.h).
//
// Leases are kept alive by one keep-alive thread per process over one KeepAlive stream, so a
// worker parked in a waiting allocation never lets its leases lapse. The driver runs the daemon
// with --max_alloc_wait_ms=2000: a key retry after a missed deadline (10 s) always gets an answer.
//
// Thread-safety: each worker owns its leases and counts; the keep-alive registry is locked.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/soak/ledger.h"

ABSL_FLAG(std::string, target, "unix:///run/physmemd/physmemd.sock", "physmemd's gRPC target");
ABSL_FLAG(int, threads, 4, "worker threads (each with its own connection and leases)");
ABSL_FLAG(double, seconds, 60, "how long to run");
ABSL_FLAG(int, client_id, 0, "this client's number (in signatures, ledger records and lease names)");
ABSL_FLAG(int, total_threads, 0, "worker threads over all clients (0: --threads), to size each one's share of RAM");
ABSL_FLAG(double, pressure, 1.15, "pages each worker aims to hold, as a share of RAM/total_threads: >1 runs out");
ABSL_FLAG(std::string, report, "", "write the counts as JSON here (default: stdout)");
ABSL_FLAG(std::string, ledger, "", "write the ledger of held blocks here (tests/soak/ledger.h)");
ABSL_FLAG(std::string, arena_file, "", "the daemon's --arena_path, to sign and verify pages");
ABSL_FLAG(int64_t, max_wait_ms, 600, "longest deadline for an allocation that may wait");
ABSL_FLAG(uint64_t, seed, 0, "random seed (0: from the client id)");

namespace physmem::soak {
namespace {

using Clock = std::chrono::steady_clock;
using v1::PhysMem;

int64_t NowNs() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

constexpr int64_t kCallMs = 10000;  // deadline of calls that never wait: missing it is a failure

std::string CodeName(grpc::StatusCode c) { return absl::StatusCodeToString(static_cast<absl::StatusCode>(c)); }

const char* ZoneName(int proto_zone) {
  switch (proto_zone) {
    case v1::ZONE_DMA: return "DMA";
    case v1::ZONE_DMA32: return "DMA32";
    case v1::ZONE_NORMAL: return "Normal";
    case v1::ZONE_HIGHMEM: return "HighMem";
    default: return "unknown";
  }
}

// A flat name -> count map; merged across threads and written as one JSON object.
struct Counts {
  std::map<std::string, uint64_t> c;
  std::vector<std::string> examples;  // first unexpected errors, for the humans
  void Add(const std::string& k, uint64_t n = 1) { c[k] += n; }
  void Merge(const Counts& o) {
    for (const auto& [k, v] : o.c) c[k] += v;
    for (const auto& e : o.examples) {
      if (examples.size() < 20) examples.push_back(e);
    }
  }
};

// The daemon's arena file, mapped shared: pages are signed and verified through it.
struct ArenaMap {
  std::byte* base = nullptr;
  uint64_t size = 0;
  bool Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    if (::fstat(fd, &st) != 0) return false;
    size = static_cast<uint64_t>(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return false;
    base = static_cast<std::byte*>(p);
    return true;
  }
  uint64_t* At(uint64_t offset) const { return reinterpret_cast<uint64_t*>(base + offset); }
};

// ---- Keep-alive: one stream for every lease of the process ----

struct KeepAliveEntry {
  int64_t ttl_ms = 0;
  int64_t confirmed_send_ns = 0;  // send time of the latest request that proved the lease alive
  int64_t last_send_ns = 0;
  bool ending = false;  // revoke or abandon under way: a "gone" answer is expected
  bool lost = false;    // the daemon said gone while we kept it alive
};

class KeepAliver {
 public:
  KeepAliver(std::shared_ptr<grpc::Channel> ch, Counts* counts) : stub_(PhysMem::NewStub(ch)), counts_(counts) {}

  void Register(uint64_t id, int64_t ttl_ms, int64_t created_send_ns) {
    std::lock_guard<std::mutex> l(mu_);
    auto e = std::make_shared<KeepAliveEntry>();
    e->ttl_ms = ttl_ms;
    e->confirmed_send_ns = created_send_ns;
    e->last_send_ns = created_send_ns;
    leases_[id] = e;
  }
  // Stops renewing `id`; returns the latest time the daemon can have let it expire from, as a
  // lower bound: confirmed send + TTL.
  int64_t Unregister(uint64_t id) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = leases_.find(id);
    if (it == leases_.end()) return 0;
    it->second->ending = true;
    const int64_t bound = it->second->confirmed_send_ns + it->second->ttl_ms * 1000000;
    leases_.erase(it);
    return bound;
  }
  bool Lost(uint64_t id) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = leases_.find(id);
    return it != leases_.end() && it->second->lost;
  }

  void Start() { thread_ = std::thread([this] { Loop(); }); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    while (!stop_) {
      grpc::ClientContext ctx;
      std::unique_ptr<grpc::ClientReaderWriter<v1::KeepAliveRequest, v1::KeepAliveResponse>> stream =
          stub_->KeepAlive(&ctx);
      {
        std::lock_guard<std::mutex> l(counts_mu_);
        counts_->Add("calls.KeepAlive");
      }
      bool broken = false;
      while (!stop_ && !broken) {
        std::vector<std::pair<uint64_t, std::shared_ptr<KeepAliveEntry>>> due;
        const int64_t now = NowNs();
        {
          std::lock_guard<std::mutex> l(mu_);
          for (const auto& [id, e] : leases_) {
            if (!e->lost && now - e->last_send_ns >= e->ttl_ms * 1000000 / 4) due.emplace_back(id, e);
          }
        }
        for (auto& [id, e] : due) {
          v1::KeepAliveRequest req;
          req.set_lease_id(id);
          const int64_t sent = NowNs();
          v1::KeepAliveResponse resp;
          if (!stream->Write(req) || !stream->Read(&resp)) {
            broken = true;
            break;
          }
          std::lock_guard<std::mutex> l(mu_);
          e->last_send_ns = sent;
          if (resp.ttl_ms() > 0) {
            e->confirmed_send_ns = sent;
          } else if (!e->ending) {
            e->lost = true;
            std::lock_guard<std::mutex> cl(counts_mu_);
            counts_->Add("unexpected.lease_lost_while_kept_alive");
            if (counts_->examples.size() < 20) {
              counts_->examples.push_back(absl::StrFormat("keep-alive: lease %d gone while kept alive", id));
            }
          }
          std::lock_guard<std::mutex> cl(counts_mu_);
          counts_->Add("keepalive.renewals");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
      stream->WritesDone();
      ctx.TryCancel();
      const grpc::Status s = stream->Finish();
      if (broken && !stop_) {
        std::lock_guard<std::mutex> cl(counts_mu_);
        counts_->Add("unexpected.keepalive_stream_broken." + CodeName(s.error_code()));
        if (counts_->examples.size() < 20) counts_->examples.push_back("keep-alive stream: " + s.error_message());
      }
    }
  }

  std::unique_ptr<PhysMem::Stub> stub_;
  std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<KeepAliveEntry>> leases_;  // guarded by mu_
  std::mutex counts_mu_;
  Counts* counts_;  // guarded by counts_mu_
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- One worker ----

struct Block {
  uint64_t pfn = 0;
  uint32_t order = 0;
  std::string zone;
  uint64_t virt = 0;
  uint64_t arena_offset = 0;
  std::string key;
  int64_t start_ns = 0;
  uint64_t tag = 0;
};

struct LeaseState {
  uint64_t id = 0;
  int64_t ttl_ms = 0;
  uint64_t quota = 0;
  uint64_t pages_held = 0;
  std::map<uint64_t, Block> blocks;  // pfn -> block
  int ops_left = 0;
};

struct Mask {
  const char* gfp;
  bool can_wait;  // __GFP_DIRECT_RECLAIM
  bool highmem;   // __GFP_HIGHMEM: no GetFreePages
  bool zero;      // __GFP_ZERO
};
// x86_64 names; GFP_HIGHUSER on a target without HighMem prefers Normal.
constexpr Mask kMasks[] = {
    {"GFP_KERNEL", true, false, false},          {"GFP_KERNEL|__GFP_ZERO", true, false, true},
    {"GFP_ATOMIC", false, false, false},         {"GFP_ATOMIC|__GFP_ZERO", false, false, true},
    {"GFP_NOWAIT", false, false, false},         {"GFP_USER", true, false, false},
    {"GFP_HIGHUSER", true, true, false},         {"GFP_HIGHUSER_MOVABLE|__GFP_ZERO", true, true, true},
    {"GFP_DMA32", false, false, false},          {"GFP_KERNEL|__GFP_DMA32", true, false, false},
    {"GFP_DMA", false, false, false},            {"GFP_KERNEL|__GFP_DMA", true, false, false},
    {"GFP_KERNEL|__GFP_NORETRY", true, false, false},
};
constexpr int kMaskWeights[] = {20, 6, 12, 3, 6, 6, 6, 3, 4, 6, 2, 2, 4};

// Orders 0..10 weighted toward small, as a kernel's requests are.
constexpr int kOrderWeights[] = {35, 15, 12, 10, 7, 6, 5, 4, 3, 2, 1};

class Worker {
 public:
  Worker(int client, int thread, std::shared_ptr<grpc::Channel> ch, KeepAliver* ka, LedgerWriter* ledger,
         const ArenaMap* arena, uint64_t page_size, uint64_t target_pages, uint64_t seed)
      : client_(client), thread_(thread), stub_(PhysMem::NewStub(ch)), ka_(ka), ledger_(ledger), arena_(arena),
        page_size_(page_size), target_pages_(target_pages), rng_(seed),
        mask_pick_(std::begin(kMaskWeights), std::end(kMaskWeights)),
        order_pick_(std::begin(kOrderWeights), std::end(kOrderWeights)) {}

  void Run(Clock::time_point end) {
    while (Clock::now() < end) {
      if (leases_.size() < 2) {
        NewLease();
        continue;
      }
      LeaseState& l = leases_[rng_() % leases_.size()];
      if (ka_->Lost(l.id)) {  // counted by the keep-alive; forget it (its pages are gone)
        DropLost(l);
        continue;
      }
      if (--l.ops_left <= 0) {
        EndLease(l, Pct(60));
        continue;
      }
      Step(l);
    }
    while (!leases_.empty()) EndLease(leases_.back(), /*revoke=*/true);
  }

  const Counts& counts() const { return counts_; }

 private:
  bool Pct(int p) { return static_cast<int>(rng_() % 100) < p; }
  uint64_t total_held() const {
    uint64_t n = 0;
    for (const auto& l : leases_) n += l.pages_held;
    return n;
  }
  void Unexpected(const std::string& what, const std::string& detail) {
    counts_.Add("unexpected." + what);
    if (counts_.examples.size() < 20) counts_.examples.push_back(what + ": " + detail);
  }
  void Expected(const std::string& what) { counts_.Add("expected." + what); }
  // Every call: counted by method and by the code the client saw.
  void Saw(const char* method, const grpc::Status& s) {
    counts_.Add(std::string("calls.") + method);
    counts_.Add(std::string("codes.") + method + "." + CodeName(s.error_code()));
  }
  void Deadline(grpc::ClientContext* ctx, int64_t ms) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  }
  // A NOT_FOUND for a lease we hold and keep alive: the daemon lost it.
  void LeaseGone(const char* method, const grpc::Status& s) {
    Unexpected(std::string("lease_not_found.") + method, s.error_message());
  }

  void NewLease() {
    LeaseState l;
    l.ttl_ms = std::array<int64_t, 3>{2000, 3000, 5000}[rng_() % 3];
    v1::CreateLeaseRequest req;
    req.set_ttl_ms(l.ttl_ms);
    if (Pct(10)) req.set_page_quota(256 << (rng_() % 5));  // 256..4096: quota refusals happen
    // Names are unique per identity (all soak clients share one uid): client, thread, serial.
    req.set_name(absl::StrFormat("soak-%d-%d-%d", client_, thread_, ++leases_made_));
    v1::CreateLeaseResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx, kCallMs);
    const int64_t sent = NowNs();
    const grpc::Status s = stub_->CreateLease(&ctx, req, &resp);
    Saw("CreateLease", s);
    if (!s.ok()) {
      Unexpected("CreateLease." + CodeName(s.error_code()), s.error_message());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return;
    }
    counts_.Add("leases.created");
    l.id = resp.lease_id();
    l.quota = resp.page_quota();
    l.ops_left = 50 + static_cast<int>(rng_() % 1500);
    ka_->Register(l.id, l.ttl_ms, sent);
    leases_.push_back(std::move(l));
  }

  void Step(LeaseState& l) {
    const bool alloc = l.blocks.empty() || Pct(total_held() < target_pages_ ? 65 : 35);
    const int r = static_cast<int>(rng_() % 100);
    if (alloc) {
      if (r < 70) {
        AllocOne(l);
      } else if (r < 92) {
        AllocBulk(l);
      } else {
        KeyRetry(l);
      }
    } else {
      if (r < 80) {
        FreeOne(l);
      } else {
        FreeBulk(l);
      }
    }
    if (Pct(1)) CheckLease(l);
  }

  // ---- signatures ----
  bool InArena(uint64_t off, uint32_t order) const {
    return arena_->base != nullptr && off + (page_size_ << order) <= arena_->size;
  }
  void Sign(Block& b) {
    b.tag = (uint64_t{static_cast<uint32_t>(client_)} << 48) | (uint64_t{static_cast<uint32_t>(thread_)} << 40) |
            (++seq_ & ((uint64_t{1} << 40) - 1));
    if (!InArena(b.arena_offset, b.order)) return;
    for (uint64_t i = 0; i < (uint64_t{1} << b.order); ++i) {
      uint64_t* w = arena_->At(b.arena_offset + i * page_size_);
      w[0] = b.tag;
      w[1] = b.pfn + i;
    }
    counts_.Add("signatures.written", uint64_t{1} << b.order);
  }
  void CheckZeroed(const Block& b) {
    if (!InArena(b.arena_offset, b.order)) return;
    for (uint64_t i = 0; i < (uint64_t{1} << b.order); ++i) {
      const uint64_t* w = arena_->At(b.arena_offset + i * page_size_);
      const uint64_t words = b.order == 0 ? page_size_ / 8 : 2;  // all of an order-0 page, heads of larger
      for (uint64_t k = 0; k < words; ++k) {
        if (w[k] != 0) {
          Unexpected("not_zeroed", absl::StrFormat("pfn %#x word %d = %#x after __GFP_ZERO", b.pfn + i, k, w[k]));
          return;
        }
      }
    }
    counts_.Add("zero_checks", uint64_t{1} << b.order);
  }
  void Verify(const Block& b) {
    if (!InArena(b.arena_offset, b.order)) return;
    for (uint64_t i = 0; i < (uint64_t{1} << b.order); ++i) {
      const uint64_t* w = arena_->At(b.arena_offset + i * page_size_);
      if (w[0] != b.tag || w[1] != b.pfn + i) {
        Unexpected("double_hand_signature",
                   absl::StrFormat("pfn %#x (block %#x order %d): signature %#x/%#x, expected %#x/%#x", b.pfn + i,
                                   b.pfn, b.order, w[0], w[1], b.tag, b.pfn + i));
        return;
      }
    }
    counts_.Add("signatures.verified", uint64_t{1} << b.order);
  }

  // A block the client now holds (first time: not a replay).
  void Acquired(LeaseState& l, Block b, bool zero) {
    b.start_ns = NowNs();
    if (zero) CheckZeroed(b);
    Sign(b);
    counts_.Add("acquired.blocks." + b.zone);
    counts_.Add("acquired.pages." + b.zone, uint64_t{1} << b.order);
    counts_.Add(absl::StrFormat("acquired.order.%d", b.order));
    l.pages_held += uint64_t{1} << b.order;
    l.blocks[b.pfn] = std::move(b);
  }
  // The client is about to give `b` up (free sent next): verify, and record its interval.
  void Releasing(const Block& b, int64_t end_ns) {
    Verify(b);
    ledger_->Append(LedgerRecord{b.pfn, b.order, static_cast<uint32_t>(client_ << 16 | thread_), b.start_ns, end_ns});
  }
  void Forget(LeaseState& l, uint64_t pfn) {
    auto it = l.blocks.find(pfn);
    l.pages_held -= uint64_t{1} << it->second.order;
    l.blocks.erase(it);
  }

  Block FromAllocation(const v1::Allocation& a) {
    Block b;
    b.pfn = a.pfn();
    b.order = a.order();
    b.zone = a.zone();
    b.virt = a.virt_addr();
    b.arena_offset = a.arena_offset();
    b.key = a.key();
    return b;
  }

  // RESOURCE_EXHAUSTED for an allocation: expected when the reason matches the request.
  void ClassifyExhausted(const char* method, const LeaseState& l, const Mask& m, uint64_t pages,
                         const grpc::Status& s) {
    const std::string& msg = s.error_message();
    if (absl::StrContains(msg, "page quota")) {
      if (l.pages_held + pages > l.quota) {
        Expected("quota");
      } else {
        Unexpected(std::string("quota_not_predicted.") + method,
                   absl::StrFormat("%s (book: %d held of %d)", msg, l.pages_held, l.quota));
      }
    } else if (!m.can_wait && absl::StrContains(msg, "cannot wait")) {
      Expected("no_memory_cannot_wait");
    } else if (m.can_wait && absl::StrContains(msg, "__GFP_NORETRY")) {
      Expected("no_memory_noretry");
    } else if (m.can_wait && absl::StrContains(msg, "waited")) {
      Expected("no_memory_waited");
    } else {
      Unexpected(std::string("RESOURCE_EXHAUSTED_unexplained.") + method, msg);
    }
  }

  // One alloc call; with a key, resolves a deadline miss by retrying the key until the daemon
  // gives a definite answer (so the client's book and the daemon's never disagree).
  void AllocOne(LeaseState& l) {
    const Mask& m = kMasks[mask_pick_(rng_)];
    uint32_t order = static_cast<uint32_t>(order_pick_(rng_));
    int form = static_cast<int>(rng_() % 100) < 60 ? 0 : (static_cast<int>(rng_() % 100) < 70 ? 1 : 2);
    if (m.highmem) form = 0;     // __get_free_pages() refuses __GFP_HIGHMEM
    if (form == 2) order = 0;    // get_zeroed_page() is order 0
    const bool zero = m.zero || form == 2;
    std::string key;
    if (m.can_wait || Pct(30)) key = absl::StrFormat("k%d.%d.%d", client_, thread_, ++seq_);
    for (int attempt = 0; attempt < 5; ++attempt) {
      v1::AllocPagesRequest req;
      req.set_lease_id(l.id);
      req.set_gfp(m.gfp);
      req.set_order(order);
      req.set_key(key);
      v1::Allocation a;
      grpc::ClientContext ctx;
      // A retry's deadline is longer than the daemon's --max_alloc_wait_ms, so it gets a definite
      // answer.
      const int64_t wait_ms = m.can_wait ? 100 + static_cast<int64_t>(rng_() % max_wait_ms_) : kCallMs;
      Deadline(&ctx, attempt == 0 ? wait_ms : kCallMs);
      grpc::Status s;
      const char* method = form == 0 ? "AllocPages" : form == 1 ? "GetFreePages" : "GetZeroedPage";
      if (form == 0) {
        s = stub_->AllocPages(&ctx, req, &a);
      } else if (form == 1) {
        s = stub_->GetFreePages(&ctx, req, &a);
      } else {
        s = stub_->GetZeroedPage(&ctx, req, &a);
      }
      Saw(method, s);
      if (s.ok()) {
        // A replay here is the answer to a call whose reply we never saw: the first time we hold it.
        if (a.replayed()) counts_.Add("replays.after_deadline");
        if (a.order() != order) Unexpected("wrong_order", absl::StrFormat("asked %d got %d", order, a.order()));
        if (l.blocks.count(a.pfn())) {
          Unexpected("alloc_gave_a_held_block", absl::StrFormat("pfn %#x", a.pfn()));
          return;
        }
        Acquired(l, FromAllocation(a), zero);
        return;
      }
      switch (s.error_code()) {
        case grpc::StatusCode::RESOURCE_EXHAUSTED:
          ClassifyExhausted(method, l, m, uint64_t{1} << order, s);
          return;
        case grpc::StatusCode::DEADLINE_EXCEEDED:
          // Only a waiting call may run into its deadline (the daemon answers a little before
          // it, but a loaded machine can delay the answer). Resolve it with the key.
          if (m.can_wait && attempt == 0 && !key.empty()) {
            Expected("deadline_while_waiting");
            continue;
          }
          Unexpected(std::string(method) + ".DEADLINE_EXCEEDED", s.error_message());
          return;
        case grpc::StatusCode::NOT_FOUND:
          LeaseGone(method, s);
          return;
        default:
          Unexpected(std::string(method) + "." + CodeName(s.error_code()), s.error_message());
          return;
      }
    }
    Unexpected("alloc_unresolved", "five attempts without a definite answer");
  }

  void AllocBulk(LeaseState& l) {
    const Mask& m = kMasks[mask_pick_(rng_)];
    const uint32_t count = 1 + static_cast<uint32_t>(rng_() % (Pct(80) ? 16 : 256));
    v1::AllocPagesBulkRequest req;
    req.set_lease_id(l.id);
    req.set_gfp(m.gfp);
    req.set_count(count);
    v1::AllocPagesBulkResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx, kCallMs);
    const grpc::Status s = stub_->AllocPagesBulk(&ctx, req, &resp);
    Saw("AllocPagesBulk", s);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        if (absl::StrContains(s.error_message(), "page quota")) {
          if (l.pages_held >= l.quota) {
            Expected("quota");
          } else {
            Unexpected("quota_not_predicted.AllocPagesBulk", s.error_message());
          }
        } else if (absl::StrContains(s.error_message(), "no free pages")) {
          Expected("bulk_no_memory");
        } else {
          Unexpected("RESOURCE_EXHAUSTED_unexplained.AllocPagesBulk", s.error_message());
        }
      } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        LeaseGone("AllocPagesBulk", s);
      } else {
        Unexpected("AllocPagesBulk." + CodeName(s.error_code()), s.error_message());
      }
      return;
    }
    if (resp.pfn_size() > static_cast<int>(count) || resp.pfn_size() == 0) {
      Unexpected("bulk_count", absl::StrFormat("asked %d got %d", count, resp.pfn_size()));
    }
    if (static_cast<uint32_t>(resp.pfn_size()) < count) counts_.Add("bulk.partial");
    for (int i = 0; i < resp.pfn_size(); ++i) {
      Block b;
      b.pfn = resp.pfn(i);
      b.order = 0;
      b.zone = ZoneName(resp.zone(i));
      b.virt = resp.virt_addr(i);
      b.arena_offset = resp.arena_offset(i);
      if (l.blocks.count(b.pfn)) {
        Unexpected("bulk_gave_a_held_page", absl::StrFormat("pfn %#x", b.pfn));
        continue;
      }
      Acquired(l, std::move(b), m.zero);
    }
  }

  // Allocation keys: the same key twice returns the same block, replayed.
  void KeyRetry(LeaseState& l) {
    const std::string key = absl::StrFormat("r%d.%d.%d", client_, thread_, ++seq_);
    const uint32_t order = static_cast<uint32_t>(rng_() % 4);
    v1::Allocation first;
    for (int i = 0; i < 2; ++i) {
      v1::AllocPagesRequest req;
      req.set_lease_id(l.id);
      req.set_gfp("GFP_ATOMIC");
      req.set_order(order);
      req.set_key(key);
      v1::Allocation a;
      grpc::ClientContext ctx;
      Deadline(&ctx, kCallMs);
      const grpc::Status s = stub_->AllocPages(&ctx, req, &a);
      Saw("AllocPages", s);
      if (!s.ok()) {
        if (i == 0 && s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ClassifyExhausted("AllocPages", l, kMasks[2], uint64_t{1} << order, s);
        } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
          LeaseGone("AllocPages", s);
        } else {
          Unexpected("key_retry." + CodeName(s.error_code()), s.error_message());
        }
        return;
      }
      if (i == 0) {
        first = a;
        Acquired(l, FromAllocation(a), false);
      } else if (!a.replayed() || a.pfn() != first.pfn() || a.order() != first.order()) {
        Unexpected("key_retry_mismatch", absl::StrFormat("key %s: first pfn %#x, retry pfn %#x replayed=%d", key,
                                                         first.pfn(), a.pfn(), a.replayed()));
        if (!a.replayed() && !l.blocks.count(a.pfn())) Acquired(l, FromAllocation(a), false);
      } else {
        counts_.Add("replays.checked");
      }
    }
  }

  uint64_t PickBlock(const LeaseState& l) {
    auto it = l.blocks.begin();
    std::advance(it, static_cast<long>(rng_() % l.blocks.size()));
    return it->first;
  }

  void FreeOne(LeaseState& l) {
    const Block b = l.blocks.at(PickBlock(l));
    const int r = static_cast<int>(rng_() % 100);
    const int64_t sent = NowNs();
    Releasing(b, sent);
    Forget(l, b.pfn);
    v1::FreePagesResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx, kCallMs);
    grpc::Status s;
    const char* method = "FreePages";
    if (r < 20 && b.virt != 0) {
      method = "FreePagesByAddress";
      v1::FreePagesByAddressRequest req;
      req.set_lease_id(l.id);
      req.set_addr(b.virt);
      req.set_order(b.order);
      s = stub_->FreePagesByAddress(&ctx, req, &resp);
    } else {
      v1::FreePagesRequest req;
      req.set_lease_id(l.id);
      if (!b.key.empty() && r < 60) {
        req.set_key(b.key);
        counts_.Add("frees.by_key");
      } else {
        req.set_pfn(b.pfn);
        req.set_order(b.order);
      }
      s = stub_->FreePages(&ctx, req, &resp);
    }
    Saw(method, s);
    if (s.ok()) {
      if (resp.pages_freed() != (uint64_t{1} << b.order)) {
        Unexpected("free_count", absl::StrFormat("freed %d pages of an order-%d block", resp.pages_freed(), b.order));
      }
      counts_.Add("freed.blocks." + b.zone);
      counts_.Add("freed.pages." + b.zone, resp.pages_freed());
    } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      LeaseGone(method, s);
    } else {
      Unexpected(std::string(method) + "." + CodeName(s.error_code()), s.error_message());
    }
  }

  void FreeBulk(LeaseState& l) {
    v1::FreePagesBulkRequest req;
    req.set_lease_id(l.id);
    const int n = 1 + static_cast<int>(rng_() % 32);
    std::map<uint64_t, Block> going;
    const int64_t sent = NowNs();
    for (int i = 0; i < n && !l.blocks.empty(); ++i) {
      const uint64_t pfn = PickBlock(l);
      going[pfn] = l.blocks.at(pfn);
      Releasing(going[pfn], sent);
      Forget(l, pfn);
      req.add_pfn(pfn);
      req.add_order(going[pfn].order);
    }
    v1::FreePagesBulkResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx, kCallMs);
    const grpc::Status s = stub_->FreePagesBulk(&ctx, req, &resp);
    Saw("FreePagesBulk", s);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        LeaseGone("FreePagesBulk", s);
      } else {
        Unexpected("FreePagesBulk." + CodeName(s.error_code()), s.error_message());
      }
      return;
    }
    for (const v1::FreeResult& r : resp.refused()) {
      Unexpected("bulk_free_refused", absl::StrFormat("pfn %#x: %s", r.pfn(), r.message()));
    }
    uint64_t pages = 0;
    for (const auto& [pfn, b] : going) {
      pages += uint64_t{1} << b.order;
      counts_.Add("freed.blocks." + b.zone);
      counts_.Add("freed.pages." + b.zone, uint64_t{1} << b.order);
    }
    if (resp.pages_freed() != pages || resp.blocks_freed() != going.size()) {
      Unexpected("bulk_free_count", absl::StrFormat("freed %d pages / %d blocks, expected %d / %d",
                                                    resp.pages_freed(), resp.blocks_freed(), pages, going.size()));
    }
  }

  void CheckLease(LeaseState& l) {
    v1::GetLeaseRequest req;
    req.set_lease_id(l.id);
    v1::LeaseInfo info;
    grpc::ClientContext ctx;
    Deadline(&ctx, kCallMs);
    const grpc::Status s = stub_->GetLease(&ctx, req, &info);
    Saw("GetLease", s);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        LeaseGone("GetLease", s);
      } else {
        Unexpected("GetLease." + CodeName(s.error_code()), s.error_message());
      }
      return;
    }
    if (info.pages_held() != l.pages_held) {
      Unexpected("lease_book_mismatch",
                 absl::StrFormat("lease %d: daemon says %d pages held, client %d", l.id, info.pages_held(), l.pages_held));
    }
    counts_.Add("lease_checks");
  }

  // Ends a lease: revoke it (RevokeLease must free exactly what the book holds) or abandon it
  // to expire on its own one TTL after its last renewal.
  void EndLease(LeaseState& l, bool revoke) {
    const int64_t now = NowNs();
    const int64_t expiry_bound = ka_->Unregister(l.id);
    for (const auto& [pfn, b] : l.blocks) {
      counts_.Add("reclaimed.blocks." + b.zone);
      counts_.Add("reclaimed.pages." + b.zone, uint64_t{1} << b.order);
      if (revoke) {
        Releasing(b, now);
      } else {
        // Cannot verify later (the lease expires on its own); verify now, record until the
        // earliest time the daemon may have let it expire.
        Verify(b);
        ledger_->Append(LedgerRecord{b.pfn, b.order, static_cast<uint32_t>(client_ << 16 | thread_), b.start_ns,
                                     expiry_bound});
      }
    }
    if (revoke) {
      v1::RevokeLeaseRequest req;
      req.set_lease_id(l.id);
      v1::RevokeLeaseResponse resp;
      grpc::ClientContext ctx;
      Deadline(&ctx, kCallMs);
      const grpc::Status s = stub_->RevokeLease(&ctx, req, &resp);
      Saw("RevokeLease", s);
      if (s.ok()) {
        counts_.Add("leases.revoked");
        counts_.Add("reclaimed.revoke_pages", resp.pages_freed());
        if (resp.pages_freed() != l.pages_held) {
          Unexpected("revoke_count", absl::StrFormat("lease %d: revoke freed %d pages, book says %d", l.id,
                                                     resp.pages_freed(), l.pages_held));
        }
      } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        LeaseGone("RevokeLease", s);
      } else {
        Unexpected("RevokeLease." + CodeName(s.error_code()), s.error_message());
      }
    } else {
      counts_.Add("leases.abandoned");
      counts_.Add("reclaimed.expiry_pages", l.pages_held);
    }
    RemoveLease(l);
  }

  void DropLost(LeaseState& l) {
    ka_->Unregister(l.id);
    counts_.Add("leases.lost");
    RemoveLease(l);
  }

  void RemoveLease(LeaseState& l) {
    const size_t i = static_cast<size_t>(&l - leases_.data());
    leases_[i] = std::move(leases_.back());
    leases_.pop_back();
  }

  const int client_, thread_;
  std::unique_ptr<PhysMem::Stub> stub_;
  KeepAliver* ka_;
  LedgerWriter* ledger_;
  const ArenaMap* arena_;
  const uint64_t page_size_;
  const uint64_t target_pages_;
  const uint64_t max_wait_ms_ = static_cast<uint64_t>(absl::GetFlag(FLAGS_max_wait_ms));
  uint64_t leases_made_ = 0;  // this thread's leases so far, for their names
  std::mt19937_64 rng_;
  std::discrete_distribution<int> mask_pick_;
  std::discrete_distribution<int> order_pick_;
  std::vector<LeaseState> leases_;
  Counts counts_;
  uint64_t seq_ = 0;
};

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own per worker
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::string Json(const Counts& c, double seconds) {
  std::string out = "{\n";
  out += absl::StrFormat("  \"seconds\": %.3f,\n", seconds);
  for (const auto& [k, v] : c.c) out += absl::StrFormat("  \"%s\": %d,\n", k, v);
  out += "  \"unexpected_examples\": [";
  for (size_t i = 0; i < c.examples.size(); ++i) {
    std::string e;
    for (char ch : c.examples[i]) {
      if (ch == '"' || ch == '\\') e += '\\';
      e += (ch == '\n' ? ' ' : ch);
    }
    out += absl::StrFormat("%s\n    \"%s\"", i ? "," : "", e);
  }
  out += "]\n}\n";
  return out;
}

int Main() {
  const std::string target = absl::GetFlag(FLAGS_target);
  const int threads = absl::GetFlag(FLAGS_threads);
  const int client = absl::GetFlag(FLAGS_client_id);
  auto control = NewChannel(target);
  if (!control->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::fprintf(stderr, "cannot connect to %s\n", target.c_str());
    return 2;
  }
  Counts process_counts;
  v1::GetTargetResponse t;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(kCallMs));
    const grpc::Status s = PhysMem::NewStub(control)->GetTarget(&ctx, v1::GetTargetRequest(), &t);
    process_counts.Add("calls.GetTarget");
    process_counts.Add("codes.GetTarget." + CodeName(s.error_code()));
    if (!s.ok()) {
      std::fprintf(stderr, "GetTarget: %s\n", s.error_message().c_str());
      return 2;
    }
  }
  ArenaMap arena;
  const std::string arena_file = absl::GetFlag(FLAGS_arena_file);
  if (!arena_file.empty() && !arena.Open(arena_file)) {
    std::fprintf(stderr, "cannot map the arena file %s: %s\n", arena_file.c_str(), std::strerror(errno));
    return 2;
  }
  LedgerWriter ledger(absl::GetFlag(FLAGS_ledger));
  if (!ledger.ok(absl::GetFlag(FLAGS_ledger))) {
    std::fprintf(stderr, "cannot write the ledger %s\n", absl::GetFlag(FLAGS_ledger).c_str());
    return 2;
  }
  const int total_threads = absl::GetFlag(FLAGS_total_threads) > 0 ? absl::GetFlag(FLAGS_total_threads) : threads;
  const uint64_t share =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_pressure) * static_cast<double>(t.total_pages()) / total_threads);
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) seed = 0x50a4 + static_cast<uint64_t>(client) * 7919;

  Counts ka_counts;
  KeepAliver ka(NewChannel(target), &ka_counts);
  ka.Start();
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_seconds) * 1000));
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < threads; ++i) {
    workers.push_back(std::make_unique<Worker>(client, i, NewChannel(target), &ka, &ledger, &arena,
                                               t.profile().page_size(), share, seed * 1000003 + i));
  }
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w, end] { w->Run(end); });
  for (auto& th : running) th.join();
  ka.Stop();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

  Counts all = process_counts;
  all.Merge(ka_counts);
  for (auto& w : workers) all.Merge(w->counts());
  all.Add("ledger.records", ledger.records());
  const std::string json = Json(all, secs);
  const std::string report = absl::GetFlag(FLAGS_report);
  if (report.empty()) {
    std::fputs(json.c_str(), stdout);
  } else {
    std::FILE* f = std::fopen(report.c_str(), "w");
    if (f == nullptr) return 2;
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace physmem::soak

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return physmem::soak::Main();
}
