// libFuzzer target: the custom target-profile parser (allocator/target.h, ParseTargetText), which
// reads a Protobuf text file given with --target_file.
//
// Every input is either refused with INVALID_ARGUMENT and a message that starts with the source
// name, or accepted as a consistent Target:
//   - ValidateTarget(t) is OK and page_size == 1 << page_shift;
//   - the configured zones are ordered (zone_end increasing, the highest one unbounded);
//   - RAM ranges are sorted, disjoint, non-empty and page aligned, and each lies in configured
//     zones only;
//   - ToProto(t) printed and parsed again gives the same Target (the GetTarget reply is a
//     profile the daemon accepts);
//   - a small target (at most 4096 pages) boots: PageAllocator::Create succeeds and Validate()
//     counts every page free.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <google/protobuf/text_format.h>

#include "allocator/page_allocator.h"
#include "allocator/target.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "target_profile_fuzz: %s\n", what.c_str());
  std::abort();
}

constexpr std::string_view kSource = "fuzz.textproto";
constexpr uint64_t kMaxBootPages = 4096;

void CheckConsistent(const physmem::Target& t) {
  if (absl::Status v = physmem::ValidateTarget(t); !v.ok()) Fail("accepted but ValidateTarget says " + v.ToString());
  if (t.page_size != uint64_t{1} << t.page_shift) Fail("page_size != 1 << page_shift");
  if (!t.zone_configured[physmem::ZONE_NORMAL]) Fail("no ZONE_NORMAL");
  uint64_t prev_end = 0;
  int highest = -1;
  for (int z = 0; z < physmem::MAX_NR_ZONES; ++z) {
    if (!t.zone_configured[z]) continue;
    if (t.zone_end[z] < prev_end) Fail("zone ends decreasing");  // equal: an empty zone (arm64 DMA32)
    prev_end = t.zone_end[z];
    highest = z;
  }
  if (t.zone_end[highest] != UINT64_MAX) Fail("highest zone is bounded");
  if (t.ram.empty()) Fail("no RAM");
  for (size_t i = 0; i < t.ram.size(); ++i) {
    const physmem::RamRange& r = t.ram[i];
    if (r.size == 0 || r.start % t.page_size != 0 || r.size % t.page_size != 0) Fail("RAM range empty or unaligned");
    if (r.end() < r.start) Fail("RAM range wraps");
    if (i > 0 && r.start <= t.ram[i - 1].end() - 1) Fail("RAM ranges overlap or unsorted");
  }
}

void CheckReprint(const physmem::Target& t) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(physmem::ToProto(t), &text)) Fail("cannot print ToProto");
  absl::StatusOr<physmem::Target> again = physmem::ParseTargetText(text, "reprinted.textproto");
  if (!again.ok()) Fail("ToProto's text refused: " + again.status().ToString() + "\n" + text);
  if (!(*again == t)) Fail("ToProto's text parses to a different Target:\n" + text);
}

void CheckBoots(const physmem::Target& t) {
  if (t.total_pages() > kMaxBootPages) return;
  physmem::PageAllocatorOptions o;
  o.target = t;
  o.arena_backing = physmem::ArenaOptions::Backing::kOrdinary;
  o.nr_cpus = 2;
  absl::StatusOr<std::unique_ptr<physmem::PageAllocator>> pa = physmem::PageAllocator::Create(std::move(o));
  if (!pa.ok()) {
    // The only refusal left for a valid target is the host refusing memory.
    if (pa.status().code() == absl::StatusCode::kResourceExhausted) return;
    Fail("valid target does not boot: " + pa.status().ToString());
  }
  absl::StatusOr<physmem::PageCensus> c = (*pa)->Validate();
  if (!c.ok()) Fail("fresh allocator fails Validate: " + c.status().ToString());
  // The census counts managed pages: RAM less the memblock-reserved ranges.
  if (c->allocated_pages != 0 || c->total_pages != t.managed_pages()) Fail("fresh census does not add up");
  physmem::Page* p = (*pa)->alloc_pages(physmem::GFP_KERNEL, 0);
  if (p != nullptr && !(*pa)->__free_pages(p, 0).ok()) Fail("cannot free a fresh page");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<physmem::Target> t = physmem::ParseTargetText(text, kSource);
  if (!t.ok()) {
    const std::string msg(t.status().message());
    if (t.status().code() != absl::StatusCode::kInvalidArgument) Fail("refused with " + t.status().ToString());
    if (msg.rfind(std::string(kSource), 0) != 0) Fail("refusal does not name the source: " + msg);
    return 0;
  }
  CheckConsistent(*t);
  CheckReprint(*t);
  CheckBoots(*t);
  return 0;
}
