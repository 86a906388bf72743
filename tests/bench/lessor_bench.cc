// Lessor benchmark (not a test): what the lease book costs, per held page and per idle lease.
//
//   reaper   CPU the expiry costs with --leases idle leases (TTL one hour) over --seconds: the
//            lessor's deadline heap (the reaper sleeps until the earliest deadline) against the
//            scan the lease table used to run (every lease's deadline, every 20 ms), measured in
//            the same run as process CPU time while the main thread sleeps.
//   book     heap bytes per held order-0 block (mallinfo2) when an x86_64 target of --pages pages
//            is filled under one lease and under 1,000 leases: the lessor's book against the old
//            book (pfn -> {order, zone, key} in a flat_hash_map), in-process; and the time to
//            revoke the one-lease fill, against the old End() loop (a free and an identity
//            uncharge per block).
//   daemon   resident memory of a real physmemd (--physmemd, default: beside this binary) per held
//            page, filled through AllocPagesBulk(4096) under one lease and under 1,000 leases,
//            and the time of the RevokeLease call that empties the one-lease fill.
//
//   tenancy  what keeping page contents between identities costs (server/page_tenancy.h), in
//            ns per page through the lessor (the server side of AllocPages+FreePages and of
//            AllocPagesBulk(4096)+FreePagesBulk): one identity taking its own pages back (no
//            scrub: the common case, and the cost of the book without any scrubbing), two
//            identities taking turns (every page scrubbed: the worst case), and --init_on_free
//            (every free zeroes), each as a ratio to the first, measured in the same run.
//
//   ./build/lessor_bench [--seconds=3] [--leases=100000] [--pages=2097152] [--physmemd=PATH] [--skip_daemon]
//                        [--only=tenancy]
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "server/lessor.h"

std::string& DaemonBinaryPath() {
  static std::string path;
  return path;
}
#define PHYSMEMD_BINARY DaemonBinaryPath()
#define PHYSMEMD_TEST_HOOKS_BINARY DaemonBinaryPath()
#include "tests/daemon_process.h"

namespace physmem {
namespace {

struct Config {
  double seconds = 3;
  size_t leases = 100000;
  uint64_t pages = 2097152;  // 8 GiB of 4 KiB pages
  bool daemon = true;
};

double CpuSeconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

size_t HeapBytes() {
  const struct mallinfo2 mi = ::mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

std::unique_ptr<PageAllocator> Allocator(uint64_t pages, bool init_on_free = false) {
  absl::StatusOr<Target> t = BuiltinTarget("x86_64", pages * 4096);
  if (!t.ok()) {
    std::fprintf(stderr, "target: %s\n", t.status().ToString().c_str());
    std::exit(1);
  }
  PageAllocatorOptions o;
  o.target = *t;
  o.arena_backing = ArenaOptions::Backing::kOrdinary;
  o.init_on_free = init_on_free;
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(o);
  if (!pa.ok()) {
    std::fprintf(stderr, "allocator: %s\n", pa.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(pa);
}

// ---- reaper ----

void ReaperCpu(const Config& cfg) {
  auto pa = Allocator(65536);
  LeaseLimits ll;
  ll.max_leases_per_identity = static_cast<uint32_t>(cfg.leases);
  Lessor lessor(pa.get(), ll, nullptr, nullptr, nullptr);
  for (size_t i = 0; i < cfg.leases; ++i) {
    if (!lessor.Grant("uid:1", 3600 * 1000, 0, "").ok()) std::exit(1);
  }
  const auto nap = std::chrono::duration<double>(cfg.seconds);
  lessor.StartReaper();
  double c0 = CpuSeconds();
  std::this_thread::sleep_for(nap);
  const double heap_cpu = CpuSeconds() - c0;
  const uint64_t wakeups = lessor.reaper_wakeups();
  lessor.StopReaper();

  // The old reaper: every 20 ms, every lease's deadline looked at under the table's lock.
  absl::flat_hash_map<uint64_t, std::shared_ptr<Lease>> table;
  for (const auto& l : lessor.All()) table[l->id] = l;
  std::mutex mu;
  std::atomic<bool> stop{false};
  uint64_t due = 0;
  std::thread scan([&] {
    while (!stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      const int64_t now = LeaseClock::Monotonic().Now();
      std::lock_guard<std::mutex> l(mu);
      for (const auto& [id, lease] : table) due += lease->deadline() <= now;
    }
  });
  c0 = CpuSeconds();
  std::this_thread::sleep_for(nap);
  const double scan_cpu = CpuSeconds() - c0;
  stop = true;
  scan.join();
  std::printf("reaper  %zu idle leases, %.1f s: deadline heap %.3f ms CPU (%.4f%% of a core, %lu wake-ups); "
              "20 ms scan %.1f ms CPU (%.2f%% of a core); heap/scan %.4f\n",
              cfg.leases, cfg.seconds, heap_cpu * 1e3, 100 * heap_cpu / cfg.seconds,
              static_cast<unsigned long>(wakeups), scan_cpu * 1e3, 100 * scan_cpu / cfg.seconds,
              heap_cpu / std::max(scan_cpu, 1e-9));
  if (due != 0) std::printf("(scan saw %lu due)\n", static_cast<unsigned long>(due));
}

// ---- book ----

// The lease table's book before the lessor: pfn -> block, and the free loop of its End().
struct OldBlock {
  uint32_t order = 0;
  ZoneType zone = ZONE_NORMAL;
  std::string key;
};

void Book(const Config& cfg, int nleases) {
  auto pa = Allocator(cfg.pages);
  IdentityLimits il(*pa, {});
  LeaseLimits ll;
  ll.max_leases_per_identity = 100000;
  Lessor lessor(pa.get(), ll, &il, nullptr, nullptr);
  std::vector<std::shared_ptr<Lease>> leases;
  for (int i = 0; i < nleases; ++i) leases.push_back(*lessor.Grant("uid:1", 3600 * 1000, 0, ""));
  const uint64_t per_lease = cfg.pages / nleases;
  size_t h0 = HeapBytes();
  uint64_t blocks = 0;
  for (auto& l : leases) {
    for (uint64_t got = 0; got < per_lease;) {
      absl::StatusOr<std::vector<Page*>> p =
          lessor.AttachBulk(*l, GFP_KERNEL, static_cast<unsigned>(std::min<uint64_t>(4096, per_lease - got)));
      if (!p.ok()) break;
      got += p->size();
      blocks += p->size();
    }
  }
  const double new_bytes = double(HeapBytes() - h0) / blocks;
  double revoke_s = 0;
  if (nleases == 1) {
    const auto t0 = std::chrono::steady_clock::now();
    (void)lessor.Revoke(leases[0]->id, "uid:1");
    revoke_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } else {
    lessor.RevokeAll();
  }

  // The old book over the same number of pages, and (one lease) its End() loop.
  h0 = HeapBytes();
  std::vector<absl::flat_hash_map<uint64_t, OldBlock>> old(nleases);
  std::vector<Page*> pages(4096);
  const uint32_t owner = 0x7777;
  std::shared_ptr<IdentityUsage> usage = il.For("uid:2");
  uint64_t old_blocks = 0;
  for (auto& book : old) {
    for (uint64_t got = 0; got < per_lease;) {
      std::fill(pages.begin(), pages.end(), nullptr);
      const unsigned n =
          pa->alloc_pages_bulk(GFP_KERNEL, std::min<uint64_t>(4096, per_lease - got), pages.data(), owner);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        (void)il.ChargeTotal(*usage, 1);
        (void)il.ChargeZone(*usage, pa->page_zonenum(pages[i]), 1);
        book.try_emplace(pa->page_to_pfn(pages[i]), OldBlock{0, pa->page_zonenum(pages[i]), ""});
      }
      got += n;
      old_blocks += n;
    }
  }
  const double old_bytes = double(HeapBytes() - h0 - old.capacity() * sizeof(old[0])) / old_blocks;
  double old_revoke_s = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& book : old) {
    for (const auto& [pfn, b] : book) {
      if (pa->FreePfn(pfn, b.order, owner).ok()) il.Uncharge(*usage, b.zone, uint64_t{1} << b.order);
    }
    book.clear();
  }
  if (nleases == 1) old_revoke_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("book    %lu order-0 pages under %d lease%s: lessor %.1f bytes/block, old book %.1f bytes/block (%.2fx)",
              static_cast<unsigned long>(blocks), nleases, nleases == 1 ? "" : "s", new_bytes, old_bytes,
              old_bytes / new_bytes);
  if (nleases == 1) {
    std::printf("; revoke %.3f s, old End() loop %.3f s (%.2fx)", revoke_s, old_revoke_s, old_revoke_s / revoke_s);
  }
  std::printf("\n");
}

// ---- tenancy ----

enum class Tenancy { kSameIdentity, kTwoIdentities, kInitOnFree };

// ns per page of `rounds` alloc+free rounds of `batch` pages (batch 1: Attach + Detach of one
// order-0 page; otherwise AttachBulk + DetachBulk), alternating between two identities' leases
// for kTwoIdentities.
double TenancyNsPerPage(Tenancy mode, unsigned batch, int rounds, double* scrubbed_share) {
  auto pa = Allocator(262144, mode == Tenancy::kInitOnFree);  // 1 GiB
  Lessor lessor(pa.get(), LeaseLimits{}, nullptr, nullptr, nullptr);
  std::shared_ptr<Lease> a = *lessor.Grant("uid:1", 3600 * 1000, 0, "");
  std::shared_ptr<Lease> b = *lessor.Grant(mode == Tenancy::kTwoIdentities ? "uid:2" : "uid:1", 3600 * 1000, 0, "");
  std::vector<uint64_t> pfns;
  auto round = [&](Lease& l) {
    if (batch == 1) {
      AttachedBlock blk;
      if (!lessor.Attach(l, GFP_KERNEL, 0, "", &blk).value_or(absl::ResourceExhaustedError("")).ok()) std::exit(1);
      if (!lessor.Detach(l, blk.pfn, 0, "").ok()) std::exit(1);
      return;
    }
    absl::StatusOr<std::vector<Page*>> got = lessor.AttachBulk(l, GFP_KERNEL, batch);
    if (!got.ok() || got->size() != batch) std::exit(1);
    pfns.clear();
    for (Page* p : *got) pfns.push_back(pa->page_to_pfn(p));
    lessor.DetachBulk(l, pfns, {}, [](size_t, const absl::Status&) { std::exit(1); });
  };
  for (int i = 0; i < 16; ++i) round(i % 2 ? *b : *a);  // warm the lists and the book
  const uint64_t scrubbed0 = lessor.pages_scrubbed();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i) round(i % 2 ? *b : *a);
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  *scrubbed_share = double(lessor.pages_scrubbed() - scrubbed0) / (double(rounds) * batch);
  return ns / (double(rounds) * batch);
}

void TenancyCost() {
  struct Shape {
    const char* name;
    unsigned batch;
    int rounds;
  };
  for (const Shape& sh : {Shape{"Attach+Detach, 1 page", 1, 200000}, Shape{"AttachBulk+DetachBulk, 4096 pages", 4096, 200}}) {
    double same = 0;
    for (Tenancy m : {Tenancy::kSameIdentity, Tenancy::kTwoIdentities, Tenancy::kInitOnFree}) {
      // Median of 3 runs.
      std::vector<double> runs;
      double scrubbed = 0;
      for (int r = 0; r < 3; ++r) runs.push_back(TenancyNsPerPage(m, sh.batch, sh.rounds, &scrubbed));
      std::sort(runs.begin(), runs.end());
      const double ns = runs[1];
      if (m == Tenancy::kSameIdentity) same = ns;
      const char* label = m == Tenancy::kSameIdentity    ? "one identity (no scrub)"
                          : m == Tenancy::kTwoIdentities ? "two identities taking turns (all scrubbed)"
                                                         : "--init_on_free, one identity";
      std::printf("tenancy %-36s %-44s %8.1f ns/page  %.2fx  (%.0f%% of pages scrubbed at hand-out)\n", sh.name,
                  label, ns, ns / same, 100 * scrubbed);
    }
  }
}

// ---- daemon ----

uint64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

void Daemon(const Config& cfg, int nleases) {
  testing::DaemonProcess d({"--mem_mb=" + std::to_string(cfg.pages * 4096 >> 20), "--journal=off"});
  if (!d.Start()) {
    std::fprintf(stderr, "physmemd did not start (%s): %s\n", DaemonBinaryPath().c_str(), d.log().c_str());
    std::exit(1);
  }
  auto stub = v1::PhysMem::NewStub(grpc::CreateChannel(d.unix_target(), grpc::InsecureChannelCredentials()));
  std::vector<uint64_t> ids;
  for (int i = 0; i < nleases; ++i) {
    grpc::ClientContext ctx;
    v1::CreateLeaseRequest req;
    v1::CreateLeaseResponse resp;
    req.set_ttl_ms(3600 * 1000);
    if (!stub->CreateLease(&ctx, req, &resp).ok()) std::exit(1);
    ids.push_back(resp.lease_id());
  }
  const uint64_t rss0 = RssBytes(d.pid());
  uint64_t held = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t want = cfg.pages / nleases;
    for (uint64_t got = 0; got < want;) {
      grpc::ClientContext ctx;
      v1::AllocPagesBulkRequest req;
      v1::AllocPagesBulkResponse resp;
      req.set_lease_id(ids[i]);
      req.set_gfp("GFP_KERNEL");
      req.set_count(static_cast<uint32_t>(std::min<uint64_t>(4096, want - got)));
      if (!stub->AllocPagesBulk(&ctx, req, &resp).ok() || resp.pfn_size() == 0) break;
      got += resp.pfn_size();
      held += resp.pfn_size();
    }
  }
  const uint64_t rss1 = RssBytes(d.pid());
  const double per_page = double(rss1 - rss0) / held;
  std::printf("daemon  %lu pages held under %d lease%s: RSS +%.1f MiB = %.1f bytes/page (%.1f beyond the 24-byte page)",
              static_cast<unsigned long>(held), nleases, nleases == 1 ? "" : "s", (rss1 - rss0) / 1048576.0, per_page,
              per_page - 24);
  if (nleases == 1) {
    grpc::ClientContext ctx;
    v1::RevokeLeaseRequest req;
    v1::RevokeLeaseResponse resp;
    req.set_lease_id(ids[0]);
    const auto t0 = std::chrono::steady_clock::now();
    const grpc::Status st = stub->RevokeLease(&ctx, req, &resp);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("; RevokeLease of %lu pages %.3f s%s", static_cast<unsigned long>(resp.pages_freed()), s,
                st.ok() ? "" : " (failed)");
  }
  std::printf("\n");
}

}  // namespace
}  // namespace physmem

int main(int argc, char** argv) {
  physmem::Config cfg;
  DaemonBinaryPath() = (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "physmemd").string();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const size_t n = std::strlen(flag);
      return a.compare(0, n, flag) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = value("--seconds=")) {
      cfg.seconds = std::stod(v);
    } else if (const char* v = value("--leases=")) {
      cfg.leases = std::stoul(v);
    } else if (const char* v = value("--pages=")) {
      cfg.pages = std::stoull(v);
    } else if (const char* v = value("--physmemd=")) {
      DaemonBinaryPath() = v;
    } else if (a == "--skip_daemon") {
      cfg.daemon = false;
    } else if (a == "--only=tenancy") {
      physmem::TenancyCost();
      return 0;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  physmem::ReaperCpu(cfg);
  physmem::Book(cfg, 1);
  physmem::Book(cfg, 1000);
  physmem::TenancyCost();
  if (cfg.daemon) {
    physmem::Daemon(cfg, 1);
    physmem::Daemon(cfg, 1000);
  }
  return 0;
}
