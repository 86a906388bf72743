// physmem_soak_ledger_check: reads the soak clients' ledger files and reports, as one JSON
// object on stdout, whether any page was held by two owners at overlapping times (see ledger.h).
// Exit status 0: no overlap; 1: overlaps found; 2: a file could not be read.
//
//   physmem_soak_ledger_check client-0.ledger client-1.ledger ...
#include <cinttypes>
#include <cstdio>

#include "tests/soak/ledger.h"

int main(int argc, char** argv) {
  std::vector<physmem::soak::LedgerRecord> recs;
  for (int i = 1; i < argc; ++i) {
    if (!physmem::soak::ReadLedgerFile(argv[i], &recs)) {
      std::fprintf(stderr, "cannot read ledger %s\n", argv[i]);
      return 2;
    }
  }
  const physmem::soak::LedgerVerdict v = physmem::soak::CheckLedger(std::move(recs));
  std::printf("{\"records\": %" PRIu64 ", \"overlaps\": %" PRIu64 ", \"examples\": [", v.records, v.overlaps);
  for (size_t i = 0; i < v.examples.size(); ++i) {
    const auto& [a, b] = v.examples[i];
    std::printf("%s{\"first\": {\"pfn\": %" PRIu64 ", \"order\": %u, \"owner\": %u, \"start_ns\": %" PRId64
                ", \"end_ns\": %" PRId64 "}, \"second\": {\"pfn\": %" PRIu64 ", \"order\": %u, \"owner\": %u, "
                "\"start_ns\": %" PRId64 ", \"end_ns\": %" PRId64 "}}",
                i ? ", " : "", a.pfn, a.order, a.owner, a.start_ns, a.end_ns, b.pfn, b.order, b.owner, b.start_ns,
                b.end_ns);
  }
  std::printf("]}\n");
  return v.overlaps == 0 ? 0 : 1;
}
