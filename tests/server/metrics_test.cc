// Tests of physmemd's Prometheus metrics (docs/metrics.md) against the real daemon process: every
// scrape is a real HTTP GET of /metrics, parsed as the text exposition format. The list of metric
// families comes from docs/metrics.md itself, so the doc and the exporter cannot drift apart.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/server/daemon_stub.h"
#include "tests/server/metrics_scrape.h"

namespace physmem {
namespace {

using Ctx = testing::Deadline;  // a call's deadline: 5 s unless given
using Labels = std::map<std::string, std::string>;

// ---- Scraping and parsing ----------------------------------------------------------------------

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Scrape {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|...
  std::vector<Sample> samples;

  // Sum over the samples of `name` whose labels include `match`.
  double Sum(const std::string& name, const Labels& match = {}) const {
    double sum = 0;
    for (const Sample& s : samples) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        ok = ok && it != s.labels.end() && it->second == v;
      }
      if (ok) sum += s.value;
    }
    return sum;
  }
  std::vector<Sample> All(const std::string& name) const {
    std::vector<Sample> out;
    for (const Sample& s : samples) {
      if (s.name == name) out.push_back(s);
    }
    return out;
  }
};

// The text exposition format: "# TYPE name type" lines and "name{k="v",...} value" samples.
Scrape Parse(const std::string& body) {
  Scrape out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, type;
      t >> name >> type;
      out.types[name] = type;
      continue;
    }
    if (line[0] == '#') continue;
    Sample s;
    size_t i = line.find_first_of("{ ");
    s.name = line.substr(0, i);
    if (i != std::string::npos && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        std::string key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;  // past ="
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      i = line.find(' ', i);
    }
    const std::string v = line.substr(i + 1);
    s.value = v == "+Inf" ? INFINITY : v == "-Inf" ? -INFINITY : std::strtod(v.c_str(), nullptr);
    out.samples.push_back(std::move(s));
  }
  return out;
}

// Metric names from docs/metrics.md: the first cell of every table row, in backticks.
std::vector<std::string> DocumentedFamilies() {
  std::ifstream in(std::string(PHYSMEM_SOURCE_DIR) + "/docs/metrics.md");
  std::vector<std::string> names;
  std::string line;
  static const std::regex kRow(R"(^\| `([a-z_:]+)` \|)");
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_search(line, m, kRow)) names.push_back(m[1]);
  }
  return names;
}

// ---- The daemon ---------------------------------------------------------------------------------

class Metrics : public testing::DaemonStubTest {
 protected:
  std::atomic<int> leases_named_{0};  // NewLease's names, "test-N"
  // i386 with 1 GiB: DMA (3998 present pages, 3840 managed), Normal and HighMem (32768 pages); `extra` flags come last
  // and win. A test that lets a lease expire runs the daemon on a lease clock it moves (`clock`).
  void StartDaemon(std::vector<std::string> extra = {},
                   testing::LeaseClockMode clock = testing::LeaseClockMode::kReal) {
    // --identity_dma_pages: one identity exhausts zones down to ZONE_DMA (default cap: 1/8 of it).
    std::vector<std::string> args = {testing::kServeMetrics, "--target=i386", "--mem_mb=1024",
                                     "--max_alloc_wait_ms=3000", "--identity_dma_pages=4096"};
    args.insert(args.end(), extra.begin(), extra.end());
    DaemonStubTest::StartDaemon(std::move(args), /*tcp=*/false, clock);
  }
  void SetUp() override { StartDaemon(); }

  Scrape Get() {
    const int port = daemon_->metrics_port();
    EXPECT_NE(port, 0) << daemon_->log();
    const std::string body = testing::HttpGet(port);
    EXPECT_FALSE(body.empty()) << "scrape of 127.0.0.1:" << port << " failed";
    return Parse(body);
  }

  // An hour by default: no test here wants a lease to end before it says so.
  // Unnamed by default a lease gets a name of its own ("test-N"): names are unique per identity.
  uint64_t NewLease(std::optional<std::string> name = std::nullopt, int64_t ttl_ms = 3600 * 1000) {
    v1::CreateLeaseRequest req;
    req.set_ttl_ms(ttl_ms);
    req.set_name(name.value_or("test-" + std::to_string(++leases_named_)));
    v1::CreateLeaseResponse resp;
    Ctx ctx;
    grpc::Status s = stub_->CreateLease(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.lease_id();
  }
  grpc::Status Alloc(uint64_t lease, const std::string& gfp, uint32_t order, v1::Allocation* out = nullptr,
                     int deadline_ms = 5000) {
    return testing::AllocPages(stub_.get(), lease, gfp, order, out, deadline_ms);
  }
  grpc::Status Free(uint64_t lease, uint64_t pfn, uint32_t order) {
    return testing::FreePages(stub_.get(), lease, pfn, order);
  }

  // Waits until the daemon shows a call parked for memory, given the failure count from before the
  // call was made: its first attempt and the waiter queue's first retry (made as the call arrives;
  // later ones only after frees) have each counted an allocation failure. With one call in
  // flight, that call is the one waiting.
  bool WaitUntilParked(double failures_before) {
    return testing::Eventually(testing::ScaledTimeout(std::chrono::seconds(5)), [&] {
      return Get().Sum("physmem_alloc_failures_total") >= failures_before + 2;
    });
  }
  // Makes a GFP_KERNEL|__GFP_DMA allocation in `lease` (ZONE_DMA must be full, so that it parks),
  // cancels it `after` the daemon shows it parked, and expects the client to hear CANCELLED.
  void ParkThenCancel(uint64_t lease, std::chrono::milliseconds after) {
    grpc::ClientContext ctx;
    v1::AllocPagesRequest req;
    req.set_lease_id(lease);
    req.set_gfp("GFP_KERNEL|__GFP_DMA");
    v1::Allocation out;
    const double failures = Get().Sum("physmem_alloc_failures_total");
    std::thread cancel([&] {
      EXPECT_TRUE(WaitUntilParked(failures)) << "the call did not park";
      std::this_thread::sleep_for(after);
      ctx.TryCancel();
    });
    EXPECT_EQ(stub_->AllocPages(&ctx, req, &out).error_code(), grpc::StatusCode::CANCELLED);
    cancel.join();
  }
};

const Labels kNormal = {{"zone", "Normal"}};

// ---- Tests --------------------------------------------------------------------------------------

TEST_F(Metrics, EveryDocumentedFamilyIsExportedWithItsType) {
  const std::vector<std::string> documented = DocumentedFamilies();
  ASSERT_GE(documented.size(), 40u) << "could not read the tables of docs/metrics.md";
  // Families whose series appear with their first event: make one of each.
  const uint64_t lease = NewLease();
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 0).ok());
  const Scrape s = Get();
  for (const std::string& name : documented) {
    ASSERT_TRUE(s.types.count(name)) << name << " is in docs/metrics.md but not exported";
    const std::string& type = s.types.at(name);
    if (name.ends_with("_total")) {
      EXPECT_EQ(type, "counter") << name;
    } else if (name.ends_with("_seconds") && name != "process_start_time_seconds") {
      EXPECT_EQ(type, "histogram") << name;
    } else {
      EXPECT_EQ(type, "gauge") << name;
    }
  }
  // And nothing physmem_ or grpc_server_ that the doc does not describe.
  const std::set<std::string> doc(documented.begin(), documented.end());
  for (const auto& [name, type] : s.types) {
    if (name.starts_with("physmem_") || name.starts_with("grpc_server_")) {
      EXPECT_TRUE(doc.count(name)) << name << " is exported but not in docs/metrics.md";
    }
  }
}

TEST_F(Metrics, FreePagesDropByExactlyThePagesAllocatedAndBuddyinfoAddsUp) {
  const uint64_t lease = NewLease();
  const Scrape before = Get();
  v1::Allocation a;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 3, &a).ok());
  ASSERT_EQ(a.zone(), "Normal");
  const Scrape after = Get();
  EXPECT_EQ(before.Sum("physmem_zone_free_pages", kNormal) - after.Sum("physmem_zone_free_pages", kNormal), 8);
  EXPECT_EQ(after.Sum("physmem_alloc_total", {{"zone", "Normal"}, {"order", "3"}, {"gfp_class", "GFP_KERNEL"}}) -
                before.Sum("physmem_alloc_total", {{"zone", "Normal"}, {"order", "3"}, {"gfp_class", "GFP_KERNEL"}}),
            1);
  EXPECT_EQ(after.Sum("physmem_alloc_pages_total", kNormal) - before.Sum("physmem_alloc_pages_total", kNormal), 8);
  // free pages of a zone = Σ_order buddyinfo_blocks[order] << order + pages on the per-CPU lists.
  for (const std::string zone : {"DMA", "Normal", "HighMem"}) {
    double buddy = 0;
    for (const Sample& b : after.All("physmem_buddyinfo_blocks")) {
      if (b.labels.at("zone") == zone) buddy += b.value * std::ldexp(1.0, std::stoi(b.labels.at("order")));
    }
    EXPECT_EQ(buddy + after.Sum("physmem_pcp_pages", {{"zone", zone}}),
              after.Sum("physmem_zone_free_pages", {{"zone", zone}}))
        << zone;
    EXPECT_GT(after.Sum("physmem_zone_managed_pages", {{"zone", zone}}), 0) << zone;
  }
  ASSERT_TRUE(Free(lease, a.pfn(), 3).ok());
  const Scrape freed = Get();
  EXPECT_EQ(freed.Sum("physmem_zone_free_pages", kNormal), before.Sum("physmem_zone_free_pages", kNormal));
  EXPECT_EQ(freed.Sum("physmem_free_pages_total", kNormal) - before.Sum("physmem_free_pages_total", kNormal), 8);
  EXPECT_EQ(freed.Sum("physmem_free_total", kNormal) - before.Sum("physmem_free_total", kNormal), 1);
}

TEST_F(Metrics, ZoneGaugesMatchTheTarget) {
  const Scrape s = Get();
  v1::GetTargetResponse t;
  {
    Ctx ctx;
    ASSERT_TRUE(stub_->GetTarget(&ctx, v1::GetTargetRequest(), &t).ok());
  }
  // GetTarget's total_pages is what the allocator manages: RAM less the i386 built-in's
  // memblock-reserved first megabyte (reserve_real_mode(): 158 RAM pages, pfns 1..0x9e).
  EXPECT_EQ(s.Sum("physmem_zone_present_pages"), t.total_pages() + 158);
  EXPECT_EQ(s.Sum("physmem_zone_managed_pages"), t.total_pages());
  EXPECT_EQ(s.Sum("physmem_zone_free_pages"), t.total_pages());  // nothing allocated yet
  // 16 MiB less page 0 (trim_bios_range()), holes included; present and managed as this
  // machine's /proc/zoneinfo shows its DMA zone.
  EXPECT_EQ(s.Sum("physmem_zone_spanned_pages", {{"zone", "DMA"}}), 4095);
  EXPECT_EQ(s.Sum("physmem_zone_present_pages", {{"zone", "DMA"}}), 3998);
  EXPECT_EQ(s.Sum("physmem_zone_managed_pages", {{"zone", "DMA"}}), 3840);
  EXPECT_EQ(s.Sum("physmem_page_size_bytes"), 4096);
  EXPECT_EQ(s.Sum("physmem_build_info", {{"target", "i386"}}), 1);
  EXPECT_EQ(s.Sum("physmem_arena_backing_info", {{"backing", "ordinary"}}), 1);
  // The arena backs the managed pages: 1 GiB less page 0 and the 158 reserved pages below 1 MiB.
  EXPECT_EQ(s.Sum("physmem_arena_bytes"), t.total_pages() * 4096.0);
  EXPECT_EQ(s.Sum("physmem_arena_bytes"), 1024.0 * (1 << 20) - 159 * 4096.0);
  EXPECT_GT(s.Sum("process_resident_memory_bytes"), 0);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_NEAR(s.Sum("process_start_time_seconds"), now, 120);
  for (const Sample& w : s.All("physmem_zone_watermark_pages")) EXPECT_GT(w.value, 0) << w.labels.at("zone");
  EXPECT_LT(s.Sum("physmem_zone_watermark_pages", {{"zone", "Normal"}, {"level", "min"}}),
            s.Sum("physmem_zone_watermark_pages", {{"zone", "Normal"}, {"level", "high"}}));
  // DMA keeps pages back from allocations that prefer Normal (lowmem_reserve, zoneinfo "protection").
  EXPECT_GT(s.Sum("physmem_zone_lowmem_reserve_pages", {{"zone", "DMA"}, {"for_zone", "Normal"}}), 0);
  // A fresh zone has large blocks: every fragmentation index says "a suitable block exists" (-1).
  EXPECT_EQ(s.Sum("physmem_zone_fragmentation_index", {{"zone", "Normal"}, {"order", "3"}}), -1);
}

// Mobility grouping (kernel 6.12): every pageblock starts MOVABLE (memmap_init_range()); the
// first GFP_KERNEL page makes __rmqueue_claim() take a free MOVABLE block of MAX_PAGE_ORDER for
// UNMOVABLE (i386 without PAE: pageblock_order 10, so one pageblock), which the claim, pageblock
// and type-change series show.
TEST_F(Metrics, PageblocksAndFallbacksByMigratetype) {
  const Scrape before = Get();
  EXPECT_GT(before.Sum("physmem_pageblocks", {{"zone", "Normal"}, {"migratetype", "Movable"}}), 0);
  EXPECT_EQ(before.Sum("physmem_pageblocks", {{"zone", "Normal"}, {"migratetype", "Unmovable"}}), 0);
  EXPECT_EQ(before.Sum("physmem_highatomic_reserved_pages"), 0);
  // Normal spans 16..896 MiB = 225280 pages: 1% = 2252, aligned up to 1024-page pageblocks.
  EXPECT_EQ(before.Sum("physmem_highatomic_max_pages", {{"zone", "Normal"}}), 3072);
  ASSERT_TRUE(Alloc(NewLease(), "GFP_KERNEL", 0).ok());
  const Scrape after = Get();
  EXPECT_EQ(after.Sum("physmem_pageblocks", {{"zone", "Normal"}, {"migratetype", "Unmovable"}}), 1);
  EXPECT_EQ(after.Sum("physmem_migrate_claims_total", {{"zone", "Normal"},
                                                       {"alloc_migratetype", "Unmovable"},
                                                       {"fallback_migratetype", "Movable"},
                                                       {"order", "10"}}),
            1);
  EXPECT_EQ(after.Sum("physmem_pageblock_type_changes_total",
                      {{"zone", "Normal"}, {"from", "Movable"}, {"to", "Unmovable"}}),
            1);
  EXPECT_EQ(after.Sum("physmem_migrate_steals_total"), 0);
}

TEST_F(Metrics, FailuresFallbacksAndZeroedPagesAreCounted) {
  const uint64_t lease = NewLease();
  // GFP_DMA cannot wait: order-10 blocks until DMA (4096 pages) has none left, then one failure.
  int got = 0;
  grpc::Status s;
  while ((s = Alloc(lease, "GFP_DMA", 10)).ok()) ASSERT_LT(++got, 5);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // GFP_HIGHUSER prefers HighMem (32768 pages): order-10 blocks until one comes from Normal.
  v1::Allocation a;
  int highmem = 0;
  while (true) {
    ASSERT_TRUE(Alloc(lease, "GFP_HIGHUSER", 10, &a).ok());
    if (a.zone() != "HighMem") break;
    ASSERT_LT(++highmem, 40);
  }
  EXPECT_EQ(a.zone(), "Normal");
  v1::Allocation z;
  {
    Ctx ctx;
    v1::AllocPagesRequest req;
    req.set_lease_id(lease);
    req.set_gfp("GFP_KERNEL");
    ASSERT_TRUE(stub_->GetZeroedPage(&ctx, req, &z).ok());
  }
  const Scrape m = Get();
  EXPECT_EQ(m.Sum("physmem_alloc_total", {{"zone", "DMA"}, {"order", "10"}, {"gfp_class", "GFP_DMA"}}), got);
  EXPECT_EQ(m.Sum("physmem_alloc_failures_total", {{"zone", "DMA"}, {"order", "10"}, {"gfp_class", "GFP_DMA"}}), 1);
  EXPECT_EQ(m.Sum("physmem_alloc_failures_total"), 1);
  EXPECT_EQ(m.Sum("physmem_alloc_total", {{"zone", "HighMem"}, {"gfp_class", "GFP_HIGHUSER"}}), highmem);
  EXPECT_EQ(m.Sum("physmem_alloc_fallbacks_total", {{"zone", "Normal"}, {"preferred_zone", "HighMem"}}), 1);
  EXPECT_EQ(m.Sum("physmem_alloc_fallbacks_total"), 1);
  EXPECT_EQ(m.Sum("physmem_pages_zeroed_total"), 1);
  EXPECT_EQ(m.Sum("grpc_server_handled_total", {{"grpc_method", "AllocPages"}, {"grpc_code", "RESOURCE_EXHAUSTED"}}),
            1);
  EXPECT_EQ(m.Sum("grpc_server_handled_total", {{"grpc_method", "AllocPages"}, {"grpc_code", "OK"}}),
            got + highmem + 1);
  EXPECT_EQ(m.Sum("grpc_server_handled_total", {{"grpc_method", "GetZeroedPage"}, {"grpc_code", "OK"}}), 1);
}

TEST_F(Metrics, RefusedFreesAreCountedByReasonAndRpcCodes) {
  const uint64_t lease = NewLease();
  const uint64_t other = NewLease();
  v1::Allocation a, b;
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 2, &a).ok());
  ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 0, &b).ok());
  EXPECT_EQ(Free(other, a.pfn(), 2).error_code(), grpc::StatusCode::PERMISSION_DENIED);  // wrong_owner
  EXPECT_EQ(Free(lease, a.pfn(), 1).error_code(), grpc::StatusCode::INVALID_ARGUMENT);   // wrong_order
  EXPECT_EQ(Free(lease, a.pfn() + 1, 2).error_code(), grpc::StatusCode::INVALID_ARGUMENT);  // misaligned
  EXPECT_EQ(Free(lease, uint64_t{1} << 40, 0).error_code(), grpc::StatusCode::OUT_OF_RANGE);  // out_of_range
  EXPECT_EQ(Free(lease + 1000, b.pfn(), 0).error_code(), grpc::StatusCode::NOT_FOUND);      // bad_request
  ASSERT_TRUE(Free(lease, b.pfn(), 0).ok());
  EXPECT_EQ(Free(lease, b.pfn(), 0).error_code(), grpc::StatusCode::FAILED_PRECONDITION);  // not_allocated
  const Scrape m = Get();
  for (const std::string reason : {"not_allocated", "wrong_owner", "wrong_order", "misaligned", "out_of_range",
                                   "bad_request"}) {
    EXPECT_EQ(m.Sum("physmem_free_refused_total", {{"reason", reason}}), 1) << reason;
  }
  const Labels free_pages = {{"grpc_service", "physmem.v1.PhysMem"}, {"grpc_method", "FreePages"},
                             {"grpc_type", "unary"}};
  auto handled = [&](const std::string& code) {
    Labels l = free_pages;
    l["grpc_code"] = code;
    return m.Sum("grpc_server_handled_total", l);
  };
  EXPECT_EQ(handled("PERMISSION_DENIED"), 1);
  EXPECT_EQ(handled("INVALID_ARGUMENT"), 2);
  EXPECT_EQ(handled("OUT_OF_RANGE"), 1);
  EXPECT_EQ(handled("NOT_FOUND"), 1);
  EXPECT_EQ(handled("FAILED_PRECONDITION"), 1);
  EXPECT_EQ(handled("OK"), 1);
  EXPECT_EQ(m.Sum("grpc_server_started_total", free_pages), 7);
  EXPECT_EQ(m.Sum("grpc_server_handled_total", free_pages), 7);
  // Nothing was freed by the refused calls: only b's one page.
  EXPECT_EQ(m.Sum("physmem_free_pages_total"), 1);
}

TEST_F(Metrics, HistogramBucketsAreCumulativeAndEndInTheCount) {
  const uint64_t lease = NewLease();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Alloc(lease, "GFP_KERNEL", 0).ok());
  const Scrape m = Get();
  const Labels alloc = {{"grpc_method", "AllocPages"}};
  std::vector<std::pair<double, double>> buckets;  // (le, count)
  for (const Sample& s : m.All("grpc_server_handling_seconds_bucket")) {
    if (s.labels.at("grpc_method") != "AllocPages") continue;
    const std::string le = s.labels.at("le");
    buckets.push_back({le == "+Inf" ? INFINITY : std::stod(le), s.value});
  }
  ASSERT_GE(buckets.size(), 15u);
  std::sort(buckets.begin(), buckets.end());
  EXPECT_LE(buckets.front().first, 1e-5);
  EXPECT_GE(buckets[buckets.size() - 2].first, 10);
  for (size_t i = 1; i < buckets.size(); ++i) EXPECT_LE(buckets[i - 1].second, buckets[i].second);
  EXPECT_EQ(buckets.back().first, INFINITY);
  EXPECT_EQ(buckets.back().second, m.Sum("grpc_server_handling_seconds_count", alloc));
  EXPECT_EQ(m.Sum("grpc_server_handling_seconds_count", alloc), 5);
  EXPECT_GT(m.Sum("grpc_server_handling_seconds_sum", alloc), 0);
}

TEST_F(Metrics, StreamingAndHealthCallsAreCounted) {
  const uint64_t lease = NewLease();
  {
    grpc::ClientContext ctx;
    auto stream = stub_->KeepAlive(&ctx);
    v1::KeepAliveRequest req;
    req.set_lease_id(lease);
    v1::KeepAliveResponse resp;
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_GT(resp.ttl_ms(), 0);
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
  {
    std::string reply;
    const grpc::Status status = testing::HealthCheck(daemon_->unix_target(), &reply);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const Scrape m = Get();
  EXPECT_EQ(m.Sum("grpc_server_started_total", {{"grpc_method", "KeepAlive"}, {"grpc_type", "bidi_stream"}}), 1);
  EXPECT_EQ(m.Sum("grpc_server_handled_total", {{"grpc_method", "KeepAlive"}, {"grpc_code", "OK"}}), 1);
  EXPECT_EQ(m.Sum("grpc_server_handled_total",
                  {{"grpc_service", "grpc.health.v1.Health"}, {"grpc_method", "Check"}, {"grpc_code", "OK"}}),
            1);
  // Methods never called still have their started series (at 0), as go-grpc-prometheus does.
  EXPECT_EQ(m.All("grpc_server_started_total").size() >= 22, true);
  EXPECT_EQ(m.Sum("grpc_server_started_total", {{"grpc_method", "Kunmap"}}), 0);
}

TEST_F(Metrics, WaitsAreCountedByOutcome) {
  // The daemon's own bound on a wait (--max_alloc_wait_ms) ends the timed-out call, with the
  // caller's deadline far beyond it: the answer is the daemon's RESOURCE_EXHAUSTED however late the
  // request arrives, not a race between its 50 ms margin and the caller's deadline. The bound is
  // scaled so that the cancelled and satisfied calls, which the test ends 300 ms after it sees them
  // parked, are ended by the test and not by it.
  const auto max_wait = testing::ScaledTimeout(std::chrono::milliseconds(2000));
  daemon_.reset();
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--max_alloc_wait_ms=" + std::to_string(max_wait.count())}));
  const uint64_t lease = NewLease();
  // Empty ZONE_DMA down to its min watermark with order-0 pages that cannot wait.
  v1::AllocPagesBulkResponse got;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), lease, "GFP_DMA", 4096, &got, 20000).ok());
  ASSERT_GT(got.pfn_size(), 3000);
  ASSERT_LT(got.pfn_size(), 4096);
  const int64_t long_deadline_ms = 30000;  // scaled by Alloc like max_wait: always far beyond it
  // timed_out: a mask that may wait, until the daemon's bound; its message says it waited all of it.
  const grpc::Status timed_out = Alloc(lease, "GFP_KERNEL|__GFP_DMA", 0, nullptr, long_deadline_ms);
  EXPECT_EQ(timed_out.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << timed_out.error_message();
  EXPECT_THAT(timed_out.error_message(),
              ::testing::HasSubstr("(waited " + std::to_string(max_wait.count()) + " ms for memory"));
  // cancelled: the client gives up while the call waits (300 ms after the daemon shows it parked).
  ParkThenCancel(lease, std::chrono::milliseconds(300));
  // The client hears CANCELLED at once; the daemon's waiter thread is woken by the call's cancel
  // (server/inflight_calls.h). Counted, the call is off the queue and counts no more failures.
  Scrape m;
  EXPECT_TRUE(testing::Eventually(testing::ScaledTimeout(std::chrono::seconds(3)), [&] {
    m = Get();
    return m.Sum("physmem_alloc_waits_total", {{"outcome", "cancelled"}}) == 1;
  }));
  // satisfied: another client frees pages while the call waits (300 ms after it shows parked).
  const double failures = m.Sum("physmem_alloc_failures_total");
  std::thread freer([&] {
    EXPECT_TRUE(WaitUntilParked(failures)) << "the call did not park";
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    v1::FreePagesBulkRequest f;
    f.set_lease_id(lease);
    for (int i = 0; i < 64; ++i) f.add_pfn(got.pfn(i));
    v1::FreePagesBulkResponse fr;
    Ctx ctx;
    EXPECT_TRUE(stub_->FreePagesBulk(&ctx, f, &fr).ok());
    EXPECT_EQ(fr.blocks_freed(), 64u);
  });
  v1::Allocation a;
  EXPECT_TRUE(Alloc(lease, "GFP_KERNEL|__GFP_DMA", 0, &a, long_deadline_ms).ok());
  freer.join();
  EXPECT_EQ(a.zone(), "DMA");
  m = Get();
  EXPECT_EQ(m.Sum("physmem_alloc_waits_total", {{"outcome", "cancelled"}}), 1);
  EXPECT_EQ(m.Sum("physmem_alloc_waits_total", {{"outcome", "timed_out"}}), 1);
  EXPECT_EQ(m.Sum("physmem_alloc_waits_total", {{"outcome", "satisfied"}}), 1);
  EXPECT_EQ(m.Sum("physmem_alloc_wait_duration_seconds_count"), 3);
  // How long each waited, by the daemon's clock: the timed-out one all of max_wait; the cancelled
  // and satisfied ones more than 0.3 s (each parked before the test saw it, ended 0.3 s after).
  EXPECT_GE(m.Sum("physmem_alloc_wait_duration_seconds_sum"), std::chrono::duration<double>(max_wait).count() + 0.6);
  EXPECT_EQ(m.Sum("physmem_alloc_wait_duration_seconds_bucket", {{"le", "0.1"}}), 0);
  EXPECT_EQ(m.Sum("physmem_alloc_wait_duration_seconds_bucket", {{"le", "+Inf"}}), 3);
}

TEST_F(Metrics, ACancelledWaitLeavesTheQueueAtOnceNotAtItsDeadline) {
  // The waiter thread sleeps until an event or the earliest parked deadline (no periodic poll):
  // a cancel must be such an event. The daemon's bound on a wait is an hour here, so the call can
  // only be counted as cancelled because its cancel woke the waiters.
  daemon_.reset();
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--max_alloc_wait_ms=3600000"}));
  const uint64_t lease = NewLease();
  v1::AllocPagesBulkResponse got;
  ASSERT_TRUE(testing::AllocBulk(stub_.get(), lease, "GFP_DMA", 4096, &got, 20000).ok());
  ASSERT_LT(got.pfn_size(), 4096);
  ParkThenCancel(lease, std::chrono::milliseconds(0));
  EXPECT_TRUE(testing::Eventually(testing::ScaledTimeout(std::chrono::seconds(10)), [&] {
    return Get().Sum("physmem_alloc_waits_total", {{"outcome", "cancelled"}}) == 1;
  })) << "the cancelled call is still parked: its cancel did not wake the waiter thread";
}

TEST_F(Metrics, LeaseCountersMoveAsDriven) {
  // The short lease expires when the test moves the daemon's lease clock past its TTL, not while
  // a slow machine is still allocating into it and scraping.
  daemon_.reset();
  ASSERT_NO_FATAL_FAILURE(StartDaemon({}, testing::LeaseClockMode::kTestControlled));
  constexpr auto kShortTtl = std::chrono::milliseconds(60000);
  const uint64_t a = NewLease("a");  // an hour: outlives the clock's move
  const uint64_t short_lived = NewLease("short", kShortTtl.count());
  ASSERT_TRUE(Alloc(a, "GFP_KERNEL", 3).ok());
  ASSERT_TRUE(Alloc(short_lived, "GFP_KERNEL", 1).ok());
  Scrape m = Get();
  EXPECT_EQ(m.Sum("physmem_leases_active"), 2);
  EXPECT_EQ(m.Sum("physmem_leases_created_total"), 2);
  EXPECT_EQ(m.Sum("physmem_lease_held_pages", {{"lease_name", "a"}}), 8);
  EXPECT_EQ(m.Sum("physmem_lease_held_pages", {{"lease_name", "short"}}), 2);
  // The short lease expires (no keep-alive): its 2 pages come back. The reaper adds its reclaimed
  // pages to the counter after the expiry line, hence the wait for both.
  ASSERT_NO_FATAL_FAILURE(ExpireByClock(short_lived, kShortTtl));
  EXPECT_TRUE(testing::Eventually(testing::ScaledTimeout(std::chrono::seconds(5)), [&] {
    m = Get();
    return m.Sum("physmem_leases_expired_total") >= 1 && m.Sum("physmem_lease_pages_reclaimed_total") >= 2;
  }));
  EXPECT_EQ(m.Sum("physmem_leases_expired_total"), 1);
  EXPECT_EQ(m.Sum("physmem_lease_pages_reclaimed_total"), 2);
  EXPECT_EQ(m.Sum("physmem_leases_active"), 1);
  EXPECT_TRUE(m.All("physmem_lease_held_pages").size() == 1);
  ASSERT_TRUE(testing::RevokeLease(stub_.get(), a).ok());
  m = Get();
  EXPECT_EQ(m.Sum("physmem_leases_revoked_total"), 1);
  EXPECT_EQ(m.Sum("physmem_lease_pages_reclaimed_total"), 2 + 8);
  EXPECT_EQ(m.Sum("physmem_leases_active"), 0);
  EXPECT_TRUE(m.All("physmem_lease_held_pages").empty());
}

TEST_F(Metrics, LeaseNameCardinalityIsBoundedWithOther) {
  daemon_.reset();
  // Names may repeat here (as they do across identities): the metric sums the leases sharing one.
  StartDaemon({"--metrics_max_lease_names=2", "--nounique_lease_names"});
  // Pages by name: big 8, mid 4, small 2, tiny 1, unnamed 1 (+ big again 8 in a second lease).
  const std::vector<std::pair<std::string, uint32_t>> leases = {
      {"big", 3}, {"mid", 2}, {"small", 1}, {"tiny", 0}, {"", 0}, {"big", 3}};
  for (const auto& [name, order] : leases) ASSERT_TRUE(Alloc(NewLease(name), "GFP_KERNEL", order).ok());
  const Scrape m = Get();
  EXPECT_EQ(m.All("physmem_lease_held_pages").size(), 3u);  // big, mid, (other)
  EXPECT_EQ(m.Sum("physmem_lease_held_pages", {{"lease_name", "big"}}), 16);
  EXPECT_EQ(m.Sum("physmem_lease_held_pages", {{"lease_name", "mid"}}), 4);
  EXPECT_EQ(m.Sum("physmem_lease_held_pages", {{"lease_name", "(other)"}}), 2 + 1 + 1);
  EXPECT_EQ(m.Sum("physmem_lease_held_pages"), 16 + 4 + 2 + 1 + 1);
}

TEST_F(Metrics, UnnamedLeasesAreLabelledUnnamed) {
  ASSERT_TRUE(Alloc(NewLease(""), "GFP_KERNEL", 1).ok());
  EXPECT_EQ(Get().Sum("physmem_lease_held_pages", {{"lease_name", "(unnamed)"}}), 2);
}

TEST_F(Metrics, EmptyListenTurnsMetricsOff) {
  daemon_.reset();
  StartDaemon({"--metrics_listen="});
  EXPECT_EQ(daemon_->metrics_port(), 0);
  EXPECT_THAT(daemon_->log(), ::testing::HasSubstr("metrics=off"));
  // The daemon still serves.
  EXPECT_NE(NewLease(), 0u);
}

TEST_F(Metrics, AnAddressInUseIsAStartupError) {
  const int port = daemon_->metrics_port();
  ASSERT_NE(port, 0);
  testing::DaemonProcess second({"--target=i386", "--metrics_listen=127.0.0.1:" + std::to_string(port)});
  EXPECT_FALSE(second.Start());
  EXPECT_THAT(second.log(), ::testing::HasSubstr("cannot serve metrics on 127.0.0.1:" + std::to_string(port)));
  // Why, and the flag that changes it; exit 2, as for bad flags.
  EXPECT_THAT(second.log(), ::testing::HasSubstr("the port is in use"));
  EXPECT_THAT(second.log(), ::testing::HasSubstr("--metrics_listen=HOST:PORT"));
  const std::optional<int> st = second.exit_status();  // Start() saw it exit
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << "wait status " << *st;
}

}  // namespace
}  // namespace physmem
