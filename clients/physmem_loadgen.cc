// physmem_loadgen: load for physmemd that ghz cannot express, because ghz sends one call shape
// per run and cannot feed a reply into the next request: alloc then free of the returned pfn,
// bursts (hold N blocks, then free them), lease churn (create, allocate, revoke), and a mix.
//
// Its report is ghz's JSON (runner/reporter.go's Report: count, total, average, fastest, slowest,
// rps, errorDistribution, statusCodeDistribution, latencyDistribution, histogram, details), with
// the same field names, types and units (durations are Go time.Duration values: integer
// nanoseconds; histogram marks are seconds), so the tooling that reads ghz reports reads these.
// Every RPC is one call in the report, as ghz counts them.
//
//   physmem_loadgen --target=unix:///run/physmemd/physmemd.sock --scenario=alloc-free
//       --concurrency=8 --duration=10s --orders=0,1,3 --format=json --output=report.json
//
// Leaves nothing behind: every block it allocated is freed (or its lease revoked) before it
// exits. Exit status: 0 the run happened (errors are in the report), 1 could not connect or
// set up, 2 usage error. Usage: docs/deploy.md ("Load generator").
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/page_cache.h"
#include "clients/physmem_client.h"
#include "server/version.h"

ABSL_FLAG(std::string, target, physmem::client::DefaultTarget(),
          "physmemd's address: unix:///path/to/physmemd.sock, or host:port for its TCP listener");
ABSL_FLAG(std::string, tls_ca, "", "TCP: CA (PEM) that signed the daemon's certificate");
ABSL_FLAG(std::string, tls_cert, "", "TCP: client certificate (PEM) for mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "TCP: client private key (PEM) for mutual TLS");
ABSL_FLAG(std::string, scenario, "alloc-free", "alloc-free, burst, lease-churn or mixed");
ABSL_FLAG(int32_t, concurrency, 4, "worker threads, each with its own lease (ghz's -c)");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "how long to run (e.g. 10s); with neither --duration nor --total: 10s (ghz's -z)");
ABSL_FLAG(uint64_t, total, 0, "at most this many calls, frees included (ghz's -n); 0: no limit");
ABSL_FLAG(std::string, orders, "0", "block orders to allocate, comma separated, chosen at random (0,1,3)");
ABSL_FLAG(std::string, gfp, "GFP_KERNEL", "GFP mask of every allocation (GFP_KERNEL|__GFP_DMA32)");
ABSL_FLAG(int32_t, burst, 64, "burst: blocks held before freeing them all; mixed: bulk page count");
ABSL_FLAG(int32_t, allocs_per_lease, 4, "lease-churn: allocations between CreateLease and RevokeLease");
ABSL_FLAG(int64_t, lease_ttl_ms, 10000, "TTL of the leases the workers create");
ABSL_FLAG(int64_t, timeout_ms, 10000, "deadline of each call, allocating or not (ghz's -t)");
ABSL_FLAG(std::string, format, "summary", "report format: summary, json or pretty (indented json)");
ABSL_FLAG(std::string, output, "", "report file ('' = stdout); with json/pretty the summary also goes to stderr");
ABSL_FLAG(std::string, name, "", "report name (ghz's --name)");
ABSL_FLAG(bool, details, false,
          "include every call's record in the JSON (ghz's 'details'), up to 1,000,000 (about 1 MB a second of "
          "load, so only when asked)");
ABSL_FLAG(uint64_t, seed, 0, "random seed (0: from the clock)");
ABSL_FLAG(bool, client_cache, false,
          "alloc-free, burst and mixed's alloc-free part go through a client-side page cache per worker "
          "(clients/page_cache.h): each allocation and free is one 'call' in the report, most of them answered "
          "without an RPC; compare with the same run without the flag. Without --total, at most 5,000,000 calls "
          "(a call's record takes ~70 bytes, and cached calls come by the million a second)");

namespace physmem::loadgen {
namespace {

using client::Client;
using client::CachedPage;
using client::Lease;
using client::PageCache;
using client::PageHandle;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxDetails = 1000000;  // ghz's maxResult

// One finished call, as ghz's callResult: status name, error text ("" when OK), latency.
struct CallResult {
  absl::Time timestamp;   // when it ended (ghz: the stats.End time)
  int64_t latency_ns;
  absl::StatusCode code;
  std::string error;
};

// ghz names codes with grpc-go's codes.Code.String(): "OK", "ResourceExhausted", ...
std::string GoCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "Canceled";
    case absl::StatusCode::kUnknown: return "Unknown";
    case absl::StatusCode::kInvalidArgument: return "InvalidArgument";
    case absl::StatusCode::kDeadlineExceeded: return "DeadlineExceeded";
    case absl::StatusCode::kNotFound: return "NotFound";
    case absl::StatusCode::kAlreadyExists: return "AlreadyExists";
    case absl::StatusCode::kPermissionDenied: return "PermissionDenied";
    case absl::StatusCode::kResourceExhausted: return "ResourceExhausted";
    case absl::StatusCode::kFailedPrecondition: return "FailedPrecondition";
    case absl::StatusCode::kAborted: return "Aborted";
    case absl::StatusCode::kOutOfRange: return "OutOfRange";
    case absl::StatusCode::kUnimplemented: return "Unimplemented";
    case absl::StatusCode::kInternal: return "Internal";
    case absl::StatusCode::kUnavailable: return "Unavailable";
    case absl::StatusCode::kDataLoss: return "DataLoss";
    case absl::StatusCode::kUnauthenticated: return "Unauthenticated";
    default: return absl::StrCat("Code(", static_cast<int>(code), ")");
  }
}

// The results of every worker. Each worker appends to its own vector; they are merged at the end.
struct Results {
  std::vector<std::vector<CallResult>> per_worker;
};

struct Config {
  std::string scenario;
  int concurrency = 4;
  absl::Duration duration;
  uint64_t total = 0;
  std::vector<uint32_t> orders;
  std::string gfp;
  int burst = 64;
  int allocs_per_lease = 4;
  int64_t lease_ttl_ms = 10000;
  bool client_cache = false;
  gfp_t gfp_mask = 0;  // --gfp as a number, for the page cache
};

// Decides when to stop: after the duration, or before --total would be exceeded. Work reserves
// its calls before it starts, the frees that undo it included, so a run never leaves blocks
// behind to stay within --total, and count <= total (equal unless a call that was reserved did
// not happen, e.g. the free of a failed allocation, or the last iteration did not fit).
class StopCondition {
 public:
  StopCondition(absl::Duration duration, uint64_t total)
      : deadline_(duration > absl::ZeroDuration() ? Clock::now() + absl::ToChronoNanoseconds(duration)
                                                  : Clock::time_point::max()),
        total_(total) {}
  // Reserves `n` calls: false once the duration has passed or fewer than `n` of --total remain.
  bool Take(uint64_t n) {
    if (Clock::now() >= deadline_) {
      timed_out_ = true;
      return false;
    }
    if (total_ == 0) return true;
    uint64_t started = started_.load();
    do {
      if (started + n > total_) return false;
    } while (!started_.compare_exchange_weak(started, started + n));
    return true;
  }
  bool timed_out() const { return timed_out_; }

 private:
  const Clock::time_point deadline_;
  const uint64_t total_;
  std::atomic<uint64_t> started_{0};
  std::atomic<bool> timed_out_{false};
};

// A worker: one lease, one random stream, one result vector. Every RPC it makes goes through
// Timed(), which records it.
class Worker {
 public:
  // Lease names are unique per identity (the daemon refuses a second live lease with the same
  // name), so each worker's carry the process id and the worker's number: two load generators of
  // one user can run at once.
  Worker(Client& client, const Config& config, StopCondition& stop, std::vector<CallResult>& out, uint64_t seed,
         int index)
      : client_(client),
        config_(config),
        stop_(stop),
        out_(out),
        rng_(seed),
        name_(absl::StrFormat("loadgen-%d-%d", ::getpid(), index)) {}

  absl::Status Run() {
    absl::StatusOr<std::unique_ptr<Lease>> lease =
        client_.CreateLease({.ttl_ms = config_.lease_ttl_ms, .name = name_});
    if (!lease.ok()) return lease.status();
    lease_ = *std::move(lease);
    if (config_.client_cache) {
      absl::StatusOr<std::unique_ptr<PageCache>> cache = PageCache::Create(*lease_, {});
      if (!cache.ok()) return cache.status();
      cache_ = *std::move(cache);
    }
    // Each iteration returns false when it could not start (the run is over).
    while (config_.scenario == "alloc-free" ? AllocFree()
           : config_.scenario == "burst"    ? Burst()
           : config_.scenario == "lease-churn" ? LeaseChurn()
                                              : Mixed()) {
    }
    // The worker's lease ends with it (its destructor revokes it): anything still held is freed.
    return absl::OkStatus();
  }

 private:
  // Makes the call, records its latency and status, and returns its result. Callers that ignore
  // the result use Record(): the outcome is in the report.
  template <typename F>
  void Record(F&& call) {
    (void)Timed(std::forward<F>(call));
  }
  template <typename F>
  auto Timed(F&& call) {
    const Clock::time_point start = Clock::now();
    auto result = call();
    const Clock::time_point end = Clock::now();
    absl::Status status;
    if constexpr (std::is_same_v<decltype(result), absl::Status>) {
      status = result;
    } else {
      status = result.status();
    }
    out_.push_back({absl::Now(), std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count(),
                    status.code(),
                    status.ok() ? "" : absl::StrCat("rpc error: code = ", GoCodeName(status.code()),
                                                    " desc = ", status.message())});
    return result;
  }

  uint32_t PickOrder() {
    return config_.orders[std::uniform_int_distribution<size_t>(0, config_.orders.size() - 1)(rng_)];
  }

  // AllocPages, then FreePages of the pfn it returned (or the page cache's Alloc and Free).
  bool AllocFree() {
    if (!stop_.Take(2)) return false;
    if (cache_ != nullptr) {
      absl::StatusOr<CachedPage> page = Timed([&] { return cache_->Alloc(config_.gfp_mask, PickOrder()); });
      if (page.ok()) Record([&] { return cache_->Free(*page); });
      return true;
    }
    absl::StatusOr<PageHandle> page = Timed([&] { return lease_->AllocPages(config_.gfp, PickOrder()); });
    if (page.ok()) Record([&] { return page->Free(); });
    return true;
  }

  // --burst AllocPages back to back, holding every block, then FreePages of each.
  bool Burst() {
    if (cache_ != nullptr) return CachedBurst();
    std::vector<PageHandle> held;
    int i = 0;
    for (; i < config_.burst && stop_.Take(2); ++i) {  // the allocation and its free
      absl::StatusOr<PageHandle> page = Timed([&] { return lease_->AllocPages(config_.gfp, PickOrder()); });
      if (page.ok()) held.push_back(*std::move(page));
    }
    for (PageHandle& page : held) Record([&] { return page.Free(); });
    return i > 0;
  }

  bool CachedBurst() {
    std::vector<CachedPage> held;
    int i = 0;
    for (; i < config_.burst && stop_.Take(2); ++i) {
      absl::StatusOr<CachedPage> page = Timed([&] { return cache_->Alloc(config_.gfp_mask, PickOrder()); });
      if (page.ok()) held.push_back(*page);
    }
    for (const CachedPage& page : held) Record([&] { return cache_->Free(page); });
    return i > 0;
  }

  // CreateLease, --allocs_per_lease AllocPages under it, RevokeLease (which frees them).
  bool LeaseChurn() {
    if (!stop_.Take(2)) return false;  // CreateLease and RevokeLease
    absl::StatusOr<std::unique_ptr<Lease>> lease = Timed(
        [&] { return client_.CreateLease({.ttl_ms = config_.lease_ttl_ms, .name = absl::StrFormat("%s-churn-%d", name_, churned_++), .keepalive = false}); });
    if (!lease.ok()) return true;
    for (int i = 0; i < config_.allocs_per_lease && stop_.Take(1); ++i) {
      absl::StatusOr<PageHandle> page = Timed([&] { return (*lease)->AllocPages(config_.gfp, PickOrder()); });
      if (page.ok()) page->Release();  // the revoke frees it
    }
    Record([&] { return (*lease)->Revoke(); });
    return true;
  }

  // Mostly alloc+free; some bulk allocations freed in one call, zone reads and lease churn.
  bool Mixed() {
    const int pick = std::uniform_int_distribution<int>(0, 99)(rng_);
    if (pick < 60) return AllocFree();
    if (pick < 80) {
      if (!stop_.Take(2)) return false;
      absl::StatusOr<std::vector<PageHandle>> pages =
          Timed([&] { return lease_->AllocPagesBulk(config_.gfp, static_cast<uint32_t>(config_.burst)); });
      if (pages.ok()) Record([&] { return lease_->FreePagesBulk(*pages); });
      return true;
    }
    if (pick < 90) {
      if (!stop_.Take(1)) return false;
      Record([&] { return client_.GetZoneInfo(); });
      return true;
    }
    return LeaseChurn();
  }

  Client& client_;
  const Config& config_;
  StopCondition& stop_;
  std::vector<CallResult>& out_;
  std::mt19937_64 rng_;
  const std::string name_;
  uint64_t churned_ = 0;  // churn leases created: each gets its own name, in case a revoke timed out
  std::unique_ptr<Lease> lease_;
  std::unique_ptr<PageCache> cache_;  // --client_cache; declared after lease_: drained before it ends
};

// ---- The report: ghz's Report, computed as runner/reporter.go computes it ----

struct LatencyPoint {
  int percentage;
  int64_t latency_ns;
};
struct Bucket {
  double mark;  // seconds
  int64_t count;
  double frequency;
};

struct Report {
  std::string name, end_reason, host, call;
  int concurrency = 0;
  uint64_t total_requested = 0;
  int64_t duration_ns = 0, timeout_ns = 0;
  absl::Time date;
  uint64_t count = 0;
  int64_t total_ns = 0, average_ns = 0, fastest_ns = 0, slowest_ns = 0;
  double rps = 0;
  std::map<std::string, int64_t> error_dist, status_dist;
  std::vector<LatencyPoint> latency_distribution;
  std::vector<Bucket> histogram;
  std::vector<CallResult> details;
  std::map<std::string, std::string> tags;
};

// ghz's latencies(): the value at 0-based rank floor(p/100*n), one less when that is whole.
std::vector<LatencyPoint> Percentiles(const std::vector<double>& sorted_s) {
  std::vector<LatencyPoint> out;
  for (int p : {10, 25, 50, 75, 90, 95, 99}) {
    const double ip = p / 100.0 * static_cast<double>(sorted_s.size());
    int64_t di = static_cast<int64_t>(ip);
    if (ip == static_cast<double>(di)) --di;
    di = std::max<int64_t>(di, 0);
    out.push_back({p, static_cast<int64_t>(sorted_s[di] * 1e9)});
  }
  return out;
}

// ghz's histogram(): 11 marks, fastest + i*(slowest-fastest)/10 and slowest; each latency
// counts in the first mark it does not exceed.
std::vector<Bucket> Histogram(const std::vector<double>& sorted_s) {
  constexpr int kBuckets = 10;
  const double fastest = sorted_s.front(), slowest = sorted_s.back();
  const double width = (slowest - fastest) / kBuckets;
  std::vector<Bucket> out(kBuckets + 1);
  for (int i = 0; i < kBuckets; ++i) out[i].mark = fastest + width * i;
  out[kBuckets].mark = slowest;
  size_t b = 0;
  for (double l : sorted_s) {
    while (l > out[b].mark && b < out.size() - 1) ++b;
    ++out[b].count;
  }
  for (Bucket& bucket : out) bucket.frequency = static_cast<double>(bucket.count) / sorted_s.size();
  return out;
}

Report Finalize(Results& results, const Config& config, const std::string& host, int64_t total_ns,
                bool timed_out, bool keep_details) {
  Report r;
  r.name = absl::GetFlag(FLAGS_name);
  r.end_reason = timed_out ? "timeout" : "normal";  // ghz's StopReason values
  r.host = host;
  r.call = "physmem.v1.PhysMem (" + config.scenario + (config.client_cache ? ", client cache" : "") + ")";
  r.concurrency = config.concurrency;
  r.total_requested = config.total;
  r.duration_ns = absl::ToInt64Nanoseconds(config.duration);
  r.timeout_ns = absl::GetFlag(FLAGS_timeout_ms) * 1000000;
  r.date = absl::Now();
  r.total_ns = total_ns;
  r.tags = {{"scenario", config.scenario},
            {"gfp", config.gfp},
            {"orders", absl::GetFlag(FLAGS_orders)},
            {"client_cache", config.client_cache ? "true" : "false"}};

  std::vector<CallResult> all;
  for (std::vector<CallResult>& w : results.per_worker) {
    all.insert(all.end(), std::make_move_iterator(w.begin()), std::make_move_iterator(w.end()));
  }
  std::sort(all.begin(), all.end(), [](const CallResult& a, const CallResult& b) { return a.timestamp < b.timestamp; });
  double latency_sum_s = 0;
  std::vector<double> ok_s;
  for (const CallResult& c : all) {
    ++r.count;
    latency_sum_s += c.latency_ns / 1e9;
    ++r.status_dist[GoCodeName(c.code)];
    if (c.code == absl::StatusCode::kOk) {
      ok_s.push_back(c.latency_ns / 1e9);
    } else {
      ++r.error_dist[c.error];
    }
  }
  if (r.count > 0) {
    r.average_ns = static_cast<int64_t>(latency_sum_s / r.count * 1e9);
    r.rps = r.count / (total_ns / 1e9);
  }
  if (!ok_s.empty()) {
    std::sort(ok_s.begin(), ok_s.end());
    r.fastest_ns = static_cast<int64_t>(ok_s.front() * 1e9);
    r.slowest_ns = static_cast<int64_t>(ok_s.back() * 1e9);
    r.latency_distribution = Percentiles(ok_s);
    r.histogram = Histogram(ok_s);
  }
  if (keep_details) {
    if (all.size() > kMaxDetails) all.resize(kMaxDetails);
    r.details = std::move(all);
  }
  return r;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

// Go's encoding/json float64: shortest representation that round-trips.
std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "0";
  std::string s = absl::StrFormat("%.17g", v);
  for (int precision = 1; precision < 17; ++precision) {
    std::string shorter = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(shorter.c_str(), nullptr) == v) return shorter;
  }
  return s;
}

// Go's time formats: the report date is time.RFC3339 (whole seconds), a detail's timestamp is a
// time.Time, which encoding/json writes as RFC3339Nano (trailing zeros trimmed); both write "Z"
// for UTC.
std::string GoTime(absl::Time t, bool nanos) {
  std::string s = absl::FormatTime(nanos ? "%Y-%m-%dT%H:%M:%E*S%Ez" : "%Y-%m-%dT%H:%M:%S%Ez", t, absl::LocalTimeZone());
  if (absl::EndsWith(s, "+00:00")) s.replace(s.size() - 6, 6, "Z");
  return s;
}

// A tiny JSON writer: objects and arrays, indented (ghz's "pretty") or compact ("json").
class JsonWriter {
 public:
  explicit JsonWriter(bool pretty) : pretty_(pretty) {}
  void Open(char bracket) {
    out_ += bracket;
    first_.push_back(true);
  }
  void Close(char bracket) {
    const bool empty = first_.back();
    first_.pop_back();
    if (!empty) Newline();
    out_ += bracket;
  }
  void Key(const std::string& key) {
    Item();
    out_ += JsonString(key) + (pretty_ ? ": " : ":");
  }
  void Value(const std::string& raw) { out_ += raw; }
  void Field(const std::string& key, const std::string& raw) {
    Key(key);
    out_ += raw;
  }
  void Item() {  // before each array element or object key
    if (!first_.back()) out_ += ',';
    first_.back() = false;
    Newline();
  }
  std::string str() const { return out_ + "\n"; }

 private:
  void Newline() {
    if (pretty_) out_ += "\n" + std::string(2 * first_.size(), ' ');
  }
  bool pretty_;
  std::string out_;
  std::vector<bool> first_;
};

std::string ToJson(const Report& r, bool pretty) {
  JsonWriter w(pretty);
  w.Open('{');
  w.Field("date", JsonString(GoTime(r.date, false)));
  if (!r.name.empty()) w.Field("name", JsonString(r.name));
  w.Field("endReason", JsonString(r.end_reason));
  w.Key("options");
  w.Open('{');
  w.Field("host", JsonString(r.host));
  w.Field("call", JsonString(r.call));
  w.Field("insecure", absl::GetFlag(FLAGS_tls_ca).empty() ? "true" : "false");  // plaintext (or a Unix socket)
  if (r.total_requested > 0) w.Field("total", absl::StrCat(r.total_requested));
  w.Field("concurrency", absl::StrCat(r.concurrency));
  if (r.duration_ns > 0) w.Field("duration", absl::StrCat(r.duration_ns));
  w.Field("timeout", absl::StrCat(r.timeout_ns));
  w.Field("binary", "false");
  w.Field("CPUs", absl::StrCat(std::thread::hardware_concurrency()));
  if (!r.name.empty()) w.Field("name", JsonString(r.name));
  w.Close('}');
  w.Field("count", absl::StrCat(r.count));
  w.Field("total", absl::StrCat(r.total_ns));
  w.Field("average", absl::StrCat(r.average_ns));
  w.Field("fastest", absl::StrCat(r.fastest_ns));
  w.Field("slowest", absl::StrCat(r.slowest_ns));
  w.Field("rps", JsonNumber(r.rps));
  for (const auto& [key, dist] : {std::pair{"errorDistribution", &r.error_dist}, {"statusCodeDistribution", &r.status_dist}}) {
    w.Key(key);
    w.Open('{');
    for (const auto& [k, v] : *dist) w.Field(k, absl::StrCat(v));
    w.Close('}');
  }
  // ghz writes null for an empty slice (no OK call).
  w.Key("latencyDistribution");
  if (r.latency_distribution.empty()) {
    w.Value("null");
  } else {
    w.Open('[');
    for (const LatencyPoint& p : r.latency_distribution) {
      w.Item();
      w.Open('{');
      w.Field("percentage", absl::StrCat(p.percentage));
      w.Field("latency", absl::StrCat(p.latency_ns));
      w.Close('}');
    }
    w.Close(']');
  }
  w.Key("histogram");
  if (r.histogram.empty()) {
    w.Value("null");
  } else {
    w.Open('[');
    for (const Bucket& b : r.histogram) {
      w.Item();
      w.Open('{');
      w.Field("mark", JsonNumber(b.mark));
      w.Field("count", absl::StrCat(b.count));
      w.Field("frequency", JsonNumber(b.frequency));
      w.Close('}');
    }
    w.Close(']');
  }
  w.Key("details");
  if (r.details.empty()) {
    w.Value("null");
  } else {
    w.Open('[');
    for (const CallResult& c : r.details) {
      w.Item();
      w.Open('{');
      w.Field("timestamp", JsonString(GoTime(c.timestamp, true)));
      w.Field("latency", absl::StrCat(c.latency_ns));
      w.Field("error", JsonString(c.error));
      w.Field("status", JsonString(GoCodeName(c.code)));
      w.Close('}');
    }
    w.Close(']');
  }
  w.Key("tags");
  w.Open('{');
  for (const auto& [k, v] : r.tags) w.Field(k, JsonString(v));
  w.Close('}');
  w.Close('}');
  return w.str();
}

std::string Ms(int64_t ns) { return absl::StrFormat("%.2f ms", ns / 1e6); }

// ghz's "summary" printer, in the same layout.
std::string ToSummary(const Report& r) {
  std::string s = "\nSummary:\n";
  if (!r.name.empty()) absl::StrAppend(&s, "  Name:\t\t", r.name, "\n");
  absl::StrAppend(&s, "  Count:\t", r.count, "\n");
  absl::StrAppend(&s, "  Total:\t", Ms(r.total_ns), "\n");
  absl::StrAppend(&s, "  Slowest:\t", Ms(r.slowest_ns), "\n");
  absl::StrAppend(&s, "  Fastest:\t", Ms(r.fastest_ns), "\n");
  absl::StrAppend(&s, "  Average:\t", Ms(r.average_ns), "\n");
  absl::StrAppend(&s, "  Requests/sec:\t", absl::StrFormat("%.2f", r.rps), "\n");
  if (!r.histogram.empty()) {
    s += "\nResponse time histogram:\n";
    int64_t max = 1;
    for (const Bucket& b : r.histogram) max = std::max(max, b.count);
    for (const Bucket& b : r.histogram) {
      const int bar = static_cast<int>(40 * b.count / max);
      std::string bars;
      for (int i = 0; i < bar; ++i) bars += "\u220e";
      absl::StrAppend(&s, absl::StrFormat("  %.3f [%d]\t|%s\n", b.mark * 1000, b.count, bars));
    }
    s += "\nLatency distribution:\n";
    for (const LatencyPoint& p : r.latency_distribution) {
      absl::StrAppend(&s, absl::StrFormat("  %d %% in %s \n", p.percentage, Ms(p.latency_ns)));
    }
  }
  s += "\nStatus code distribution:\n";
  for (const auto& [k, v] : r.status_dist) absl::StrAppend(&s, absl::StrFormat("  [%s]\t%d responses\n", k, v));
  if (!r.error_dist.empty()) {
    s += "\nError distribution:\n";
    for (const auto& [k, v] : r.error_dist) absl::StrAppend(&s, absl::StrFormat("  [%d]\t%s\n", v, k));
  }
  return s;
}

// --client_cache without --total: the most calls recorded (about 350 MB of records).
constexpr uint64_t kMaxCachedCalls = 5'000'000;

absl::StatusOr<Config> ConfigFromFlags() {
  Config c;
  c.scenario = absl::GetFlag(FLAGS_scenario);
  if (c.scenario != "alloc-free" && c.scenario != "burst" && c.scenario != "lease-churn" && c.scenario != "mixed") {
    return absl::InvalidArgumentError("--scenario must be alloc-free, burst, lease-churn or mixed, not '" +
                                      c.scenario + "'");
  }
  c.concurrency = absl::GetFlag(FLAGS_concurrency);
  if (c.concurrency < 1 || c.concurrency > 1024) return absl::InvalidArgumentError("--concurrency must be 1..1024");
  c.duration = absl::GetFlag(FLAGS_duration);
  c.total = absl::GetFlag(FLAGS_total);
  if (c.duration < absl::ZeroDuration()) return absl::InvalidArgumentError("--duration must not be negative");
  if (c.duration == absl::ZeroDuration() && c.total == 0) c.duration = absl::Seconds(10);
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_orders), ',', absl::SkipWhitespace())) {
    uint32_t order = 0;
    if (!absl::SimpleAtoi(part, &order) || order > 10) {
      return absl::InvalidArgumentError("--orders must be comma-separated orders 0..10, not '" +
                                        absl::GetFlag(FLAGS_orders) + "'");
    }
    c.orders.push_back(order);
  }
  if (c.orders.empty()) return absl::InvalidArgumentError("--orders needs at least one order");
  c.gfp = absl::GetFlag(FLAGS_gfp);
  c.client_cache = absl::GetFlag(FLAGS_client_cache);
  if (c.client_cache) {
    absl::StatusOr<gfp_t> mask = ParseGfp(c.gfp);
    if (!mask.ok()) return absl::InvalidArgumentError("--gfp: " + std::string(mask.status().message()));
    c.gfp_mask = *mask;
    if (c.total == 0) c.total = kMaxCachedCalls;
    if (c.scenario == "lease-churn") {
      return absl::InvalidArgumentError(
          "--client_cache drives alloc-free, burst and mixed; lease-churn's leases live for a few calls, too short for "
          "a cache");
    }
  }
  c.burst = absl::GetFlag(FLAGS_burst);
  if (c.burst < 1) return absl::InvalidArgumentError("--burst must be at least 1");
  c.allocs_per_lease = absl::GetFlag(FLAGS_allocs_per_lease);
  if (c.allocs_per_lease < 0) return absl::InvalidArgumentError("--allocs_per_lease must not be negative");
  c.lease_ttl_ms = absl::GetFlag(FLAGS_lease_ttl_ms);
  const std::string format = absl::GetFlag(FLAGS_format);
  if (format != "summary" && format != "json" && format != "pretty") {
    return absl::InvalidArgumentError("--format must be summary, json or pretty, not '" + format + "'");
  }
  return c;
}

int Main() {
  absl::StatusOr<Config> config = ConfigFromFlags();
  if (!config.ok()) {
    std::fprintf(stderr, "physmem_loadgen: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  client::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  // ghz's -t bounds every request; so does ours, whether it allocates or not.
  options.alloc_timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  options.call_timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "physmem_loadgen: %s\n", client.status().ToString().c_str());
    return 1;
  }

  Results results;
  results.per_worker.resize(config->concurrency);
  StopCondition stop(config->duration, config->total);
  const uint64_t seed = absl::GetFlag(FLAGS_seed) != 0 ? absl::GetFlag(FLAGS_seed)
                                                        : static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  std::vector<absl::Status> setup(config->concurrency);
  std::vector<std::thread> threads;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < config->concurrency; ++i) {
    threads.emplace_back([&, i] {
      Worker worker(**client, *config, stop, results.per_worker[i], seed + i, i);
      setup[i] = worker.Run();
    });
  }
  for (std::thread& t : threads) t.join();
  const int64_t total_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  for (const absl::Status& s : setup) {
    if (!s.ok()) {
      std::fprintf(stderr, "physmem_loadgen: a worker could not create its lease: %s\n", s.ToString().c_str());
      return 1;
    }
  }

  const std::string format = absl::GetFlag(FLAGS_format);
  const Report report = Finalize(results, *config, options.target, total_ns, stop.timed_out(),
                                 format != "summary" && absl::GetFlag(FLAGS_details));
  const std::string text = format == "summary" ? ToSummary(report) : ToJson(report, format == "pretty");
  const std::string path = absl::GetFlag(FLAGS_output);
  if (path.empty()) {
    std::cout << text << std::flush;
  } else {
    std::ofstream f(path);
    f << text;
    if (!f.good()) {
      std::fprintf(stderr, "physmem_loadgen: cannot write %s\n", path.c_str());
      return 1;
    }
  }
  if (format != "summary") std::cerr << ToSummary(report);
  return 0;
}

}  // namespace
}  // namespace physmem::loadgen

int main(int argc, char** argv) {
  physmem::SetFlagsUsage("physmem_loadgen", {"clients/physmem_loadgen.cc"});
  absl::SetProgramUsageMessage(
      "load scenarios ghz cannot express (alloc then free, bursts, lease churn, mixed), "
      "reported in ghz's JSON format.\n"
      "  physmem_loadgen --target=unix:///run/physmemd/physmemd.sock --scenario=alloc-free --duration=10s "
      "--format=json --output=report.json");
  absl::ParseCommandLine(argc, argv);
  return physmem::loadgen::Main();
}
