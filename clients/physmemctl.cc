// physmemctl: the command line of physmemd. Subcommands are positional words
// (`physmemctl lease create --ttl_ms=60000`), options are Abseil flags; every numeric argument
// takes decimal or 0x hex. Output is line-oriented key=value text for scripts; /proc-style
// commands (buddyinfo, zoneinfo) print the kernel's formats.
//
// Exit status: 0 success; 1 the daemon (or the connection) refused, with
// "physmemctl: <CODE>: <message>" on stderr; 2 usage error (unknown command or flag, missing or
// malformed argument), with what was wrong and the command's usage on stderr.
// Usage and examples: docs/physmemctl.md.
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/physmem_client.h"
#include "server/version.h"

// Global options.
ABSL_FLAG(std::string, target, physmem::client::DefaultTarget(),
          "physmemd's address: unix:///path/to/physmemd.sock, or host:port for its TCP listener");
ABSL_FLAG(std::string, timeout_ms, "",
          "deadline of each call in ms (default: 2000, and 10000 for allocations, which may wait for memory)");
ABSL_FLAG(std::string, tls_ca, "", "TCP: CA (PEM) that signed the daemon's certificate");
ABSL_FLAG(std::string, tls_cert, "", "TCP: client certificate (PEM) for mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "TCP: client private key (PEM) for mutual TLS");
// Subcommand options.
ABSL_FLAG(std::string, ttl_ms, "", "lease create: time to live in ms");
ABSL_FLAG(std::string, quota, "", "lease create: most pages the lease may hold (default: the daemon's)");
ABSL_FLAG(std::string, name, "", "lease create: a name for humans and metrics");
ABSL_FLAG(std::string, duration_ms, "", "lease keepalive: stop after this many ms (default: until killed)");
ABSL_FLAG(std::string, gfp, "GFP_KERNEL", "alloc: GFP mask, by name (GFP_KERNEL|__GFP_DMA32) or number (0xcc0)");
ABSL_FLAG(std::string, order, "", "alloc, free: block order (2^order pages); default 0");
ABSL_FLAG(std::string, key, "", "alloc: idempotency key; free: free the block allocated with this key");
ABSL_FLAG(std::string, form, "pfn", "alloc: pfn (alloc_pages), address (__get_free_pages) or zeroed (get_zeroed_page)");
ABSL_FLAG(std::string, pfn, "", "free: the block's first pfn");
ABSL_FLAG(std::string, addr, "", "free: the block's direct-map kernel virtual address");
ABSL_FLAG(std::string, offset, "", "read, write: bytes from the start of page PFN (default 0)");
ABSL_FLAG(std::string, length, "", "read: bytes to read (default one page's worth, 4096)");
ABSL_FLAG(std::string, out, "", "read: write the raw bytes to this file instead of hex to stdout");
ABSL_FLAG(std::string, hex, "", "write: the bytes to write, as hex (48656c6c6f)");
ABSL_FLAG(std::string, in, "", "write: write this file's bytes");

namespace physmem::ctl {
namespace {

using client::Client;
using client::Lease;
using client::PageHandle;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(usage: physmemctl [global options] COMMAND [ARGS] [options]

Leases:
  lease create --ttl_ms=N [--quota=N] [--name=S]   create a lease, print its id; it lives for its
                                                   TTL unless kept alive
  lease keepalive ID [--duration_ms=N]             renew it over the KeepAlive stream until killed
                                                   (or for N ms); prints each renewal
  lease revoke ID                                  end it now, freeing every page it holds
  lease get ID                                     its TTL, quota and holdings
  lease list                                       this identity's leases
Pages (the block stays allocated, in the lease, after physmemctl exits):
  alloc LEASE [--gfp=GFP_KERNEL] [--order=N] [--key=K] [--form=pfn|address|zeroed]
  free LEASE (--pfn=N [--order=N] | --key=K | --addr=0x... [--order=N])
  address LEASE PFN                                page_address()
  kmap LEASE PFN                                   kmap(): map a (highmem) page
  kunmap LEASE PFN
  read LEASE PFN [--offset=N] [--length=N] [--out=FILE]   page contents (hex, or raw to FILE)
  write LEASE PFN [--offset=N] (--hex=HEX | --in=FILE)    write page contents
Machine:
  zoneinfo                                         /proc/zoneinfo's main lines
  buddyinfo                                        /proc/buddyinfo, exactly
  target                                           the emulated machine: profile, memory map, arena
  version                                          physmemctl's version and git commit (--version)
  validate                                         run the allocator's invariant check

Global options:
  --target=ADDR      unix:///path/to/physmemd.sock, or host:port for TCP. Default: $PHYSMEM_TARGET,
                     else unix:///run/physmemd/physmemd.sock if that socket exists, else this
                     user's socket ($XDG_RUNTIME_DIR/physmemd.sock, or /tmp/physmemd-UID/...),
                     where a physmemd started by the same user listens by default
  --timeout_ms=N     deadline of each call (default 2000; allocations 10000)
  --tls_ca=FILE [--tls_cert=FILE --tls_key=FILE]    TLS / mutual TLS for a TCP target

Numbers are decimal or 0x hex. Exit status: 0 ok; 1 the call failed
("physmemctl: CODE: message" on stderr); 2 usage error.
)";

constexpr const char* kGlobalFlags[] = {"target", "timeout_ms", "tls_ca", "tls_cert", "tls_key"};

bool IsGlobalFlag(const std::string& name) {
  return std::find(std::begin(kGlobalFlags), std::end(kGlobalFlags), name) != std::end(kGlobalFlags);
}

// Usage errors travel as a status with this payload, so that the exit code can tell them from the
// daemon's INVALID_ARGUMENT (which is exit 1, like every refusal by the daemon).
constexpr char kUsagePayload[] = "physmemctl/usage-error";

absl::Status UsageError(const std::string& message) {
  absl::Status s = absl::InvalidArgumentError(message);
  s.SetPayload(kUsagePayload, absl::Cord("1"));
  return s;
}

bool IsUsageError(const absl::Status& s) { return s.GetPayload(kUsagePayload).has_value(); }

// ---- Parsing ----

// Decimal or 0x hex, unsigned, at most `max`, no sign or trailing text; a usage error otherwise.
absl::StatusOr<uint64_t> ParseNumber(const std::string& text, const std::string& what,
                                     uint64_t max = std::numeric_limits<uint64_t>::max()) {
  const bool hex = absl::StartsWithIgnoreCase(text, "0x");
  const char* begin = text.data() + (hex ? 2 : 0);
  const char* end = text.data() + text.size();
  uint64_t v = 0;
  const auto [ptr, ec] = std::from_chars(begin, end, v, hex ? 16 : 10);
  if (begin == end || ec != std::errc() || ptr != end) {
    return UsageError(absl::StrFormat("%s '%s' is not a number: expected decimal (4096) or 0x hex (0x1000)", what,
                                      text));
  }
  if (v > max) return UsageError(absl::StrFormat("%s %s is too large: at most %d", what, text, max));
  return v;
}

// The Abseil flags this invocation names (--name=value, --name value, -name), each checked to
// exist: Abseil itself would exit 1 on an unknown flag, and that is a usage error (2) here.
absl::StatusOr<std::set<std::string>> FlagsGiven(int argc, char** argv) {
  std::set<std::string> given;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    const std::string body = arg.substr(arg[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    std::string name = body.substr(0, eq);
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no")) {  // --nofoo for a bool flag
      flag = absl::FindCommandLineFlag(name.substr(2));
      if (flag != nullptr && flag->IsOfType<bool>()) name = name.substr(2);
      else flag = nullptr;
    }
    if (flag == nullptr) return UsageError(absl::StrFormat("unknown option %s", arg));
    if (eq == std::string::npos && !flag->IsOfType<bool>()) {
      if (i + 1 >= argc) return UsageError(absl::StrFormat("option --%s needs a value: --%s=VALUE", name, name));
      ++i;  // Abseil takes the next word as the value
    }
    given.insert(name);
  }
  return given;
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return false;
    if (arg == "-h" || arg == "--help" || arg == "-help" || (i == 1 && arg == "help")) return true;
  }
  return false;
}

absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags() {
  client::ClientOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  o.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  if (const std::string t = absl::GetFlag(FLAGS_timeout_ms); !t.empty()) {
    absl::StatusOr<uint64_t> ms = ParseNumber(t, "--timeout_ms", uint64_t{1} << 40);
    if (!ms.ok()) return ms.status();
    if (*ms == 0) return UsageError("--timeout_ms must be at least 1");
    o.connect_timeout_ms = o.alloc_timeout_ms = o.call_timeout_ms = static_cast<int64_t>(*ms);
  }
  return o;
}

// ---- Formatting ----

std::string Hex(uint64_t v) { return absl::StrFormat("%#x", v); }

// A value for key=value output: as is when it is non-empty and has no blanks, quotes, '=' or
// backslashes; otherwise double-quoted with C escapes.
std::string Quoted(const std::string& s) {
  if (!s.empty() && s.find_first_of(" \t\r\n\"=\\") == std::string::npos) return s;
  return absl::StrCat("\"", absl::CEscape(s), "\"");
}

std::string FormatAllocation(const PageHandle& p) {
  std::string line = absl::StrFormat("pfn=%s order=%d zone=%s phys=%s virt=%s arena_offset=%s", Hex(p.pfn()),
                                     p.order(), p.zone(), Hex(p.phys_addr()), Hex(p.virt_addr()),
                                     Hex(p.arena_offset()));
  if (!p.key().empty()) absl::StrAppend(&line, " key=", Quoted(p.key()));
  if (p.replayed()) absl::StrAppend(&line, " replayed=true");
  return line;
}

std::string FormatLease(const v1::LeaseInfo& l) {
  return absl::StrFormat("lease=%d name=%s identity=%s ttl_ms=%d granted_ttl_ms=%d page_quota=%d pages_held=%d",
                         l.lease_id(), Quoted(l.name()), Quoted(l.identity()), l.ttl_ms(), l.granted_ttl_ms(),
                         l.page_quota(), l.pages_held());
}

const char* ZoneName(v1::Zone z) {
  switch (z) {
    case v1::ZONE_DMA: return "DMA";
    case v1::ZONE_DMA32: return "DMA32";
    case v1::ZONE_NORMAL: return "Normal";
    case v1::ZONE_HIGHMEM: return "HighMem";
    default: return "unspecified";
  }
}

// The lines of mm/vmstat.c zoneinfo_show_print() that we model, in its layout.
std::string FormatZoneinfo(const v1::GetZoneInfoResponse& info) {
  std::string out;
  for (const v1::ZoneInfo& z : info.zones()) {
    absl::StrAppendFormat(&out, "Node 0, zone %8s\n", z.zone());
    absl::StrAppendFormat(&out, "  pages free     %d\n", z.free_pages());
    absl::StrAppendFormat(&out, "        min      %d\n", z.min());
    absl::StrAppendFormat(&out, "        low      %d\n", z.low());
    absl::StrAppendFormat(&out, "        high     %d\n", z.high());
    absl::StrAppendFormat(&out, "        spanned  %d\n", z.spanned_pages());
    absl::StrAppendFormat(&out, "        present  %d\n", z.present_pages());
    absl::StrAppendFormat(&out, "        managed  %d\n", z.managed_pages());
    absl::StrAppendFormat(&out, "        protection: (%s)\n", absl::StrJoin(z.protection(), ", "));
    absl::StrAppendFormat(&out, "      nr_free_pages %d\n", z.buddy_free_pages());
    if (z.populated()) {
      absl::StrAppend(&out, "  pagesets\n");
      for (const v1::PerCpuPageset& p : z.pagesets()) {
        absl::StrAppendFormat(&out, "    cpu: %d\n", p.cpu());
        absl::StrAppendFormat(&out, "              count: %d\n", p.count());
        absl::StrAppendFormat(&out, "              high:  %d\n", z.pcp_high());
        absl::StrAppendFormat(&out, "              batch: %d\n", z.pcp_batch());
      }
    }
    absl::StrAppendFormat(&out, "  start_pfn:           %d\n", z.start_pfn());
  }
  return out;
}

std::string FormatTarget(const v1::GetTargetResponse& t) {
  const v1::TargetProfile& p = t.profile();
  std::string out;
  absl::StrAppendFormat(&out, "name=%s\n", Quoted(p.name()));
  if (!p.description().empty()) absl::StrAppendFormat(&out, "description=%s\n", Quoted(p.description()));
  absl::StrAppendFormat(&out, "page_size=%d\n", p.page_size());
  absl::StrAppendFormat(&out, "page_offset=%s\n", Hex(p.page_offset()));
  absl::StrAppendFormat(&out, "phys_offset=%s\n", Hex(p.phys_offset()));
  absl::StrAppendFormat(&out, "max_page_order=%d\n", p.max_page_order());
  for (const v1::ZoneLimit& z : p.zone()) {
    absl::StrAppendFormat(&out, "zone=%s end=%s\n", ZoneName(z.zone()), z.end() == 0 ? "unbounded" : Hex(z.end()));
  }
  if (p.pkmap_slots() != 0) {
    absl::StrAppendFormat(&out, "pkmap_base=%s pkmap_slots=%d\n", Hex(p.pkmap_base()), p.pkmap_slots());
  }
  absl::StrAppendFormat(&out, "total_pages=%d\n", t.total_pages());
  absl::StrAppendFormat(&out, "metadata_bytes=%d\n", t.metadata_bytes());
  absl::StrAppendFormat(&out, "arena_backing=%s\n", t.arena_backing());
  absl::StrAppendFormat(&out, "arena_bytes=%d\n", t.arena_bytes());
  absl::StrAppendFormat(&out, "arena_path=%s\n", Quoted(t.arena_path()));
  for (const std::string& r : t.arena_refusals()) absl::StrAppendFormat(&out, "arena_refusal=%s\n", Quoted(r));
  absl::StrAppend(&out, "memory_map:\n", t.memory_map());
  return out;
}

// ---- Commands ----

// What a command gets: its positional arguments (after the command words) and a way to connect
// (after it has checked its arguments, so that usage errors never wait for a connection).
struct Invocation {
  std::vector<std::string> args;
  client::ClientOptions options;

  absl::StatusOr<std::unique_ptr<Client>> Connect() const { return Client::Connect(options); }
  // A Lease over an existing lease that outlives this process: no keep-alive, no revoke.
  absl::StatusOr<std::unique_ptr<Lease>> Attach(uint64_t lease_id) const {
    absl::StatusOr<std::unique_ptr<Client>> c = Connect();
    if (!c.ok()) return c.status();
    return (*c)->AttachLease(lease_id);
  }
};

struct Command {
  std::vector<std::string> words;      // "lease", "create"
  std::vector<std::string> arg_names;  // positional arguments, e.g. "LEASE", "PFN"
  std::set<std::string> flags;         // options it takes, besides the global ones
  std::string synopsis;
  std::function<absl::Status(const Invocation&)> run;
};

// An optional numeric flag: `fallback` when not given.
absl::StatusOr<uint64_t> NumericFlag(const std::string& value, const std::string& name, uint64_t fallback,
                                     uint64_t max) {
  if (value.empty()) return fallback;
  return ParseNumber(value, "--" + name, max);
}

absl::Status LeaseCreate(const Invocation& inv) {
  const std::string ttl_text = absl::GetFlag(FLAGS_ttl_ms);
  if (ttl_text.empty()) return UsageError("lease create needs --ttl_ms=N (the lease's time to live in ms)");
  absl::StatusOr<uint64_t> ttl = ParseNumber(ttl_text, "--ttl_ms", std::numeric_limits<int64_t>::max());
  if (!ttl.ok()) return ttl.status();
  absl::StatusOr<uint64_t> quota =
      NumericFlag(absl::GetFlag(FLAGS_quota), "quota", 0, std::numeric_limits<uint64_t>::max());
  if (!quota.ok()) return quota.status();
  client::LeaseOptions o;
  o.ttl_ms = static_cast<int64_t>(*ttl);
  o.page_quota = *quota;
  o.name = absl::GetFlag(FLAGS_name);
  o.keepalive = false;
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<std::unique_ptr<Lease>> lease = (*c)->CreateLease(o);
  if (!lease.ok()) return lease.status();
  absl::PrintF("%d\n", (*lease)->Release());  // the lease outlives us, for its TTL
  return absl::OkStatus();
}

// Stops on SIGINT/SIGTERM (exit 0), after --duration_ms (exit 0), or when the lease is gone or
// cannot have survived the keep-alive's errors (exit 1).
absl::Status LeaseKeepAlive(const Invocation& inv) {
  absl::StatusOr<uint64_t> id = ParseNumber(inv.args[0], "lease id");
  if (!id.ok()) return id.status();
  const std::string duration_text = absl::GetFlag(FLAGS_duration_ms);
  absl::StatusOr<uint64_t> duration = NumericFlag(duration_text, "duration_ms", 0, uint64_t{1} << 40);
  if (!duration.ok()) return duration.status();
  const auto end = duration_text.empty() ? std::chrono::steady_clock::time_point::max()
                                         : std::chrono::steady_clock::now() + std::chrono::milliseconds(*duration);
  // Block the stop signals before gRPC starts any thread, so that every thread inherits the mask
  // and only the sigtimedwait() below receives them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  client::AttachOptions o;
  o.keepalive = true;
  o.on_keepalive = [](const v1::KeepAliveResponse& r) {
    absl::PrintF("lease=%d ttl_ms=%d\n", r.lease_id(), r.ttl_ms());
    std::fflush(stdout);
  };
  absl::StatusOr<std::unique_ptr<Lease>> lease = (*c)->AttachLease(*id, o);
  if (!lease.ok()) return lease.status();
  auto failing_since = std::chrono::steady_clock::time_point::max();
  while (std::chrono::steady_clock::now() < end) {
    const timespec tick = {0, 50 * 1000 * 1000};
    if (sigtimedwait(&stop, nullptr, &tick) > 0) break;
    if ((*lease)->gone()) return (*lease)->Info().status();  // the NOT_FOUND it recorded
    const absl::Status ka = (*lease)->keepalive_status();
    const auto now = std::chrono::steady_clock::now();
    if (ka.ok()) {
      failing_since = std::chrono::steady_clock::time_point::max();
    } else if (failing_since == std::chrono::steady_clock::time_point::max()) {
      failing_since = now;
    } else if (now - failing_since > std::chrono::milliseconds((*lease)->granted_ttl_ms())) {
      // A whole TTL without a renewal: the lease has expired by now.
      return absl::Status(ka.code(), absl::StrFormat("keep-alive of lease %d failed for longer than its TTL: %s",
                                                     *id, ka.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status LeaseRevoke(const Invocation& inv) {
  absl::StatusOr<uint64_t> id = ParseNumber(inv.args[0], "lease id");
  if (!id.ok()) return id.status();
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<uint64_t> pages = (*c)->RevokeLease(*id);
  if (!pages.ok()) return pages.status();
  absl::PrintF("lease=%d pages_freed=%d\n", *id, *pages);
  return absl::OkStatus();
}

absl::Status LeaseGet(const Invocation& inv) {
  absl::StatusOr<uint64_t> id = ParseNumber(inv.args[0], "lease id");
  if (!id.ok()) return id.status();
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::LeaseInfo> info = (*c)->GetLease(*id);
  if (!info.ok()) return info.status();
  absl::PrintF("%s\n", FormatLease(*info));
  for (const v1::LeaseHolding& h : info->holdings()) {
    absl::PrintF("holding zone=%s order=%d blocks=%d\n", h.zone(), h.order(), h.blocks());
  }
  return absl::OkStatus();
}

absl::Status LeaseList(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::ListLeasesResponse> list = (*c)->ListLeases();
  if (!list.ok()) return list.status();
  for (const v1::LeaseInfo& l : list->leases()) absl::PrintF("%s\n", FormatLease(l));
  return absl::OkStatus();
}

absl::Status Alloc(const Invocation& inv) {
  absl::StatusOr<uint64_t> id = ParseNumber(inv.args[0], "lease id");
  if (!id.ok()) return id.status();
  const std::string gfp = absl::GetFlag(FLAGS_gfp);
  if (gfp.empty()) return UsageError("--gfp is empty: give a mask such as GFP_KERNEL or 0xcc0");
  const std::string order_text = absl::GetFlag(FLAGS_order);
  absl::StatusOr<uint64_t> order = NumericFlag(order_text, "order", 0, std::numeric_limits<uint32_t>::max());
  if (!order.ok()) return order.status();
  const std::string key = absl::GetFlag(FLAGS_key);
  const std::string form = absl::GetFlag(FLAGS_form);
  if (form != "pfn" && form != "address" && form != "zeroed") {
    return UsageError(absl::StrFormat(
        "--form=%s: expected pfn (alloc_pages), address (__get_free_pages) or zeroed (get_zeroed_page)", form));
  }
  if (form == "zeroed" && !order_text.empty()) {
    return UsageError("--form=zeroed allocates one page (get_zeroed_page() is order 0): drop --order");
  }
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(*id);
  if (!lease.ok()) return lease.status();
  const auto o = static_cast<uint32_t>(*order);
  absl::StatusOr<PageHandle> page = form == "address"  ? (*lease)->GetFreePages(gfp, o, key)
                                    : form == "zeroed" ? (*lease)->GetZeroedPage(gfp, key)
                                                       : (*lease)->AllocPages(gfp, o, key);
  if (!page.ok()) return page.status();
  page->Release();  // the block stays in the lease after we exit
  absl::PrintF("%s\n", FormatAllocation(*page));
  return absl::OkStatus();
}

absl::Status Free(const Invocation& inv) {
  absl::StatusOr<uint64_t> id = ParseNumber(inv.args[0], "lease id");
  if (!id.ok()) return id.status();
  const std::string pfn_text = absl::GetFlag(FLAGS_pfn), key = absl::GetFlag(FLAGS_key),
                    addr_text = absl::GetFlag(FLAGS_addr), order_text = absl::GetFlag(FLAGS_order);
  if (int{!pfn_text.empty()} + int{!key.empty()} + int{!addr_text.empty()} != 1) {
    return UsageError("free needs exactly one of --pfn=N (with --order=N), --key=K or --addr=0x...");
  }
  if (!key.empty() && !order_text.empty()) return UsageError("--key names the block, order included: drop --order");
  absl::StatusOr<uint64_t> order = NumericFlag(order_text, "order", 0, std::numeric_limits<uint32_t>::max());
  if (!order.ok()) return order.status();
  absl::StatusOr<uint64_t> pfn = NumericFlag(pfn_text, "pfn", 0, std::numeric_limits<uint64_t>::max());
  if (!pfn.ok()) return pfn.status();
  absl::StatusOr<uint64_t> addr = NumericFlag(addr_text, "addr", 0, std::numeric_limits<uint64_t>::max());
  if (!addr.ok()) return addr.status();
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(*id);
  if (!lease.ok()) return lease.status();
  const auto o = static_cast<uint32_t>(*order);
  absl::StatusOr<uint64_t> freed = !key.empty()       ? (*lease)->FreePagesByKey(key)
                                   : !pfn_text.empty() ? (*lease)->FreePages(*pfn, o)
                                                       : (*lease)->FreePagesByAddress(*addr, o);
  if (!freed.ok()) return freed.status();
  absl::PrintF("pages_freed=%d\n", *freed);
  return absl::OkStatus();
}

// The LEASE PFN arguments of address, kmap, kunmap, read and write.
struct LeasePfn {
  uint64_t lease_id = 0;
  uint64_t pfn = 0;
};
absl::StatusOr<LeasePfn> ParseLeasePfn(const Invocation& inv) {
  absl::StatusOr<uint64_t> id = ParseNumber(inv.args[0], "lease id");
  if (!id.ok()) return id.status();
  absl::StatusOr<uint64_t> pfn = ParseNumber(inv.args[1], "pfn");
  if (!pfn.ok()) return pfn.status();
  return LeasePfn{*id, *pfn};
}

// --offset of read and write: bytes from the start of the block's head page (default 0).
absl::StatusOr<uint64_t> OffsetFlag() {
  return NumericFlag(absl::GetFlag(FLAGS_offset), "offset", 0, std::numeric_limits<uint64_t>::max());
}

enum class PfnOp { kAddress, kKmap, kKunmap };

// address / kmap / kunmap LEASE PFN.
absl::Status PfnCommand(const Invocation& inv, PfnOp op) {
  absl::StatusOr<LeasePfn> at = ParseLeasePfn(inv);
  if (!at.ok()) return at.status();
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(at->lease_id);
  if (!lease.ok()) return lease.status();
  if (op == PfnOp::kKunmap) {
    if (absl::Status s = (*lease)->Kunmap(at->pfn); !s.ok()) return s;
    absl::PrintF("pfn=%s unmapped\n", Hex(at->pfn));
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> virt = op == PfnOp::kKmap ? (*lease)->Kmap(at->pfn) : (*lease)->PageAddress(at->pfn);
  if (!virt.ok()) return virt.status();
  absl::PrintF("pfn=%s virt=%s\n", Hex(at->pfn), Hex(*virt));
  return absl::OkStatus();
}

// read LEASE PFN: ReadPages, printed as hex (or written raw to --out).
absl::Status ReadCommand(const Invocation& inv) {
  absl::StatusOr<LeasePfn> at = ParseLeasePfn(inv);
  if (!at.ok()) return at.status();
  absl::StatusOr<uint64_t> offset = OffsetFlag();
  if (!offset.ok()) return offset.status();
  absl::StatusOr<uint64_t> length =
      NumericFlag(absl::GetFlag(FLAGS_length), "length", 4096, std::numeric_limits<uint64_t>::max());
  if (!length.ok()) return length.status();
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(at->lease_id);
  if (!lease.ok()) return lease.status();
  absl::StatusOr<std::string> data = (*lease)->ReadPages(at->pfn, *offset, *length);
  if (!data.ok()) return data.status();
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    absl::PrintF("%s\n", absl::BytesToHexString(*data));
    return absl::OkStatus();
  }
  std::FILE* f = std::fopen(out.c_str(), "wb");
  if (f == nullptr || std::fwrite(data->data(), 1, data->size(), f) != data->size()) {
    if (f != nullptr) std::fclose(f);
    return absl::UnavailableError(absl::StrFormat("cannot write %s", out));
  }
  std::fclose(f);
  absl::PrintF("bytes_read=%d\n", data->size());
  return absl::OkStatus();
}

// write LEASE PFN: WritePages from --hex or --in.
absl::Status WriteCommand(const Invocation& inv) {
  absl::StatusOr<LeasePfn> at = ParseLeasePfn(inv);
  if (!at.ok()) return at.status();
  absl::StatusOr<uint64_t> offset = OffsetFlag();
  if (!offset.ok()) return offset.status();
  const std::string hex = absl::GetFlag(FLAGS_hex), in = absl::GetFlag(FLAGS_in);
  if (hex.empty() == in.empty()) return UsageError("write needs exactly one of --hex=HEX or --in=FILE");
  std::string data;
  if (!hex.empty()) {
    if (hex.size() % 2 != 0 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
      return UsageError(absl::StrFormat("--hex '%s' is not an even number of hex digits", hex));
    }
    data = absl::HexStringToBytes(hex);
  } else {
    std::FILE* f = std::fopen(in.c_str(), "rb");
    if (f == nullptr) return UsageError(absl::StrFormat("cannot open %s", in));
    char buf[65536];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) data.append(buf, n);
    std::fclose(f);
  }
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(at->lease_id);
  if (!lease.ok()) return lease.status();
  if (absl::Status s = (*lease)->WritePages(at->pfn, *offset, data); !s.ok()) return s;
  absl::PrintF("bytes_written=%d\n", data.size());
  return absl::OkStatus();
}

absl::Status ZoneinfoCommand(const Invocation& inv, bool buddyinfo) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::GetZoneInfoResponse> info = (*c)->GetZoneInfo();
  if (!info.ok()) return info.status();
  // buddyinfo is the daemon's exact /proc/buddyinfo text: printed verbatim.
  absl::PrintF("%s", buddyinfo ? info->buddyinfo() : FormatZoneinfo(*info));
  return absl::OkStatus();
}

absl::Status TargetCommand(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::GetTargetResponse> t = (*c)->GetTarget();
  if (!t.ok()) return t.status();
  absl::PrintF("%s", FormatTarget(*t));
  return absl::OkStatus();
}

absl::Status ValidateCommand(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::ValidateResponse> v = (*c)->Validate();
  if (!v.ok()) return v.status();
  absl::PrintF("total_pages=%d free_pages=%d allocated_pages=%d leases=%d lease_pages=%d\n", v->total_pages(),
               v->free_pages(), v->allocated_pages(), v->leases(), v->lease_pages());
  if (v->lease_pages() != v->allocated_pages()) {
    return absl::InternalError(absl::StrFormat(
        "the leases hold %d pages but the allocator counts %d allocated (expected equal; an allocation or free in "
        "flight during the check can cause this, so re-run before reporting)",
        v->lease_pages(), v->allocated_pages()));
  }
  return absl::OkStatus();
}

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {{"lease", "create"}, {}, {"ttl_ms", "quota", "name"}, "lease create --ttl_ms=N [--quota=N] [--name=S]",
       LeaseCreate},
      {{"lease", "keepalive"}, {"ID"}, {"duration_ms"}, "lease keepalive ID [--duration_ms=N]", LeaseKeepAlive},
      {{"lease", "revoke"}, {"ID"}, {}, "lease revoke ID", LeaseRevoke},
      {{"lease", "get"}, {"ID"}, {}, "lease get ID", LeaseGet},
      {{"lease", "list"}, {}, {}, "lease list", LeaseList},
      {{"alloc"}, {"LEASE"}, {"gfp", "order", "key", "form"},
       "alloc LEASE [--gfp=GFP_KERNEL] [--order=N] [--key=K] [--form=pfn|address|zeroed]", Alloc},
      {{"free"}, {"LEASE"}, {"pfn", "order", "key", "addr"},
       "free LEASE (--pfn=N [--order=N] | --key=K | --addr=0x... [--order=N])", Free},
      {{"address"}, {"LEASE", "PFN"}, {}, "address LEASE PFN",
       [](const Invocation& inv) { return PfnCommand(inv, PfnOp::kAddress); }},
      {{"kmap"}, {"LEASE", "PFN"}, {}, "kmap LEASE PFN",
       [](const Invocation& inv) { return PfnCommand(inv, PfnOp::kKmap); }},
      {{"kunmap"}, {"LEASE", "PFN"}, {}, "kunmap LEASE PFN",
       [](const Invocation& inv) { return PfnCommand(inv, PfnOp::kKunmap); }},
      {{"read"}, {"LEASE", "PFN"}, {"offset", "length", "out"},
       "read LEASE PFN [--offset=N] [--length=N] [--out=FILE]", ReadCommand},
      {{"write"}, {"LEASE", "PFN"}, {"offset", "hex", "in"}, "write LEASE PFN [--offset=N] (--hex=HEX | --in=FILE)",
       WriteCommand},
      {{"zoneinfo"}, {}, {}, "zoneinfo", [](const Invocation& inv) { return ZoneinfoCommand(inv, false); }},
      {{"buddyinfo"}, {}, {}, "buddyinfo", [](const Invocation& inv) { return ZoneinfoCommand(inv, true); }},
      {{"target"}, {}, {}, "target", TargetCommand},
      {{"validate"}, {}, {}, "validate", ValidateCommand},
  };
  return commands;
}

// The command named by the leading positional words.
absl::StatusOr<const Command*> FindCommand(const std::vector<std::string>& words) {
  if (words.empty()) return UsageError("no command given");
  for (const Command& c : Commands()) {
    if (words.size() >= c.words.size() && std::equal(c.words.begin(), c.words.end(), words.begin())) return &c;
  }
  if (words[0] == "lease") {
    return UsageError(words.size() == 1 ? "lease needs a subcommand: create, keepalive, revoke, get or list"
                                        : absl::StrFormat("unknown lease subcommand '%s': expected create, "
                                                          "keepalive, revoke, get or list",
                                                          words[1]));
  }
  return UsageError(absl::StrFormat("unknown command '%s'", words[0]));
}

// Checks the command line against the command, then runs it.
absl::Status Dispatch(const Command& cmd, const std::vector<std::string>& words, const std::set<std::string>& given) {
  const std::string name = absl::StrJoin(cmd.words, " ");
  for (const std::string& f : given) {
    if (!IsGlobalFlag(f) && !cmd.flags.count(f)) {
      return UsageError(absl::StrFormat("option --%s does not apply to '%s'", f, name));
    }
  }
  Invocation inv;
  inv.args.assign(words.begin() + static_cast<std::ptrdiff_t>(cmd.words.size()), words.end());
  if (inv.args.size() != cmd.arg_names.size()) {
    return UsageError(absl::StrFormat("'%s' takes %s, got %d argument%s", name,
                                      cmd.arg_names.empty() ? "no arguments" : absl::StrJoin(cmd.arg_names, " "),
                                      inv.args.size(), inv.args.size() == 1 ? "" : "s"));
  }
  absl::StatusOr<client::ClientOptions> options = ClientOptionsFromFlags();
  if (!options.ok()) return options.status();
  inv.options = *std::move(options);
  return cmd.run(inv);
}

bool WantsVersion(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return false;
    if (arg == "--version" || arg == "-version" || (i == 1 && arg == "version")) return true;
  }
  return false;
}

int Main(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    absl::PrintF("%s", kUsage);
    return kExitOk;
  }
  if (WantsVersion(argc, argv)) {
    absl::PrintF("%s", VersionLine("physmemctl"));
    return kExitOk;
  }
  // Unknown options are usage errors before Abseil sees them (it would exit 1).
  absl::StatusOr<std::set<std::string>> given = FlagsGiven(argc, argv);
  const Command* cmd = nullptr;
  absl::Status status = given.status();
  if (status.ok()) {
    const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
    const std::vector<std::string> words(positional.begin() + 1, positional.end());
    absl::StatusOr<const Command*> found = FindCommand(words);
    status = found.status();
    if (found.ok()) {
      cmd = *found;
      status = Dispatch(*cmd, words, *given);
    }
  }
  if (status.ok()) return kExitOk;
  std::fflush(stdout);
  if (IsUsageError(status)) {
    absl::FPrintF(stderr, "physmemctl: %s\n", status.message());
    if (cmd != nullptr) absl::FPrintF(stderr, "usage: physmemctl [global options] %s\n", cmd->synopsis);
    absl::FPrintF(stderr, "(physmemctl --help lists every command and option)\n");
    return kExitUsage;
  }
  absl::FPrintF(stderr, "physmemctl: %s: %s\n", absl::StatusCodeToString(status.code()), status.message());
  return kExitFailed;
}

}  // namespace
}  // namespace physmem::ctl

int main(int argc, char** argv) {
  physmem::SetFlagsUsage("physmemctl", {"clients/physmemctl.cc"});
  absl::SetProgramUsageMessage(physmem::ctl::kUsage);
  return physmem::ctl::Main(argc, argv);
}
