// The soak test's ledger of held blocks, and the check that no page was ever held by two owners
// at once ("double hand").
//
// Every soak client appends one record per block it held: the pfn range and a time interval,
// taken from CLOCK_MONOTONIC (std::chrono::steady_clock on Linux), which every process on the
// machine shares. The interval is deliberately an UNDER-estimate of the true holding time:
//   start = when the client received the allocation's reply  (the daemon allocated earlier),
//   end   = just before the client sent the free/revoke      (the daemon freed later), or, for a
//           block whose lease was abandoned to expire, the send time of the last request that
//           proved the lease alive plus its TTL (the daemon cannot have expired it earlier).
// True holding intervals of one page never overlap, so these shorter ones never overlap either:
// any overlap the checker finds is a real double allocation, never a timing artefact.
//
// Who uses it: tests/soak/soak_client.cc (LedgerWriter), tests/soak/ledger_check.cc and
// tests/soak/ledger_test.cc (CheckLedger). Thread-safety: LedgerWriter::Append is thread-safe;
// CheckLedger is a pure function.
#ifndef PHYSMEM_TESTS_SOAK_LEDGER_H_
#define PHYSMEM_TESTS_SOAK_LEDGER_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <queue>
#include <string>
#include <vector>

namespace physmem::soak {

// 32 bytes, written raw (the writer and the checker run on the same machine).
struct LedgerRecord {
  uint64_t pfn;
  uint32_t order;
  uint32_t owner;    // client number << 16 | thread number: who held it
  int64_t start_ns;  // steady_clock, see above
  int64_t end_ns;
};
static_assert(sizeof(LedgerRecord) == 32);

class LedgerWriter {
 public:
  // Empty path: records are dropped (no ledger asked for).
  explicit LedgerWriter(const std::string& path) {
    if (!path.empty()) f_ = std::fopen(path.c_str(), "wb");
  }
  ~LedgerWriter() {
    if (f_ != nullptr) std::fclose(f_);
  }
  bool ok(const std::string& path) const { return path.empty() || f_ != nullptr; }
  void Append(const LedgerRecord& r) {
    if (f_ == nullptr || r.end_ns <= r.start_ns) return;  // an empty interval proves nothing
    std::lock_guard<std::mutex> l(mu_);
    std::fwrite(&r, sizeof(r), 1, f_);
    ++records_;
  }
  uint64_t records() const { return records_; }

 private:
  std::mutex mu_;
  std::FILE* f_ = nullptr;
  uint64_t records_ = 0;
};

struct LedgerOverlap {
  LedgerRecord first, second;
};

struct LedgerVerdict {
  uint64_t records = 0;
  uint64_t overlaps = 0;
  std::vector<LedgerOverlap> examples;  // the first few
};

// Sweeps the records in start order, keeping the blocks held at that moment in a map by first
// pfn (held blocks are disjoint, so only the neighbours of a new block can overlap it).
inline LedgerVerdict CheckLedger(std::vector<LedgerRecord> recs) {
  LedgerVerdict v;
  v.records = recs.size();
  std::sort(recs.begin(), recs.end(), [](const LedgerRecord& a, const LedgerRecord& b) { return a.start_ns < b.start_ns; });
  std::map<uint64_t, size_t> held;  // first pfn -> index into recs
  using Ending = std::pair<int64_t, size_t>;  // end_ns, index
  std::priority_queue<Ending, std::vector<Ending>, std::greater<Ending>> endings;
  auto last_pfn = [&](size_t i) { return recs[i].pfn + (uint64_t{1} << recs[i].order); };  // one past
  for (size_t i = 0; i < recs.size(); ++i) {
    const LedgerRecord& r = recs[i];
    while (!endings.empty() && endings.top().first <= r.start_ns) {
      const size_t j = endings.top().second;
      endings.pop();
      auto it = held.find(recs[j].pfn);
      if (it != held.end() && it->second == j) held.erase(it);
    }
    size_t clash = SIZE_MAX;
    auto next = held.lower_bound(r.pfn);
    if (next != held.end() && next->first < last_pfn(i)) clash = next->second;
    if (clash == SIZE_MAX && next != held.begin()) {
      auto prev = std::prev(next);
      if (last_pfn(prev->second) > r.pfn) clash = prev->second;
    }
    if (clash != SIZE_MAX) {
      ++v.overlaps;
      if (v.examples.size() < 10) v.examples.push_back({recs[clash], r});
      continue;  // keep the first holder in the map
    }
    held[r.pfn] = i;
    endings.push({r.end_ns, i});
  }
  return v;
}

inline bool ReadLedgerFile(const std::string& path, std::vector<LedgerRecord>* out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  LedgerRecord r;
  while (std::fread(&r, sizeof(r), 1, f) == 1) out->push_back(r);
  std::fclose(f);
  return true;
}

}  // namespace physmem::soak

#endif  // PHYSMEM_TESTS_SOAK_LEDGER_H_
