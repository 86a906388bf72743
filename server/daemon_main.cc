#include "server/daemon_main.h"

#include <signal.h>

#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "server/default_socket.h"
#include "server/log.h"
#include "server/server.h"
#include "server/version.h"

ABSL_FLAG(std::string, target, "x86_64", "built-in target profile: x86_64, i386, arm64 or rpi4");
ABSL_FLAG(std::string, target_file, "", "custom target profile (Protobuf text format); overrides --target");
ABSL_FLAG(uint64_t, mem_mb, 0, "emulated RAM in MiB for a built-in profile (0: the profile's default)");
ABSL_FLAG(std::string, arena, "best", "arena backing: best, hugetlb, thp or ordinary");
ABSL_FLAG(std::string, arena_path, "", "file for a shared arena (on hugetlbfs or /dev/shm)");
ABSL_FLAG(uint64_t, min_free_kbytes, 0, "vm.min_free_kbytes (0: the kernel's default formula)");
ABSL_FLAG(bool, pcp, true, "per-CPU page lists in front of the buddy");
ABSL_FLAG(bool, page_group_by_mobility, true,
          "group pages by mobility (migratetypes, pageblocks, fallback, highatomic reserve); "
          "--nopage_group_by_mobility behaves as the kernel's page_group_by_mobility_disabled");
ABSL_FLAG(bool, init_on_free, false,
          "zero every page as it is freed (the kernel's init_on_free=1); without it a page is zeroed only when it "
          "passes to another identity (or for __GFP_ZERO): the same guarantee between tenants, at a fraction of the cost");
ABSL_FLAG(std::string, unix_socket, physmem::DefaultDaemonSocket(),
          "Unix socket to serve on ('' = none); the default is /run/physmemd/physmemd.sock for root (or a user "
          "who may write to /run/physmemd), else $XDG_RUNTIME_DIR/physmemd.sock or /tmp/physmemd-UID/physmemd.sock, "
          "where physmemctl looks by default");
ABSL_FLAG(std::string, unix_socket_mode, "0660", "permissions of the Unix socket (octal)");
ABSL_FLAG(std::string, tcp, "", "also serve TCP on host:port (needs TLS flags or --allow_insecure_tcp)");
ABSL_FLAG(bool, allow_insecure_tcp, false, "allow plaintext TCP (logs a warning; callers identified by address)");
ABSL_FLAG(std::string, tls_cert, "", "server certificate (PEM) for TCP");
ABSL_FLAG(std::string, tls_key, "", "server private key (PEM) for TCP");
ABSL_FLAG(std::string, tls_client_ca, "", "CA (PEM) that signs client certificates: enables mutual TLS");
ABSL_FLAG(int64_t, min_lease_ttl_ms, 500, "shortest lease TTL a client may ask for");
ABSL_FLAG(int64_t, max_lease_ttl_ms, 24 * 3600 * 1000, "longest lease TTL a client may ask for");
ABSL_FLAG(uint64_t, default_lease_page_quota, 0, "page quota of a lease that asks for none (0: --max_lease_pages)");
ABSL_FLAG(uint64_t, max_lease_pages, 0, "most pages one lease may hold (0: all of RAM)");
ABSL_FLAG(uint32_t, max_leases_per_identity, 1024, "most leases one identity may hold at once");
ABSL_FLAG(bool, unique_lease_names, true,
          "refuse (ALREADY_EXISTS) a lease whose non-empty name one of the identity's live leases has, so "
          "the name can stand for the id (--nounique_lease_names lets names repeat)");
ABSL_FLAG(uint32_t, max_bulk_pages, 65536, "most pages in one AllocPagesBulk, blocks in one FreePagesBulk");
ABSL_FLAG(int64_t, max_alloc_wait_ms, 10000, "longest wait for memory by a blocking mask (GFP_KERNEL)");
ABSL_FLAG(std::string, journal, "auto",
          "crash recovery journal: auto (on with --arena_path), on, off (docs/recovery.md)");
ABSL_FLAG(std::string, journal_path, "", "journal file prefix (default: <arena_path>.journal)");
ABSL_FLAG(uint64_t, journal_compact_bytes, 32ull << 20, "compact the journal when its live segment passes this");
ABSL_FLAG(uint64_t, max_page_io_bytes, 4 << 20, "most bytes one ReadPages or WritePages call moves");
ABSL_FLAG(uint64_t, identity_max_pages, 0, "most pages one identity may hold across its leases (0: no limit)");
ABSL_FLAG(std::string, identity_zone_share_percent, "100",
          "most of each zone one identity may hold, percent: '50' (every zone) or 'Normal:50,DMA32:25'");
ABSL_FLAG(int64_t, identity_dma_pages, -1,
          "most ZONE_DMA pages one identity may hold, by GFP_DMA or fallback (-1: an eighth of a 16 MiB "
          "ISA ZONE_DMA; no cap where ZONE_DMA is larger, as on arm64)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "serve Prometheus metrics on host:port at /metrics (port 0 picks a free one; '' = off)");
ABSL_FLAG(uint32_t, metrics_max_lease_names, 50,
          "most lease names with their own physmem_lease_held_pages series; the rest sum under (other)");
ABSL_FLAG(int32_t, max_message_bytes, 64 << 20, "largest gRPC request or reply");

namespace physmem {
namespace {

absl::StatusOr<ServerOptions> OptionsFromFlags() {
  ServerOptions o;
  const std::string file = absl::GetFlag(FLAGS_target_file);
  absl::StatusOr<Target> t = file.empty()
                                 ? BuiltinTarget(absl::GetFlag(FLAGS_target), absl::GetFlag(FLAGS_mem_mb) << 20)
                                 : LoadTargetFile(file);
  if (!t.ok()) return t.status();
  o.allocator.target = *std::move(t);
  absl::StatusOr<ArenaOptions::Backing> b = ParseArenaBacking(absl::GetFlag(FLAGS_arena));
  if (!b.ok()) return b.status();
  o.allocator.arena_backing = *b;
  o.allocator.arena_path = absl::GetFlag(FLAGS_arena_path);
  o.allocator.min_free_kbytes = absl::GetFlag(FLAGS_min_free_kbytes);
  o.allocator.pcp_enabled = absl::GetFlag(FLAGS_pcp);
  o.allocator.page_group_by_mobility = absl::GetFlag(FLAGS_page_group_by_mobility);
  o.allocator.init_on_free = absl::GetFlag(FLAGS_init_on_free);
  o.unix_socket = absl::GetFlag(FLAGS_unix_socket);
  try {
    o.unix_socket_mode = static_cast<unsigned>(std::stoul(absl::GetFlag(FLAGS_unix_socket_mode), nullptr, 8));
  } catch (const std::exception&) {
    return absl::InvalidArgumentError("--unix_socket_mode must be octal, like 0660");
  }
  o.tcp_listen = absl::GetFlag(FLAGS_tcp);
  o.allow_insecure_tcp = absl::GetFlag(FLAGS_allow_insecure_tcp);
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  o.lease_limits.min_ttl_ms = absl::GetFlag(FLAGS_min_lease_ttl_ms);
  o.lease_limits.max_ttl_ms = absl::GetFlag(FLAGS_max_lease_ttl_ms);
  o.lease_limits.default_page_quota = absl::GetFlag(FLAGS_default_lease_page_quota);
  o.lease_limits.max_page_quota = absl::GetFlag(FLAGS_max_lease_pages);
  o.lease_limits.max_leases_per_identity = absl::GetFlag(FLAGS_max_leases_per_identity);
  o.lease_limits.unique_names = absl::GetFlag(FLAGS_unique_lease_names);
  o.service_limits.max_bulk_pages = absl::GetFlag(FLAGS_max_bulk_pages);
  o.service_limits.max_alloc_wait_ms = absl::GetFlag(FLAGS_max_alloc_wait_ms);
  o.service_limits.max_page_io_bytes = absl::GetFlag(FLAGS_max_page_io_bytes);
  o.identity_limits.max_pages = absl::GetFlag(FLAGS_identity_max_pages);
  absl::StatusOr<std::array<uint32_t, MAX_NR_ZONES>> share =
      ParseZoneSharePercent(absl::GetFlag(FLAGS_identity_zone_share_percent));
  if (!share.ok()) return share.status();
  o.identity_limits.zone_share_percent = *share;
  o.identity_limits.dma_pages = absl::GetFlag(FLAGS_identity_dma_pages);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.journal = absl::GetFlag(FLAGS_journal);
  o.journal_path = absl::GetFlag(FLAGS_journal_path);
  o.journal_compact_bytes = absl::GetFlag(FLAGS_journal_compact_bytes);
  o.metrics.listen = absl::GetFlag(FLAGS_metrics_listen);
  o.metrics.max_lease_names = absl::GetFlag(FLAGS_metrics_max_lease_names);
  return o;
}

int Serve(const DaemonHooks& hooks) {
  // Block the stop signals before any thread starts, so every thread inherits the mask and
  // only the waiter below receives them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  absl::StatusOr<ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    LogError("bad_flags", {{"error", std::string(options.status().message())}});
    return 2;
  }
  options->lease_clock = hooks.lease_clock;
  options->journal_step_hook = hooks.journal_step_hook;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::BuildAndStart(*std::move(options));
  if (!server.ok()) {
    // Exit 2, as for bad flags: each start-up failure names the path or port, why, and the flag
    // that changes it.
    LogError("start_failed", {{"error", server.status().ToString()}});
    return 2;
  }
  std::thread signals([&] {
    int sig = 0;
    sigwait(&stop, &sig);
    LogInfo("signal", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    (*server)->Shutdown();
  });
  (*server)->Wait();
  signals.join();
  return 0;
}

}  // namespace

int DaemonMain(int argc, char** argv, const DaemonHooks& hooks) {
  SetFlagsUsage("physmemd", {"server/daemon_main.cc"});
  absl::SetProgramUsageMessage(
      "hands out emulated physical memory the way the Linux kernel does, over gRPC.\n"
      "Usage: physmemd [--flag=value]...   (docs: README.md; every flag below, with its default)");
  absl::ParseCommandLine(argc, argv);
  // Abseil creates its time-zone registry (and the mutex guarding it) on first use. gRPC's threads
  // may look a zone up, and so may the thread that shuts the server down; whichever comes first
  // creates it, and Debian's uninstrumented Abseil orders that creation where ThreadSanitizer
  // cannot see it (CI13's TSan run reported the creation, under Shutdown(), as racing with a
  // gRPC thread's lookup). Created here, before any thread exists, it is ordered before them all.
  // (A named zone: "UTC" would skip the registry.)
  absl::TimeZone zone;
  (void)absl::LoadTimeZone("localtime", &zone);
  return Serve(hooks);
}

}  // namespace physmem

