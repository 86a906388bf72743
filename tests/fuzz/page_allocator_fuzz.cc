// libFuzzer target: the page allocator driven by an operation stream from the fuzz input, against
// the reference model the differential test uses (tests/allocator/reference_model.h).
//
// Input: byte 0 picks the machine (small x86 with holes, or small i386 with HIGHMEM and a
// 16-slot kmap window), whether the per-CPU lists are on, 8-page pageblocks (a pageblock_order
// override, so that claims, steals and a highatomic reserve happen on a small machine), mobility
// grouping off (page_group_by_mobility = false), and per-thread page caches (thread_pages); every following op starts with one
// byte choosing among: alloc (order, gfp from a table or raw bits, owner), free a held block,
// a free the model may refuse (pfn near a block, any order and owner), drain, alloc_pages_bulk,
// kmap/kunmap of a held page (with a free attempted while mapped), the address forms
// (__get_free_pages / free_pages), and the trusted free of a held block (__free_pages_trusted). At most kMaxOps ops run per input, so executions stay fast.
//
// Checked after every op: every allocation is one the model accepts (aligned, RAM, allowed zone,
// not handed out twice); every failure is justified after a drain; every free answers with the
// model's code and a refused one changes nothing; free pages per zone equal the model's. Every
// 16 ops and at the end Validate() (which checks the migratetype invariants: per-type counts,
// every pageblock typed, free blocks on their pageblock's list, the highatomic bound) and the
// model's MigratetypesConsistent() must pass; at the end everything is freed and the census must
// show all pages free.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "allocator/page_allocator.h"
#include "tests/allocator/reference_model.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

constexpr int kMaxOps = 256;
constexpr gfp_t kMasks[] = {GFP_KERNEL, GFP_ATOMIC, GFP_NOWAIT, GFP_USER, GFP_HIGHUSER, GFP_DMA, GFP_DMA32,
                            GFP_KERNEL | __GFP_ZERO, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_HIGH,
                            GFP_KERNEL | __GFP_DMA32 | __GFP_NORETRY, GFP_ATOMIC | __GFP_DMA,
                            GFP_KERNEL | __GFP_MEMALLOC, GFP_NOWAIT | __GFP_NOMEMALLOC};

[[noreturn]] void Fail(int op, const std::string& what) {
  std::fprintf(stderr, "page_allocator_fuzz: op %d: %s\n", op, what.c_str());
  std::abort();
}

void Check(int op, const ::testing::AssertionResult& r) {
  if (!r) Fail(op, r.message());
}

class Driver {
 public:
  Driver(PageAllocator& pa, FuzzedDataProvider& in) : pa_(pa), in_(in), model_(pa) {}

  void Run() {
    for (op_ = 0; op_ < kMaxOps && in_.remaining_bytes() > 0; ++op_) {
      switch (in_.ConsumeIntegralInRange<int>(0, 8)) {
        case 0: case 1: Alloc(); break;
        case 2: FreeHeld(); break;
        case 3: FreeMaybeRefused(); break;
        case 4: pa_.drain_all_pages(); break;
        case 5: Bulk(); break;
        case 6: KmapCycle(); break;
        case 7: AddressForms(); break;
        case 8: FreeHeldTrusted(); break;
      }
      CheckFreeCounts();
      if (op_ % 16 == 0) CheckValidate();
    }
    FreeEverything();
  }

 private:
  gfp_t ConsumeGfp() {
    if (in_.ConsumeBool()) return kMasks[in_.ConsumeIntegralInRange<size_t>(0, std::size(kMasks) - 1)];
    return in_.ConsumeIntegral<uint32_t>();  // raw bits: usually refused by ValidateGfp
  }
  uint32_t ConsumeOwner() { return in_.ConsumeIntegralInRange<uint32_t>(1, 3); }

  // A block the model holds, chosen by the input; nullptr if none.
  const std::pair<const uint64_t, testing::ReferenceModel::Block>* PickBlock() {
    if (model_.blocks().empty()) return nullptr;
    auto it = model_.blocks().begin();
    std::advance(it, in_.ConsumeIntegralInRange<size_t>(0, model_.blocks().size() - 1));
    return &*it;
  }

  void Alloc() {
    const unsigned order = in_.ConsumeIntegralInRange<unsigned>(0, 11);
    const gfp_t gfp = ConsumeGfp();
    const uint32_t owner = ConsumeOwner();
    absl::StatusOr<Page*> p = pa_.AllocPages(gfp, order, owner);
    if (p.ok()) {
      Check(op_, model_.Allocated(pa_.page_to_pfn(*p), order, owner, gfp));
      if ((gfp & __GFP_ZERO) && !IsZeroed(*p, order)) Fail(op_, "__GFP_ZERO block is not zeroed");
      Scribble(*p, order);
      return;
    }
    if (p.status().code() == absl::StatusCode::kInvalidArgument) {
      // A bad mask or order: refused before touching anything.
      if (ValidateGfp(gfp).ok() && order <= pa_.target().max_page_order) {
        Fail(op_, "valid request refused: " + p.status().ToString());
      }
      return;
    }
    if (p.status().code() != absl::StatusCode::kResourceExhausted) Fail(op_, "alloc: " + p.status().ToString());
    // Only a blocking caller is drained for before failing (__alloc_pages_direct_reclaim()).
    const uint64_t listed = gfpflags_allow_blocking(gfp) ? 0 : model_.ListedPagesOnZonelist(gfp, pa_.Stats());
    pa_.drain_all_pages();
    if (listed == 0) Check(op_, model_.FailureJustified(gfp, order, pa_.Stats()));
  }

  void FreeHeld() {
    const auto* b = PickBlock();
    if (b == nullptr) return;
    const uint64_t pfn = b->first;
    const absl::Status s = pa_.FreePfn(pfn, b->second.order, b->second.owner);
    if (!s.ok()) Fail(op_, "free of a held block refused: " + s.ToString());
    model_.Freed(pfn);
  }

  // The trusted free (__free_pages_trusted()), issued only for a block the model says is held,
  // with its order and owner: the promise the lease book makes. A violation would abort in this
  // build (PHYSMEM_DCHECK); the free must succeed (no held block is kmap()ed between ops).
  void FreeHeldTrusted() {
    const auto* b = PickBlock();
    if (b == nullptr) return;
    const uint64_t pfn = b->first;
    absl::StatusOr<Page*> page = pa_.PfnToPage(pfn);
    if (!page.ok()) Fail(op_, "held block at a pfn that is not RAM: " + page.status().ToString());
    const absl::Status s = pa_.__free_pages_trusted(*page, b->second.order, b->second.owner);
    if (!s.ok()) Fail(op_, "trusted free of a held block refused: " + s.ToString());
    model_.Freed(pfn);
  }

  void FreeMaybeRefused() {
    uint64_t pfn;
    const uint64_t last_pfn = pa_.target().ram.back().end() >> pa_.target().page_shift;
    if (const auto* b = in_.ConsumeBool() ? PickBlock() : nullptr) {
      pfn = b->first + in_.ConsumeIntegralInRange<uint64_t>(0, 3);
    } else {
      pfn = in_.ConsumeIntegralInRange<uint64_t>(0, last_pfn + 16);
    }
    const unsigned order = in_.ConsumeIntegralInRange<unsigned>(0, 12);
    const uint32_t owner = ConsumeOwner();
    const absl::StatusCode want = model_.ExpectedFree(pfn, order, owner);
    const absl::Status got = pa_.FreePfn(pfn, order, owner);
    if (got.code() != want) {
      Fail(op_, "free pfn " + std::to_string(pfn) + " order " + std::to_string(order) + " owner " +
                    std::to_string(owner) + ": got " + got.ToString() + ", model says " +
                    absl::StatusCodeToString(want));
    }
    if (got.ok()) model_.Freed(pfn);
  }

  void Bulk() {
    const gfp_t gfp = kMasks[in_.ConsumeIntegralInRange<size_t>(0, std::size(kMasks) - 1)];
    const unsigned nr = in_.ConsumeIntegralInRange<unsigned>(0, 64);
    const uint32_t owner = ConsumeOwner();
    std::vector<Page*> array(nr, nullptr);
    // Slots already populated must be left alone: mark a few with a sentinel held block.
    const auto* held = PickBlock();
    Page* sentinel = held ? *pa_.PfnToPage(held->first) : nullptr;
    for (unsigned i = 0; i < nr && sentinel; ++i) {
      if (in_.ConsumeBool()) array[i] = sentinel;
    }
    unsigned preset = 0;
    for (Page* p : array) preset += p != nullptr;
    unsigned preset_prefix = 0;
    while (preset_prefix < nr && array[preset_prefix] != nullptr) ++preset_prefix;
    const std::vector<Page*> before = array;
    const unsigned got = pa_.alloc_pages_bulk(gfp, nr, array.data(), owner);
    unsigned populated = 0;
    for (unsigned i = 0; i < nr; ++i) {
      if (array[i] == nullptr) continue;
      ++populated;
      if (before[i] != nullptr) {
        if (array[i] != before[i]) Fail(op_, "alloc_pages_bulk overwrote a populated slot");
        continue;
      }
      if (i >= got) Fail(op_, "alloc_pages_bulk filled a slot beyond the count it returned");
      Check(op_, model_.Allocated(pa_.page_to_pfn(array[i]), 0, owner, gfp));
    }
    // alloc_pages_bulk_noprof() returns nr_populated, an index: every slot below it is populated.
    for (unsigned i = 0; i < got && i < nr; ++i) {
      if (array[i] == nullptr) Fail(op_, "alloc_pages_bulk returned a count past a null slot");
    }
    if (got > nr || got < preset_prefix || populated < preset) Fail(op_, "alloc_pages_bulk count out of range");
  }

  void KmapCycle() {
    const auto* b = PickBlock();
    if (b == nullptr) return;
    const uint64_t head = b->first;
    const auto block = b->second;
    const uint64_t pfn = head + in_.ConsumeIntegralInRange<uint64_t>(0, (1u << block.order) - 1);
    Page* page = *pa_.PfnToPage(pfn);
    const bool wrong_owner = in_.ConsumeIntegralInRange<int>(0, 3) == 0;
    const uint32_t owner = wrong_owner ? block.owner % 3 + 1 : block.owner;
    absl::StatusOr<uint64_t> addr = pa_.kmap(page, owner);
    if (wrong_owner) {
      if (addr.status().code() != absl::StatusCode::kPermissionDenied) Fail(op_, "kmap by another owner: " + addr.status().ToString());
      return;
    }
    if (!addr.ok()) {
      // Only a full window refuses the owner (this driver unmaps at once, so never).
      Fail(op_, "kmap: " + addr.status().ToString());
    }
    if (*addr == 0 || pa_.page_address(page) != *addr) Fail(op_, "kmap address differs from page_address");
    if (block.zone == ZONE_HIGHMEM) {
      // Mapped: a free by the owner must be refused and change nothing.
      const absl::Status s = pa_.FreePfn(head, block.order, block.owner);
      if (s.code() != absl::StatusCode::kFailedPrecondition) Fail(op_, "free of a kmapped block: " + s.ToString());
    }
    if (absl::Status s = pa_.kunmap(page, owner); !s.ok()) Fail(op_, "kunmap: " + s.ToString());
    // kunmap_high() leaves the slot mapped at pkmap_count 1 until the window wraps
    // (flush_all_zero_pkmaps()): the address stays, with no user, so a free now succeeds.
    if (pa_.page_address(page) != *addr) Fail(op_, "kunmap changed page_address before a flush");
  }

  void AddressForms() {
    const unsigned order = in_.ConsumeIntegralInRange<unsigned>(0, 4);
    const gfp_t gfp = kMasks[in_.ConsumeIntegralInRange<size_t>(0, std::size(kMasks) - 1)];
    const uint32_t owner = ConsumeOwner();
    const uint64_t addr = pa_.__get_free_pages(gfp, order, owner);
    if (addr == 0) return;  // failure justification is Alloc()'s job; __GFP_HIGHMEM is stripped here
    absl::StatusOr<Page*> page = pa_.VirtToPage(addr);
    if (!page.ok()) Fail(op_, "__get_free_pages returned a non-page address: " + page.status().ToString());
    const uint64_t pfn = pa_.page_to_pfn(*page);
    if (pa_.page_zonenum(*page) == ZONE_HIGHMEM) Fail(op_, "__get_free_pages returned HIGHMEM");
    Check(op_, model_.Allocated(pfn, order, owner, gfp & ~__GFP_HIGHMEM));
    if (in_.ConsumeBool()) {
      const absl::Status s = pa_.free_pages(addr, order, owner);
      if (!s.ok()) Fail(op_, "free_pages of a fresh address: " + s.ToString());
      model_.Freed(pfn);
    }
  }

  bool IsZeroed(Page* p, unsigned order) const {
    const std::byte* host = pa_.page_host_address(p);
    for (uint64_t i = 0; i < (pa_.target().page_size << order); ++i) {
      if (host[i] != std::byte{0}) return false;
    }
    return true;
  }
  // Dirty the block so a later __GFP_ZERO reuse has something to clear (and ASan sees the
  // whole block is writable host memory).
  void Scribble(Page* p, unsigned order) const {
    std::byte* host = pa_.page_host_address(p);
    host[0] = std::byte{0xa5};
    host[(pa_.target().page_size << order) - 1] = std::byte{0x5a};
  }

  void CheckFreeCounts() {
    for (const ZoneStats& z : pa_.Stats()) {
      if (z.free_pages != model_.free_pages(z.type)) {
        Fail(op_, std::string("zone ") + std::string(zone_name(z.type)) + " free " + std::to_string(z.free_pages) +
                      ", model " + std::to_string(model_.free_pages(z.type)));
      }
    }
  }
  void CheckValidate() {
    absl::StatusOr<PageCensus> c = pa_.Validate();
    if (!c.ok()) Fail(op_, "Validate: " + c.status().ToString());
    if (c->allocated_pages + c->buddy_free_pages + c->pcp_pages != c->total_pages) Fail(op_, "census does not add up");
    Check(op_, model_.MigratetypesConsistent(pa_.Stats()));
  }

  void FreeEverything() {
    while (!model_.blocks().empty()) {
      auto it = model_.blocks().begin();
      const uint64_t pfn = it->first;
      if (absl::Status s = pa_.FreePfn(pfn, it->second.order, it->second.owner); !s.ok()) {
        Fail(op_, "final free: " + s.ToString());
      }
      model_.Freed(pfn);
    }
    pa_.drain_all_pages();
    absl::StatusOr<PageCensus> c = pa_.Validate();
    if (!c.ok()) Fail(op_, "final Validate: " + c.status().ToString());
    if (c->allocated_pages != 0 || c->buddy_free_pages != c->total_pages) Fail(op_, "pages lost at the end");
  }

  PageAllocator& pa_;
  FuzzedDataProvider& in_;
  testing::ReferenceModel model_;
  int op_ = 0;
};

}  // namespace
}  // namespace physmem

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace physmem;
  FuzzedDataProvider in(data, size);
  const uint8_t setup = in.ConsumeIntegral<uint8_t>();
  Target t = (setup & 1) ? physmem::testing::SmallI386() : physmem::testing::SmallX86();
  if (setup & 4) t.pageblock_order_override = 3;
  PageAllocatorOptions o = physmem::testing::SmallOptions(std::move(t), /*pcp=*/(setup & 2) == 0);
  o.page_group_by_mobility = (setup & 8) == 0;
  o.thread_pages = (setup & 16) != 0;  // per-thread caches in front of the lists (with pcp on)
  o.pcp_batch = 7;
  o.pcp_high = 48;
  o.nr_cpus = 2;
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(std::move(o));
  if (!pa.ok()) {
    std::fprintf(stderr, "page_allocator_fuzz: cannot create the allocator: %s\n", pa.status().ToString().c_str());
    std::abort();
  }
  Driver(**pa, in).Run();
  return 0;
}
