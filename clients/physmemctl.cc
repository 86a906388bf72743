// physmemctl: the command line of physmemd. Subcommands are positional words
// (`physmemctl lease create --ttl_ms=60000`), options are Abseil flags; every numeric argument
// takes decimal or 0x hex; a LEASE argument is a lease's id or its name. Output is line-oriented
// key=value text for scripts, or with -o json the API's reply as proto JSON; /proc-style commands
// (buddyinfo, pagetypeinfo, zoneinfo, extfrag, unusable) print the kernel's formats.
//
// Exit status: 0 success; 1 the daemon (or the connection) refused, with
// "physmemctl: <CODE>: <message>" on stderr; 2 usage error (unknown command or flag, missing or
// malformed argument), with what was wrong and the command's usage on stderr.
// Usage and examples: docs/physmemctl.md.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <grpcpp/client_context.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
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
#include "picture/arena_map_proto.h"
#include "picture/arena_map_render.h"
#include "google/protobuf/util/json_util.h"
#include "server/version.h"

// Global options.
ABSL_FLAG(std::string, target, physmem::client::DefaultTarget(),
          "physmemd's address: unix:///path/to/physmemd.sock, or host:port for its TCP listener");
ABSL_FLAG(std::string, timeout_ms, "",
          "deadline of each call in ms (default: 2000, and 10000 for allocations, which may wait for memory)");
ABSL_FLAG(std::string, tls_ca, "", "TCP: CA (PEM) that signed the daemon's certificate");
ABSL_FLAG(std::string, tls_cert, "", "TCP: client certificate (PEM) for mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "TCP: client private key (PEM) for mutual TLS");
ABSL_FLAG(std::string, output, "", "output format: text (default) or json (the API's reply, proto JSON)");
ABSL_FLAG(std::string, o, "", "short for --output (-o json)");
// Subcommand options.
ABSL_FLAG(std::string, ttl_ms, "", "lease create: time to live in ms");
ABSL_FLAG(std::string, quota, "", "lease create: most pages the lease may hold (default: the daemon's)");
ABSL_FLAG(std::string, name, "", "lease create: a name for humans and metrics, usable instead of the id");
ABSL_FLAG(std::string, duration_ms, "", "lease keepalive: stop after this many ms (default: until killed)");
ABSL_FLAG(std::string, gfp, "GFP_KERNEL", "alloc: GFP mask, by name (GFP_KERNEL|__GFP_DMA32) or number (0xcc0)");
ABSL_FLAG(std::string, order, "", "alloc, free: block order (2^order pages); default 0");
ABSL_FLAG(std::string, key, "", "alloc: idempotency key; free: free the block allocated with this key");
ABSL_FLAG(std::string, form, "pfn", "alloc: pfn (alloc_pages), address (__get_free_pages) or zeroed (get_zeroed_page)");
ABSL_FLAG(std::string, count, "",
          "alloc: this many order-0 pages in one AllocPagesBulk; watch: refreshes before exiting (default: until "
          "killed)");
ABSL_FLAG(std::string, pfn, "", "free: the block's first pfn");
ABSL_FLAG(std::string, addr, "", "free: the block's direct-map kernel virtual address");
ABSL_FLAG(std::string, offset, "", "read, write: bytes from the start of page PFN (default 0)");
ABSL_FLAG(std::string, length, "", "read: bytes to read (default one page of the daemon's target)");
ABSL_FLAG(std::string, out, "",
          "read: write the raw bytes to this file instead of hex to stdout; map: the picture's file (.png or .svg)");
ABSL_FLAG(std::string, hex, "", "write: the bytes to write, as hex (48656c6c6f)");
ABSL_FLAG(std::string, in, "", "write: write this file's bytes");
ABSL_FLAG(std::string, interval_ms, "", "watch: ms between refreshes (default 1000)");
ABSL_FLAG(std::string, max_cells, "",
          "map: most cells in the picture (default 4096); above it a cell covers 2, 4, ... pageblocks");
ABSL_FLAG(std::string, columns, "", "map: cells a row (default 64)");

namespace physmem::ctl {
namespace {

using client::Client;
using client::Lease;
using client::PageHandle;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(usage: physmemctl [global options] COMMAND [ARGS] [options]

LEASE is a lease's id or its name (a number is taken as an id).
Leases:
  lease create --ttl_ms=N [--quota=N] [--name=S]   create a lease, print its id; it lives for its
                                                   TTL unless kept alive
  lease keepalive LEASE [--duration_ms=N]          renew it over the KeepAlive stream until killed
                                                   (or for N ms); prints each renewal
  lease revoke LEASE                               end it now, freeing every page it holds
  lease get LEASE                                  its TTL, quota and holdings
  lease list                                       this identity's leases
Pages (the blocks stay allocated, in the lease, after physmemctl exits):
  alloc LEASE [--gfp=GFP_KERNEL] [--order=N] [--key=K] [--form=pfn|address|zeroed]
  alloc LEASE --count=N [--gfp=GFP_KERNEL]         N order-0 pages in one call (alloc_pages_bulk)
  free LEASE (--pfn=N [--order=N] | --key=K | --addr=0x... [--order=N])
  free LEASE PFN... [--order=N]                    several blocks in one call (FreePagesBulk)
  address LEASE PFN                                page_address()
  kmap LEASE PFN                                   kmap(): map a (highmem) page
  kunmap LEASE PFN
  read LEASE PFN [--offset=N] [--length=N] [--out=FILE]   page contents (hex, or raw to FILE)
  write LEASE PFN [--offset=N] (--hex=HEX | --in=FILE)    write page contents
Machine:
  zoneinfo                                         /proc/zoneinfo
  buddyinfo                                        /proc/buddyinfo, exactly
  extfrag                                          /sys/kernel/debug/extfrag/extfrag_index
  unusable                                         /sys/kernel/debug/extfrag/unusable_index
  pagetypeinfo                                     /proc/pagetypeinfo, exactly (free blocks and pageblocks per migratetype)
  watch [--interval_ms=1000] [--count=N] buddyinfo|zoneinfo|extfrag|unusable|pagetypeinfo
                                                   reprint it every interval, like watch(1)
  target                                           the emulated machine: profile, memory map, arena
  map --out=FILE.png|FILE.svg [--max_cells=4096] [--columns=64]
                                                   a picture of the arena: every pageblock a cell,
                                                   coloured free (by order), allocated (by
                                                   migratetype), mixed or hole; zones and a legend
  validate                                         run the allocator's invariant check
Other:
  completion bash                                  a bash completion script:
                                                   source <(physmemctl completion bash)
  version                                          physmemctl's version and git commit (--version)

Global options:
  --target=ADDR      unix:///path/to/physmemd.sock, or host:port for TCP. Default: $PHYSMEM_TARGET,
                     else unix:///run/physmemd/physmemd.sock if that socket exists, else this
                     user's socket ($XDG_RUNTIME_DIR/physmemd.sock, or /tmp/physmemd-UID/...),
                     where a physmemd started by the same user listens by default
  --timeout_ms=N     deadline of each call (default 2000; allocations 10000)
  --tls_ca=FILE [--tls_cert=FILE --tls_key=FILE]    TLS / mutual TLS for a TCP target
  -o, --output=text|json   json: the API's reply message, one line of proto JSON (lowerCamelCase
                     field names, every field printed, 64-bit numbers as strings)

Numbers are decimal or 0x hex. Exit status: 0 ok; 1 the call failed
("physmemctl: CODE: message" on stderr); 2 usage error.
)";

constexpr const char* kGlobalFlags[] = {"target", "timeout_ms", "tls_ca", "tls_cert", "tls_key"};
// Accepted by every command that prints an API reply (Command::json).
constexpr const char* kOutputFlags[] = {"output", "o"};

bool IsGlobalFlag(const std::string& name) {
  return std::find(std::begin(kGlobalFlags), std::end(kGlobalFlags), name) != std::end(kGlobalFlags);
}
bool IsOutputFlag(const std::string& name) {
  return std::find(std::begin(kOutputFlags), std::end(kOutputFlags), name) != std::end(kOutputFlags);
}
// How the user spelled a flag: -o is the one short flag.
std::string FlagSpelling(const std::string& name) { return name.size() == 1 ? "-" + name : "--" + name; }

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

// Decimal or 0x hex, unsigned, no sign or trailing text; nullopt otherwise (or on overflow).
std::optional<uint64_t> AsNumber(const std::string& text) {
  const bool hex = absl::StartsWithIgnoreCase(text, "0x");
  const char* begin = text.data() + (hex ? 2 : 0);
  const char* end = text.data() + text.size();
  uint64_t v = 0;
  const auto [ptr, ec] = std::from_chars(begin, end, v, hex ? 16 : 10);
  if (begin == end || ec != std::errc() || ptr != end) return std::nullopt;
  return v;
}

// Decimal or 0x hex, unsigned, at most `max`, no sign or trailing text; a usage error otherwise.
absl::StatusOr<uint64_t> ParseNumber(const std::string& text, const std::string& what,
                                     uint64_t max = std::numeric_limits<uint64_t>::max()) {
  const std::optional<uint64_t> v = AsNumber(text);
  if (!v) {
    return UsageError(absl::StrFormat("%s '%s' is not a number: expected decimal (4096) or 0x hex (0x1000)", what,
                                      text));
  }
  if (*v > max) return UsageError(absl::StrFormat("%s %s is too large: at most %d", what, text, max));
  return *v;
}

// A name as error messages quote it: at most 64 bytes (the daemon's limit on lease names), with
// C escapes, so that any bytes the user typed come out readable.
std::string QuoteName(const std::string& name) {
  constexpr size_t kMax = 64;
  return absl::StrCat("\"", absl::CEscape(name.substr(0, kMax)), name.size() > kMax ? "\"..." : "\"");
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
      if (i + 1 >= argc) {
        return UsageError(absl::StrFormat("option %s needs a value: %s=VALUE", FlagSpelling(name),
                                          FlagSpelling(name)));
      }
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

// -o / --output: true for json, false for text.
absl::StatusOr<bool> JsonFromFlags() {
  const std::string o = absl::GetFlag(FLAGS_o), output = absl::GetFlag(FLAGS_output);
  if (!o.empty() && !output.empty() && o != output) {
    return UsageError(absl::StrFormat("-o %s and --output=%s disagree: give one", o, output));
  }
  const std::string format = o.empty() ? output : o;
  if (format.empty() || format == "text") return false;
  if (format == "json") return true;
  return UsageError(absl::StrFormat("output format '%s' is unknown: expected text or json", format));
}

// ---- Formatting ----

std::string Hex(uint64_t v) { return absl::StrFormat("%#x", v); }

// A value for key=value output: as is when it is non-empty and has no blanks, quotes, '=' or
// backslashes; otherwise double-quoted with C escapes.
std::string Quoted(const std::string& s) {
  if (!s.empty() && s.find_first_of(" \t\r\n\"=\\") == std::string::npos) return s;
  return absl::StrCat("\"", absl::CEscape(s), "\"");
}

// One line of proto JSON (protobuf's default names: lowerCamelCase). Every field is printed,
// zeros and empty lists included, so that scripts never meet a missing key; 64-bit integers are
// strings, as the proto3 JSON mapping has them.
std::string Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  std::string out;
  const auto status = google::protobuf::util::MessageToJsonString(m, &out, o);
  // Only a message with an unresolvable Any could fail; ours have none.
  if (!status.ok()) return absl::StrFormat("{\"error\": \"%s\"}", absl::CEscape(std::string(status.message())));
  return out;
}
void PrintJson(const google::protobuf::Message& m) { absl::PrintF("%s\n", Json(m)); }

// One block as `alloc` prints it; the single and the bulk form share the layout.
std::string FormatBlock(uint64_t pfn, uint32_t order, std::string_view zone, uint64_t phys, uint64_t virt,
                        uint64_t arena_offset) {
  return absl::StrFormat("pfn=%s order=%d zone=%s phys=%s virt=%s arena_offset=%s", Hex(pfn), order, zone, Hex(phys),
                         Hex(virt), Hex(arena_offset));
}

std::string FormatAllocation(const PageHandle& p) {
  std::string line = FormatBlock(p.pfn(), p.order(), p.zone(), p.phys_addr(), p.virt_addr(), p.arena_offset());
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

// /proc/zoneinfo: the daemon's text, in the reference kernel's layout (GetZoneInfoResponse.zoneinfo,
// allocator/stats.h FormatZoneinfo()).
std::string FormatZoneinfo(const v1::GetZoneInfoResponse& info) { return info.zoneinfo(); }

// debugfs extfrag/extfrag_index as mm/vmstat.c extfrag_show_print() prints it: for each populated
// zone (extfrag_show walks them with walk_zones_in_node(..., assert_populated = true)),
// "Node %d, zone %8s " then "%2d.%03d " per order, of index / 1000 and index % 1000 (C division,
// so -1000, "a suitable block exists", prints as -1.000), and a newline.
std::string FormatExtfrag(const v1::GetZoneInfoResponse& info) {
  std::string out;
  for (const v1::ZoneInfo& z : info.zones()) {
    if (!z.populated()) continue;
    absl::StrAppendFormat(&out, "Node 0, zone %8s ", z.zone());
    for (const int32_t index : z.fragmentation_index()) {
      absl::StrAppendFormat(&out, "%2d.%03d ", index / 1000, index % 1000);
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

// debugfs extfrag/unusable_index as mm/vmstat.c unusable_show_print() prints it: the same zones
// and line head as extfrag_index, then "%d.%03d " per order (no width: the index is 0..1000).
std::string FormatUnusable(const v1::GetZoneInfoResponse& info) {
  std::string out;
  for (const v1::ZoneInfo& z : info.zones()) {
    if (!z.populated()) continue;
    absl::StrAppendFormat(&out, "Node 0, zone %8s ", z.zone());
    for (const int32_t index : z.unusable_index()) absl::StrAppendFormat(&out, "%d.%03d ", index / 1000, index % 1000);
    absl::StrAppend(&out, "\n");
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

std::chrono::system_clock::time_point DeadlineIn(int64_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
}

// A LEASE argument: an id if it reads as a number (decimal or 0x hex), else a name. Names are
// looked up among the caller's own leases (ListLeases): exactly one must carry it.
absl::StatusOr<uint64_t> ResolveLease(Client& c, const std::string& arg) {
  if (const std::optional<uint64_t> id = AsNumber(arg)) return *id;
  absl::StatusOr<v1::ListLeasesResponse> list = c.ListLeases();
  if (!list.ok()) {
    return absl::Status(list.status().code(), absl::StrFormat("looking up the lease named %s: %s", QuoteName(arg),
                                                              list.status().message()));
  }
  std::vector<uint64_t> ids;
  for (const v1::LeaseInfo& l : list->leases()) {
    if (l.name() == arg) ids.push_back(l.lease_id());
  }
  if (ids.empty()) {
    return absl::NotFoundError(absl::StrFormat(
        "no lease of yours is named %s (a LEASE argument that is not a number is a name; `physmemctl lease list` "
        "shows your leases and their names)",
        QuoteName(arg)));
  }
  if (ids.size() > 1) {
    // Possible when the daemon runs with --nounique_lease_names.
    return absl::FailedPreconditionError(
        absl::StrFormat("%d of your leases are named %s (ids %s): give the id instead", ids.size(), QuoteName(arg),
                        absl::StrJoin(ids, ", ")));
  }
  return ids[0];
}

// What a command gets: its positional arguments (after the command words), the output format and
// a way to connect (after it has checked its arguments, so that usage errors never wait for a
// connection).
struct Invocation {
  std::vector<std::string> args;
  client::ClientOptions options;
  bool json = false;

  absl::StatusOr<std::unique_ptr<Client>> Connect() const { return Client::Connect(options); }
  // A Lease over an existing lease (id or name) that outlives this process: no keep-alive, no
  // revoke.
  absl::StatusOr<std::unique_ptr<Lease>> Attach(const std::string& lease) const {
    absl::StatusOr<std::unique_ptr<Client>> c = Connect();
    if (!c.ok()) return c.status();
    absl::StatusOr<uint64_t> id = ResolveLease(**c, lease);
    if (!id.ok()) return id.status();
    return (*c)->AttachLease(*id);
  }
};

struct Command {
  std::vector<std::string> words;      // "lease", "create"
  std::vector<std::string> arg_names;  // positional arguments, e.g. "LEASE", "PFN"
  std::set<std::string> flags;         // options it takes, besides the global ones
  std::string synopsis;
  std::function<absl::Status(const Invocation&)> run;
  std::string more_args;  // e.g. "PFN...": any number of further positional arguments
  bool json = true;       // takes -o / --output
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
  const uint64_t id = (*lease)->Release();  // the lease outlives us, for its TTL
  if (inv.json) {
    v1::CreateLeaseResponse r;
    r.set_lease_id(id);
    r.set_granted_ttl_ms((*lease)->granted_ttl_ms());
    r.set_page_quota((*lease)->page_quota());
    PrintJson(r);
  } else {
    absl::PrintF("%d\n", id);
  }
  return absl::OkStatus();
}

// Blocks SIGINT and SIGTERM in every thread (call before gRPC starts any), so that only a
// sigtimedwait() on the returned set receives them: long-running commands stop cleanly (exit 0).
sigset_t BlockStopSignals() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  return stop;
}

// True if a stop signal came within `ms`.
bool StopSignalWithin(const sigset_t& stop, int64_t ms) {
  const timespec t = {static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000 * 1000};
  return sigtimedwait(&stop, nullptr, &t) > 0;
}

// Stops on SIGINT/SIGTERM (exit 0), after --duration_ms (exit 0), or when the lease is gone or
// cannot have survived the keep-alive's errors (exit 1).
absl::Status LeaseKeepAlive(const Invocation& inv) {
  const std::string duration_text = absl::GetFlag(FLAGS_duration_ms);
  absl::StatusOr<uint64_t> duration = NumericFlag(duration_text, "duration_ms", 0, uint64_t{1} << 40);
  if (!duration.ok()) return duration.status();
  const auto end = duration_text.empty() ? std::chrono::steady_clock::time_point::max()
                                         : std::chrono::steady_clock::now() + std::chrono::milliseconds(*duration);
  const sigset_t stop = BlockStopSignals();

  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<uint64_t> id = ResolveLease(**c, inv.args[0]);
  if (!id.ok()) return id.status();
  client::AttachOptions o;
  o.keepalive = true;
  o.on_keepalive = [json = inv.json](const v1::KeepAliveResponse& r) {
    if (json) PrintJson(r);
    else absl::PrintF("lease=%d ttl_ms=%d\n", r.lease_id(), r.ttl_ms());
    std::fflush(stdout);
  };
  absl::StatusOr<std::unique_ptr<Lease>> lease = (*c)->AttachLease(*id, o);
  if (!lease.ok()) return lease.status();
  auto failing_since = std::chrono::steady_clock::time_point::max();
  while (std::chrono::steady_clock::now() < end) {
    if (StopSignalWithin(stop, 50)) break;
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
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<uint64_t> id = ResolveLease(**c, inv.args[0]);
  if (!id.ok()) return id.status();
  absl::StatusOr<uint64_t> pages = (*c)->RevokeLease(*id);
  if (!pages.ok()) return pages.status();
  if (inv.json) {
    v1::RevokeLeaseResponse r;
    r.set_pages_freed(*pages);
    PrintJson(r);
  } else {
    absl::PrintF("lease=%d pages_freed=%d\n", *id, *pages);
  }
  return absl::OkStatus();
}

absl::Status LeaseGet(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<uint64_t> id = ResolveLease(**c, inv.args[0]);
  if (!id.ok()) return id.status();
  absl::StatusOr<v1::LeaseInfo> info = (*c)->GetLease(*id);
  if (!info.ok()) return info.status();
  if (inv.json) {
    PrintJson(*info);
    return absl::OkStatus();
  }
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
  if (inv.json) {
    PrintJson(*list);
    return absl::OkStatus();
  }
  for (const v1::LeaseInfo& l : list->leases()) absl::PrintF("%s\n", FormatLease(l));
  return absl::OkStatus();
}

// alloc LEASE --count=N: AllocPagesBulk, which is order 0 only (as the kernel's alloc_pages_bulk)
// and never waits: it may return fewer pages than asked, which is not an error.
absl::Status AllocBulk(const Invocation& inv, const std::string& gfp, uint32_t count) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<uint64_t> id = ResolveLease(**c, inv.args[0]);
  if (!id.ok()) return id.status();
  v1::AllocPagesBulkRequest req;
  req.set_lease_id(*id);
  req.set_gfp(gfp);
  req.set_count(count);
  v1::AllocPagesBulkResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(inv.options.alloc_timeout_ms));
  if (absl::Status s = client::ToAbslStatus((*c)->stub().AllocPagesBulk(&ctx, req, &resp)); !s.ok()) return s;
  if (inv.json) {
    PrintJson(resp);
  } else {
    for (int i = 0; i < resp.pfn_size(); ++i) {
      const v1::Zone zone = i < resp.zone_size() ? resp.zone(i) : v1::ZONE_UNSPECIFIED;
      absl::PrintF("%s\n", FormatBlock(resp.pfn(i), 0, ZoneName(zone),
                                       i < resp.phys_addr_size() ? resp.phys_addr(i) : 0,
                                       i < resp.virt_addr_size() ? resp.virt_addr(i) : 0,
                                       i < resp.arena_offset_size() ? resp.arena_offset(i) : 0));
    }
  }
  if (static_cast<uint32_t>(resp.pfn_size()) < count) {
    std::fflush(stdout);
    absl::FPrintF(stderr,
                  "physmemctl: got %d of the %d pages asked for: the bulk call takes what is free without waiting, "
                  "within the lease's quota and the identity's limits\n",
                  resp.pfn_size(), count);
  }
  return absl::OkStatus();
}

absl::Status Alloc(const Invocation& inv) {
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
  if (const std::string count_text = absl::GetFlag(FLAGS_count); !count_text.empty()) {
    absl::StatusOr<uint64_t> count = ParseNumber(count_text, "--count", std::numeric_limits<uint32_t>::max());
    if (!count.ok()) return count.status();
    if (*count == 0) return UsageError("--count must be at least 1");
    if (*order != 0) return UsageError("--count allocates order-0 pages (alloc_pages_bulk): drop --order");
    if (!key.empty()) return UsageError("--count cannot take --key: keys name single blocks");
    if (form != "pfn") return UsageError("--count allocates in pfn form only: drop --form");
    return AllocBulk(inv, gfp, static_cast<uint32_t>(*count));
  }
  if (form == "zeroed" && !order_text.empty()) {
    return UsageError("--form=zeroed allocates one page (get_zeroed_page() is order 0): drop --order");
  }
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(inv.args[0]);
  if (!lease.ok()) return lease.status();
  const auto o = static_cast<uint32_t>(*order);
  absl::StatusOr<PageHandle> page = form == "address"  ? (*lease)->GetFreePages(gfp, o, key)
                                    : form == "zeroed" ? (*lease)->GetZeroedPage(gfp, key)
                                                       : (*lease)->AllocPages(gfp, o, key);
  if (!page.ok()) return page.status();
  page->Release();  // the block stays in the lease after we exit
  if (inv.json) PrintJson(page->allocation());
  else absl::PrintF("%s\n", FormatAllocation(*page));
  return absl::OkStatus();
}

// free LEASE PFN...: FreePagesBulk, every block of order --order. Prints what it freed; the
// blocks the daemon refused (each refusal changed nothing) make it exit 1, with the first
// refusal's code and every refused pfn in the message.
absl::Status FreeBulk(const Invocation& inv, const std::vector<uint64_t>& pfns, uint32_t order) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<uint64_t> id = ResolveLease(**c, inv.args[0]);
  if (!id.ok()) return id.status();
  v1::FreePagesBulkRequest req;
  req.set_lease_id(*id);
  for (const uint64_t pfn : pfns) {
    req.add_pfn(pfn);
    req.add_order(order);
  }
  v1::FreePagesBulkResponse resp;
  grpc::ClientContext ctx;
  // Bulk calls carry thousands of blocks: the allocations' longer deadline, as the client's own.
  ctx.set_deadline(DeadlineIn(inv.options.alloc_timeout_ms));
  if (absl::Status s = client::ToAbslStatus((*c)->stub().FreePagesBulk(&ctx, req, &resp)); !s.ok()) return s;
  if (inv.json) PrintJson(resp);
  else absl::PrintF("pages_freed=%d blocks_freed=%d\n", resp.pages_freed(), resp.blocks_freed());
  if (resp.refused().empty()) return absl::OkStatus();
  std::vector<std::string> refusals;
  for (const v1::FreeResult& r : resp.refused()) {
    refusals.push_back(absl::StrFormat("pfn %s: %s: %s", Hex(r.pfn()),
                                       absl::StatusCodeToString(static_cast<absl::StatusCode>(r.code())),
                                       r.message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(resp.refused(0).code()),
                      absl::StrFormat("%d of %d blocks not freed (each refusal changed nothing): %s",
                                      resp.refused_size(), pfns.size(), absl::StrJoin(refusals, "; ")));
}

absl::Status Free(const Invocation& inv) {
  const std::string pfn_text = absl::GetFlag(FLAGS_pfn), key = absl::GetFlag(FLAGS_key),
                    addr_text = absl::GetFlag(FLAGS_addr), order_text = absl::GetFlag(FLAGS_order);
  const int selectors = int{!pfn_text.empty()} + int{!key.empty()} + int{!addr_text.empty()};
  absl::StatusOr<uint64_t> order = NumericFlag(order_text, "order", 0, std::numeric_limits<uint32_t>::max());
  if (!order.ok()) return order.status();
  const auto o = static_cast<uint32_t>(*order);
  if (inv.args.size() > 1) {
    if (selectors != 0) {
      return UsageError("give the blocks either as PFN arguments or with one of --pfn, --key, --addr, not both");
    }
    std::vector<uint64_t> pfns;
    for (size_t i = 1; i < inv.args.size(); ++i) {
      absl::StatusOr<uint64_t> pfn = ParseNumber(inv.args[i], "pfn");
      if (!pfn.ok()) return pfn.status();
      pfns.push_back(*pfn);
    }
    return FreeBulk(inv, pfns, o);
  }
  if (selectors != 1) {
    return UsageError("free needs PFN arguments, or exactly one of --pfn=N (with --order=N), --key=K or --addr=0x...");
  }
  if (!key.empty() && !order_text.empty()) return UsageError("--key names the block, order included: drop --order");
  absl::StatusOr<uint64_t> pfn = NumericFlag(pfn_text, "pfn", 0, std::numeric_limits<uint64_t>::max());
  if (!pfn.ok()) return pfn.status();
  absl::StatusOr<uint64_t> addr = NumericFlag(addr_text, "addr", 0, std::numeric_limits<uint64_t>::max());
  if (!addr.ok()) return addr.status();
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(inv.args[0]);
  if (!lease.ok()) return lease.status();
  absl::StatusOr<uint64_t> freed = !key.empty()       ? (*lease)->FreePagesByKey(key)
                                   : !pfn_text.empty() ? (*lease)->FreePages(*pfn, o)
                                                       : (*lease)->FreePagesByAddress(*addr, o);
  if (!freed.ok()) return freed.status();
  if (inv.json) {
    v1::FreePagesResponse r;
    r.set_pages_freed(*freed);
    PrintJson(r);
  } else {
    absl::PrintF("pages_freed=%d\n", *freed);
  }
  return absl::OkStatus();
}

// The LEASE PFN arguments of address, kmap, kunmap, read and write (the lease is resolved when
// the command connects).
absl::StatusOr<uint64_t> ParsePfnArg(const Invocation& inv) { return ParseNumber(inv.args[1], "pfn"); }

// --offset of read and write: bytes from the start of the block's head page (default 0).
absl::StatusOr<uint64_t> OffsetFlag() {
  return NumericFlag(absl::GetFlag(FLAGS_offset), "offset", 0, std::numeric_limits<uint64_t>::max());
}

enum class PfnOp { kAddress, kKmap, kKunmap };

// address / kmap / kunmap LEASE PFN.
absl::Status PfnCommand(const Invocation& inv, PfnOp op) {
  absl::StatusOr<uint64_t> pfn = ParsePfnArg(inv);
  if (!pfn.ok()) return pfn.status();
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(inv.args[0]);
  if (!lease.ok()) return lease.status();
  if (op == PfnOp::kKunmap) {
    if (absl::Status s = (*lease)->Kunmap(*pfn); !s.ok()) return s;
    if (inv.json) PrintJson(v1::KunmapResponse());
    else absl::PrintF("pfn=%s unmapped\n", Hex(*pfn));
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> virt = op == PfnOp::kKmap ? (*lease)->Kmap(*pfn) : (*lease)->PageAddress(*pfn);
  if (!virt.ok()) return virt.status();
  if (inv.json) {
    // KmapResponse and PageAddressResponse are both {virt_addr}.
    v1::KmapResponse kmap;
    v1::PageAddressResponse address;
    kmap.set_virt_addr(*virt);
    address.set_virt_addr(*virt);
    PrintJson(op == PfnOp::kKmap ? static_cast<const google::protobuf::Message&>(kmap) : address);
  } else {
    absl::PrintF("pfn=%s virt=%s\n", Hex(*pfn), Hex(*virt));
  }
  return absl::OkStatus();
}

// The page size of the daemon's target (GetTarget).
absl::StatusOr<uint64_t> TargetPageSize(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::GetTargetResponse> t = (*c)->GetTarget();
  if (!t.ok()) return t.status();
  return uint64_t{t->profile().page_size()};
}

// read LEASE PFN: ReadPages, printed as hex (or written raw to --out).
absl::Status ReadCommand(const Invocation& inv) {
  absl::StatusOr<uint64_t> pfn = ParsePfnArg(inv);
  if (!pfn.ok()) return pfn.status();
  absl::StatusOr<uint64_t> offset = OffsetFlag();
  if (!offset.ok()) return offset.status();
  // Without --length, one page of the daemon's target (8 KiB on alpha, 64 KiB on arm64 64K).
  uint64_t page_size = 0;
  if (absl::GetFlag(FLAGS_length).empty()) {
    absl::StatusOr<uint64_t> size = TargetPageSize(inv);
    if (!size.ok()) return size.status();
    page_size = *size;
  }
  absl::StatusOr<uint64_t> length =
      NumericFlag(absl::GetFlag(FLAGS_length), "length", page_size, std::numeric_limits<uint64_t>::max());
  if (!length.ok()) return length.status();
  const std::string out = absl::GetFlag(FLAGS_out);
  if (inv.json && !out.empty()) {
    return UsageError("--out writes the raw bytes to a file, -o json prints them (base64) in the reply: pick one");
  }
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(inv.args[0]);
  if (!lease.ok()) return lease.status();
  absl::StatusOr<std::string> data = (*lease)->ReadPages(*pfn, *offset, *length);
  if (!data.ok()) return data.status();
  if (inv.json) {
    v1::ReadPagesResponse r;
    r.set_data(*data);
    PrintJson(r);
    return absl::OkStatus();
  }
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
  absl::StatusOr<uint64_t> pfn = ParsePfnArg(inv);
  if (!pfn.ok()) return pfn.status();
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
  absl::StatusOr<std::unique_ptr<Lease>> lease = inv.Attach(inv.args[0]);
  if (!lease.ok()) return lease.status();
  if (absl::Status s = (*lease)->WritePages(*pfn, *offset, data); !s.ok()) return s;
  if (inv.json) {
    v1::WritePagesResponse r;
    r.set_bytes_written(data.size());
    PrintJson(r);
  } else {
    absl::PrintF("bytes_written=%d\n", data.size());
  }
  return absl::OkStatus();
}

// The views of GetZoneInfo: zoneinfo, buddyinfo and pagetypeinfo (the daemon's exact
// /proc/buddyinfo and /proc/pagetypeinfo texts) and extfrag and unusable. With -o json every view
// is the whole GetZoneInfoResponse.
enum class ZoneView { kZoneinfo, kBuddyinfo, kExtfrag, kUnusable, kPagetypeinfo };

std::string RenderZoneView(const v1::GetZoneInfoResponse& info, ZoneView view, bool json) {
  if (json) return Json(info) + "\n";
  switch (view) {
    case ZoneView::kBuddyinfo: return info.buddyinfo();
    case ZoneView::kExtfrag: return FormatExtfrag(info);
    case ZoneView::kUnusable: return FormatUnusable(info);
    case ZoneView::kPagetypeinfo: return info.pagetypeinfo();
    case ZoneView::kZoneinfo: break;
  }
  return FormatZoneinfo(info);
}

absl::Status ZoneinfoCommand(const Invocation& inv, ZoneView view) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::GetZoneInfoResponse> info = (*c)->GetZoneInfo();
  if (!info.ok()) return info.status();
  absl::PrintF("%s", RenderZoneView(*info, view, inv.json));
  return absl::OkStatus();
}

// watch VIEW: like `watch -n1 cat /proc/buddyinfo`. On a terminal each refresh clears the screen
// and starts with a header; otherwise (a pipe, a file) the refreshes follow each other, text ones
// separated by an empty line, JSON ones one per line. Stops on SIGINT/SIGTERM (exit 0), after
// --count refreshes, or at the first failed call (exit 1).
absl::Status WatchCommand(const Invocation& inv) {
  const std::string& view_name = inv.args[0];
  ZoneView view;
  if (view_name == "buddyinfo") view = ZoneView::kBuddyinfo;
  else if (view_name == "zoneinfo") view = ZoneView::kZoneinfo;
  else if (view_name == "extfrag") view = ZoneView::kExtfrag;
  else if (view_name == "unusable") view = ZoneView::kUnusable;
  else if (view_name == "pagetypeinfo") view = ZoneView::kPagetypeinfo;
  else return UsageError(absl::StrFormat(
      "watch shows buddyinfo, zoneinfo, extfrag, unusable or pagetypeinfo, not '%s'", view_name));
  absl::StatusOr<uint64_t> interval =
      NumericFlag(absl::GetFlag(FLAGS_interval_ms), "interval_ms", 1000, uint64_t{1} << 40);
  if (!interval.ok()) return interval.status();
  if (*interval == 0) return UsageError("--interval_ms must be at least 1");
  absl::StatusOr<uint64_t> count = NumericFlag(absl::GetFlag(FLAGS_count), "count", 0, uint64_t{1} << 40);
  if (!count.ok()) return count.status();
  if (!absl::GetFlag(FLAGS_count).empty() && *count == 0) return UsageError("--count must be at least 1");
  const sigset_t stop = BlockStopSignals();
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  for (uint64_t n = 1;; ++n) {
    absl::StatusOr<v1::GetZoneInfoResponse> info = (*c)->GetZoneInfo();
    if (!info.ok()) return info.status();
    std::string screen;
    if (tty) {
      // Cursor home, clear screen; then watch(1)'s header.
      const std::time_t now = std::time(nullptr);
      char when[64];
      std::strftime(when, sizeof when, "%a %b %e %H:%M:%S %Y", std::localtime(&now));
      screen = absl::StrFormat("\033[H\033[2JEvery %dms: physmemctl %s    %s\n\n", *interval, view_name, when);
    } else if (n > 1 && !inv.json) {
      screen = "\n";
    }
    absl::StrAppend(&screen, RenderZoneView(*info, view, inv.json));
    absl::PrintF("%s", screen);
    std::fflush(stdout);
    if (*count != 0 && n >= *count) break;
    if (StopSignalWithin(stop, static_cast<int64_t>(*interval))) break;
  }
  return absl::OkStatus();
}

absl::Status TargetCommand(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::GetTargetResponse> t = (*c)->GetTarget();
  if (!t.ok()) return t.status();
  if (inv.json) PrintJson(*t);
  else absl::PrintF("%s", FormatTarget(*t));
  return absl::OkStatus();
}

// map: the GetArenaMap snapshot drawn by picture/arena_map_render.h into --out (PNG or SVG, by the
// file's extension). With -o json, the RPC's reply instead (and the file, if --out is given).
absl::Status MapCommand(const Invocation& inv) {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty() && !inv.json) return UsageError("map needs --out=FILE.png or --out=FILE.svg");
  if (!out.empty() && !absl::EndsWithIgnoreCase(out, ".png") && !absl::EndsWithIgnoreCase(out, ".svg")) {
    return UsageError(absl::StrFormat("--out=%s: name the picture .png or .svg", absl::CHexEscape(out.substr(0, 200))));
  }
  RenderOptions ro;
  absl::StatusOr<uint64_t> max_cells = NumericFlag(absl::GetFlag(FLAGS_max_cells), "max_cells", ro.max_cells, 65536);
  if (!max_cells.ok()) return max_cells.status();
  absl::StatusOr<uint64_t> columns = NumericFlag(absl::GetFlag(FLAGS_columns), "columns", ro.columns, 1024);
  if (!columns.ok()) return columns.status();
  if (*max_cells == 0 || *columns == 0) return UsageError("--max_cells and --columns must be at least 1");
  ro.max_cells = static_cast<uint32_t>(*max_cells);
  ro.columns = static_cast<int>(*columns);
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  v1::GetArenaMapRequest req;
  v1::GetArenaMapResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(inv.options.call_timeout_ms));
  if (absl::Status s = client::ToAbslStatus((*c)->stub().GetArenaMap(&ctx, req, &resp)); !s.ok()) return s;
  if (inv.json) PrintJson(resp);
  if (out.empty()) return absl::OkStatus();
  absl::StatusOr<ArenaMap> map = ArenaMapFromProto(resp);
  if (!map.ok()) return map.status();
  absl::StatusOr<MapLayout> layout = LayoutArenaMap(*map, ro);
  if (!layout.ok()) return layout.status();
  if (absl::Status s = WriteArenaMapFile(*layout, out); !s.ok()) return s;
  if (!inv.json) {
    size_t cells = 0;
    for (const MapLayout::ZoneBand& z : layout->zones) cells += z.cells.size();
    absl::PrintF("wrote %s: %dx%d pixels, %d cells of %d pageblock%s\n", out, layout->width, layout->height, cells,
                 layout->pageblocks_per_cell, layout->pageblocks_per_cell == 1 ? "" : "s");
  }
  return absl::OkStatus();
}

absl::Status ValidateCommand(const Invocation& inv) {
  absl::StatusOr<std::unique_ptr<Client>> c = inv.Connect();
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::ValidateResponse> v = (*c)->Validate();
  if (!v.ok()) return v.status();
  if (inv.json) {
    PrintJson(*v);
  } else {
    absl::PrintF("total_pages=%d free_pages=%d allocated_pages=%d leases=%d lease_pages=%d\n", v->total_pages(),
                 v->free_pages(), v->allocated_pages(), v->leases(), v->lease_pages());
  }
  if (v->lease_pages() != v->allocated_pages()) {
    return absl::InternalError(absl::StrFormat(
        "the leases hold %d pages but the allocator counts %d allocated (expected equal; an allocation or free in "
        "flight during the check can cause this, so re-run before reporting)",
        v->lease_pages(), v->allocated_pages()));
  }
  return absl::OkStatus();
}

absl::Status CompletionCommand(const Invocation& inv);

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {{"lease", "create"}, {}, {"ttl_ms", "quota", "name"}, "lease create --ttl_ms=N [--quota=N] [--name=S]",
       LeaseCreate},
      {{"lease", "keepalive"}, {"LEASE"}, {"duration_ms"}, "lease keepalive LEASE [--duration_ms=N]",
       LeaseKeepAlive},
      {{"lease", "revoke"}, {"LEASE"}, {}, "lease revoke LEASE", LeaseRevoke},
      {{"lease", "get"}, {"LEASE"}, {}, "lease get LEASE", LeaseGet},
      {{"lease", "list"}, {}, {}, "lease list", LeaseList},
      {{"alloc"}, {"LEASE"}, {"gfp", "order", "key", "form", "count"},
       "alloc LEASE [--gfp=GFP_KERNEL] [--order=N] [--key=K] [--form=pfn|address|zeroed] | alloc LEASE --count=N "
       "[--gfp=GFP_KERNEL]",
       Alloc},
      {{"free"}, {"LEASE"}, {"pfn", "order", "key", "addr"},
       "free LEASE (PFN... [--order=N] | --pfn=N [--order=N] | --key=K | --addr=0x... [--order=N])", Free, "PFN..."},
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
      {{"zoneinfo"}, {}, {}, "zoneinfo",
       [](const Invocation& inv) { return ZoneinfoCommand(inv, ZoneView::kZoneinfo); }},
      {{"buddyinfo"}, {}, {}, "buddyinfo",
       [](const Invocation& inv) { return ZoneinfoCommand(inv, ZoneView::kBuddyinfo); }},
      {{"extfrag"}, {}, {}, "extfrag", [](const Invocation& inv) { return ZoneinfoCommand(inv, ZoneView::kExtfrag); }},
      {{"unusable"}, {}, {}, "unusable",
       [](const Invocation& inv) { return ZoneinfoCommand(inv, ZoneView::kUnusable); }},
      {{"pagetypeinfo"}, {}, {}, "pagetypeinfo",
       [](const Invocation& inv) { return ZoneinfoCommand(inv, ZoneView::kPagetypeinfo); }},
      {{"watch"}, {"VIEW"}, {"interval_ms", "count"},
       "watch [--interval_ms=1000] [--count=N] buddyinfo|zoneinfo|extfrag|unusable|pagetypeinfo", WatchCommand},
      {{"target"}, {}, {}, "target", TargetCommand},
      {{"map"}, {}, {"out", "max_cells", "columns"}, "map --out=FILE.png|FILE.svg [--max_cells=4096] [--columns=64]",
       MapCommand},
      {{"validate"}, {}, {}, "validate", ValidateCommand},
      {{"completion"}, {"SHELL"}, {}, "completion bash", CompletionCommand, "", /*json=*/false},
  };
  return commands;
}

// ---- completion ----

// What a positional argument completes to, by its name in Command::arg_names.
std::string ArgCandidates(const std::string& arg_name) {
  if (arg_name == "LEASE") return "$(_physmemctl_leases)";
  if (arg_name == "VIEW") return "buddyinfo zoneinfo extfrag unusable pagetypeinfo";
  if (arg_name == "SHELL") return "bash";
  return "";
}

// The bash completion script, generated from Commands() so that it never falls behind them.
std::string BashCompletion() {
  std::vector<std::string> top = {"lease"}, lease_subs;
  std::string options_case, args_case;
  std::string global = "--target= --timeout_ms= --tls_ca= --tls_cert= --tls_key= --help --version";
  for (const Command& c : Commands()) {
    if (c.words[0] == "lease") lease_subs.push_back(c.words[1]);
    else top.push_back(c.words[0]);
    const std::string key = absl::StrJoin(c.words, " ");
    std::vector<std::string> opts;
    for (const std::string& f : c.flags) opts.push_back("--" + f + "=");
    if (c.json) opts.insert(opts.end(), {"-o", "--output="});
    absl::StrAppendFormat(&options_case, "    '%s') opts='%s' ;;\n", key, absl::StrJoin(opts, " "));
    for (size_t i = 0; i < c.arg_names.size(); ++i) {
      const std::string candidates = ArgCandidates(c.arg_names[i]);
      if (!candidates.empty()) absl::StrAppendFormat(&args_case, "    '%s:%d') words=\"%s\" ;;\n", key, i, candidates);
    }
  }
  top.insert(top.end(), {"version", "help"});
  return absl::StrFormat(R"(# bash completion for physmemctl, generated by `physmemctl completion bash`.
# Load it with: source <(physmemctl completion bash)
# (or save it as ~/.local/share/bash-completion/completions/physmemctl).

# The ids and names of your leases, asked of the daemon the command line names (--target), or the
# default one; nothing if none answers within a second. Quoted names (blanks, quotes) are left out.
_physmemctl_leases() {
  local -a target=()
  if [[ $COMP_LINE =~ --target[=\ ]+([^\ ]+) ]]; then target=("--target=${BASH_REMATCH[1]}"); fi
  "${COMP_WORDS[0]}" "${target[@]}" --timeout_ms=1000 lease list 2>/dev/null |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^(lease|name)=[^"]/) { sub(/^[a-z]+=/, "", $i); print $i } }'
}

# Whether option word $1 takes a value (every physmemctl option but help and version does).
_physmemctl_takes_value() {
  case $1 in
    --help|-help|-h|--version|-version|--) return 1 ;;
    -*=*) return 1 ;;  # --name=value in one word (a COMP_WORDBREAKS without '=')
    -*) return 0 ;;
  esac
  return 1
}

_physmemctl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} opt=
  COMPREPLY=()
  # Options are --name=value; bash splits words at '=' and ':' (COMP_WORDBREAKS), so a value being
  # typed follows a '=' word, or the option word itself (--name value, -o json).
  if [[ $cur == = ]]; then
    opt=$prev cur=
  elif [[ $prev == = ]]; then
    opt=${COMP_WORDS[COMP_CWORD-2]}
  elif _physmemctl_takes_value "$prev" && [[ $cur != -* ]]; then
    opt=$prev
  fi
  if [[ -n $opt ]]; then
    case ${opt##*-} in
      o|output) COMPREPLY=($(compgen -W "text json" -- "$cur")) ;;
      form) COMPREPLY=($(compgen -W "pfn address zeroed" -- "$cur")) ;;
      gfp) COMPREPLY=($(compgen -W "GFP_KERNEL GFP_ATOMIC GFP_NOWAIT GFP_NOIO GFP_NOFS GFP_USER GFP_DMA GFP_DMA32
                                    GFP_HIGHUSER GFP_HIGHUSER_MOVABLE" -- "$cur")) ;;
      in|out|tls_ca|tls_cert|tls_key) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
    return
  fi
  # The positional words before the cursor: options and their values left out.
  local -a pos=()
  local i=1 w
  while (( i < COMP_CWORD )); do
    w=${COMP_WORDS[i]}
    if [[ $w == -* ]]; then
      if [[ ${COMP_WORDS[i+1]} == = ]]; then
        (( i += 3 ))
      elif _physmemctl_takes_value "$w"; then
        (( i += 2 ))
      else
        (( i += 1 ))
      fi
      # A value split at ':' (unix:///path, host:port) goes on in ':' and the word after it.
      while [[ ${COMP_WORDS[i]} == : ]]; do (( i += 2 )); done
      continue
    fi
    pos+=("$w")
    (( i += 1 ))
  done
  local key n words=
  if [[ ${pos[0]} == lease ]]; then
    key="lease ${pos[1]}" n=$(( ${#pos[@]} - 2 ))
  else
    key=${pos[0]} n=$(( ${#pos[@]} - 1 ))
  fi
  if [[ $cur == -* ]]; then
    local opts=
    case $key in
%s    esac
    COMPREPLY=($(compgen -W "$opts %s" -- "$cur"))
    [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace
    return
  fi
  if (( ${#pos[@]} == 0 )); then
    words="%s"
  elif [[ ${pos[0]} == lease ]] && (( ${#pos[@]} == 1 )); then
    words="%s"
  else
    case "$key:$n" in
%s    esac
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}

complete -F _physmemctl physmemctl
)",
                         options_case, global, absl::StrJoin(top, " "), absl::StrJoin(lease_subs, " "), args_case);
}

absl::Status CompletionCommand(const Invocation& inv) {
  if (inv.args[0] != "bash") {
    return UsageError(absl::StrFormat("completion scripts exist for bash only, not '%s'", inv.args[0]));
  }
  absl::PrintF("%s", BashCompletion());
  return absl::OkStatus();
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
    if (!IsGlobalFlag(f) && !cmd.flags.count(f) && !(cmd.json && IsOutputFlag(f))) {
      return UsageError(absl::StrFormat("option %s does not apply to '%s'", FlagSpelling(f), name));
    }
  }
  Invocation inv;
  inv.args.assign(words.begin() + static_cast<std::ptrdiff_t>(cmd.words.size()), words.end());
  const bool count_ok = cmd.more_args.empty() ? inv.args.size() == cmd.arg_names.size()
                                              : inv.args.size() >= cmd.arg_names.size();
  if (!count_ok) {
    std::vector<std::string> takes = cmd.arg_names;
    if (!cmd.more_args.empty()) takes.push_back("[" + cmd.more_args + "]");
    return UsageError(absl::StrFormat("'%s' takes %s, got %d argument%s", name,
                                      takes.empty() ? "no arguments" : absl::StrJoin(takes, " "), inv.args.size(),
                                      inv.args.size() == 1 ? "" : "s"));
  }
  for (size_t i = 0; i < cmd.arg_names.size(); ++i) {
    if (cmd.arg_names[i] == "LEASE" && inv.args[i].empty()) {
      return UsageError("LEASE is empty: give the lease's id or its name");
    }
  }
  absl::StatusOr<bool> json = JsonFromFlags();
  if (!json.ok()) return json.status();
  inv.json = *json;
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
