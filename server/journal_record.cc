#include "server/journal_record.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace physmem {
namespace {

constexpr uint32_t kHeadMagic = 0x4A524543;  // 'JREC'
constexpr uint32_t kContMagic = 0x4A434F4E;  // 'JCON'

// ---- CRC32C ----

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

uint32_t Crc32cSoft(uint32_t crc, const uint8_t* p, size_t n) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  crc = ~crc;
  while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHw(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}
#endif

// ---- Payload encoding: little-endian fields in a fixed order, strings as u16 length + bytes ----

class Writer {
 public:
  template <typename T>
  Writer& Put(T v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(v));
    return *this;
  }
  Writer& PutStr(std::string_view s) {
    s = s.substr(0, 65535);
    Put(static_cast<uint16_t>(s.size()));
    buf_.append(s.data(), s.size());
    return *this;
  }
  std::string& buf() { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() < sizeof(T)) return false;
    std::memcpy(v, s_.data(), sizeof(T));
    s_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetStr(std::string* out) {
    uint16_t n;
    if (!Get(&n) || s_.size() < n) return false;
    out->assign(s_.data(), n);
    s_.remove_prefix(n);
    return true;
  }

 private:
  std::string_view s_;
};

// pfn:48 | flags:8 | order:8 (flags: 1 = compound, 2 = a key follows)
uint64_t PackEntry(uint64_t pfn, uint8_t order, bool compound, bool has_key) {
  return pfn << 16 | uint64_t{compound ? 1u : 0u} << 8 | uint64_t{has_key ? 2u : 0u} << 8 | order;
}

uint32_t RecordCrc(uint64_t word, uint64_t seq, uint32_t len, const char* payload) {
  uint8_t hdr[16];
  const uint32_t low = static_cast<uint32_t>(word);
  std::memcpy(hdr, &low, 4);
  std::memcpy(hdr + 4, &seq, 8);
  std::memcpy(hdr + 12, &len, 4);
  return Crc32c(Crc32c(0, hdr, sizeof(hdr)), payload, len);
}

}  // namespace

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return Crc32cHw(crc, p, n);
#endif
  return Crc32cSoft(crc, p, n);
}

// ---- Payloads ----

std::string EncodeMeta(uint64_t nonce, uint32_t next_id) {
  Writer w;
  w.Put(nonce).Put(next_id);
  return std::move(w.buf());
}

std::string EncodeLeaseCreated(uint64_t id, std::string_view identity, std::string_view name, int64_t ttl_ms,
                               uint64_t quota, int64_t deadline_ns) {
  Writer w;
  w.Put(id).Put(deadline_ns).Put(ttl_ms).Put(quota).PutStr(identity).PutStr(name);
  return std::move(w.buf());
}

std::string EncodeLeaseRenewed(uint64_t id, int64_t deadline_ns) {
  Writer w;
  w.Put(id).Put(deadline_ns);
  return std::move(w.buf());
}

std::string EncodeLeaseEnded(uint64_t id) {
  Writer w;
  w.Put(id);
  return std::move(w.buf());
}

std::string EncodeAllocated(uint64_t lease_id, std::span<const JournalEntry> entries) {
  Writer w;
  w.buf().reserve(12 + entries.size() * 8);
  w.Put(lease_id).Put(static_cast<uint32_t>(entries.size()));
  for (const JournalEntry& e : entries) {
    w.Put(PackEntry(e.pfn, e.order, e.compound, !e.key.empty()));
    if (!e.key.empty()) w.PutStr(e.key);
  }
  return std::move(w.buf());
}

std::string EncodeFreed(uint64_t lease_id, uint64_t pfn) {
  Writer w;
  w.Put(lease_id).Put(pfn);
  return std::move(w.buf());
}

std::string EncodeRuns(uint64_t lease_id, std::span<const JournalRun> runs) {
  Writer w;
  w.buf().reserve(12 + runs.size() * 12);
  w.Put(lease_id).Put(static_cast<uint32_t>(runs.size()));
  for (const JournalRun& r : runs) w.Put(r.pfn).Put(r.count);
  return std::move(w.buf());
}

namespace {

// kJournalAllocRuns (alloc) or kJournalFreeRuns: each page of each run as its own order-0 block,
// as the per-page records would have folded it. A page past 2^64 does not parse.
bool ApplyRuns(Reader& r, bool alloc, JournalState* st) {
  uint64_t id;
  uint32_t count;
  if (!r.Get(&id) || !r.Get(&count)) return false;
  auto it = st->leases.find(id);
  if (it == st->leases.end()) ++st->anomalies;
  JournalLease* lease = it == st->leases.end() ? nullptr : &it->second;
  for (uint32_t i = 0; i < count; ++i) {
    JournalRun run;
    if (!r.Get(&run.pfn) || !r.Get(&run.count)) return false;
    if (run.pfn + run.count < run.pfn) return false;
    if (lease == nullptr) continue;
    if (alloc) lease->blocks.reserve(lease->blocks.size() + run.count);
    for (uint64_t pfn = run.pfn; pfn - run.pfn < run.count; ++pfn) {
      const bool changed = alloc ? lease->blocks.try_emplace(pfn).second : lease->blocks.erase(pfn) != 0;
      if (!changed) ++st->anomalies;
    }
  }
  return true;
}

}  // namespace

bool ApplyRecord(uint8_t type, std::string_view payload, JournalState* st) {
  Reader r(payload);
  uint64_t id = 0;
  switch (type) {
    case kJournalMeta: {
      uint64_t nonce;
      uint32_t next;
      if (!r.Get(&nonce) || !r.Get(&next)) return false;
      st->nonce = nonce;
      st->next_id = std::max(st->next_id, next);
      return true;
    }
    case kJournalLeaseCreate: {
      JournalLease l;
      if (!r.Get(&l.id) || !r.Get(&l.deadline_ns) || !r.Get(&l.ttl_ms) || !r.Get(&l.quota) || !r.GetStr(&l.identity) ||
          !r.GetStr(&l.name)) {
        return false;
      }
      if (st->nonce == 0) st->nonce = l.id & ~uint64_t{0xffffffff};
      st->next_id = std::max<uint32_t>(st->next_id, static_cast<uint32_t>(l.id) + 1);
      if (st->leases.contains(l.id)) ++st->anomalies;
      const uint64_t lid = l.id;
      st->leases[lid] = std::move(l);
      return true;
    }
    case kJournalLeaseRenew: {
      int64_t deadline;
      if (!r.Get(&id) || !r.Get(&deadline)) return false;
      auto it = st->leases.find(id);
      if (it == st->leases.end()) {
        ++st->anomalies;
      } else {
        it->second.deadline_ns = deadline;
      }
      return true;
    }
    case kJournalLeaseEnd: {
      if (!r.Get(&id)) return false;
      if (st->leases.erase(id) == 0) ++st->anomalies;
      return true;
    }
    case kJournalAlloc: {
      uint32_t count;
      if (!r.Get(&id) || !r.Get(&count)) return false;
      auto it = st->leases.find(id);
      if (it == st->leases.end()) ++st->anomalies;
      JournalLease* lease = it == st->leases.end() ? nullptr : &it->second;
      if (lease != nullptr) lease->blocks.reserve(lease->blocks.size() + count);
      for (uint32_t i = 0; i < count; ++i) {
        uint64_t word;
        if (!r.Get(&word)) return false;
        JournalBlock b;
        b.order = static_cast<uint8_t>(word);
        b.compound = (word >> 8) & 1;
        if ((word >> 8) & 2) {
          if (!r.GetStr(&b.key)) return false;
        }
        if (lease == nullptr) continue;
        if (!lease->blocks.try_emplace(word >> 16, std::move(b)).second) ++st->anomalies;
      }
      return true;
    }
    case kJournalFree: {
      uint64_t pfn;
      if (!r.Get(&id) || !r.Get(&pfn)) return false;
      auto it = st->leases.find(id);
      if (it == st->leases.end() || it->second.blocks.erase(pfn) == 0) ++st->anomalies;
      return true;
    }
    case kJournalAllocRuns:
    case kJournalFreeRuns:
      return ApplyRuns(r, type == kJournalAllocRuns, st);
    default:
      return false;
  }
}

// ---- Slot framing ----

uint32_t JournalSlotsFor(size_t payload) {
  if (payload <= kJournalHeadPayload) return 1;
  return 1 + static_cast<uint32_t>((payload - kJournalHeadPayload + kJournalContPayload - 1) / kJournalContPayload);
}

void WriteRecord(uint8_t* dst, uint64_t seq, uint8_t type, std::string_view payload) {
  const size_t len = payload.size();
  const uint32_t nslots = JournalSlotsFor(len);
  size_t done = std::min(len, kJournalHeadPayload);
  for (uint32_t j = 1; j < nslots; ++j) {
    uint8_t* slot = dst + j * kJournalSlotBytes;
    const uint64_t cont = uint64_t{kContMagic} << 32 | j;
    std::memcpy(slot, &cont, 8);
    const size_t n = std::min(kJournalContPayload, len - done);
    std::memcpy(slot + 8, payload.data() + done, n);
    std::memset(slot + 8 + n, 0, kJournalContPayload - n);
    done += n;
  }
  const uint64_t word = uint64_t{kHeadMagic} << 32 | uint64_t{nslots} << 8 | type;
  const uint32_t len32 = static_cast<uint32_t>(len);
  const uint32_t crc = RecordCrc(word, seq, len32, payload.data());
  std::memcpy(dst + 8, &seq, 8);
  std::memcpy(dst + 16, &len32, 4);
  std::memcpy(dst + 20, &crc, 4);
  const size_t n0 = std::min(len, kJournalHeadPayload);
  std::memcpy(dst + 24, payload.data(), n0);
  std::memset(dst + 24 + n0, 0, kJournalHeadPayload - n0);
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(dst)).store(word, std::memory_order_release);
}

uint32_t ReadRecordAt(const uint8_t* slots, uint64_t n, uint64_t i, uint64_t gen, uint8_t* type, std::string* payload) {
  const uint8_t* s = slots + i * kJournalSlotBytes;
  uint64_t word;
  std::memcpy(&word, s, 8);
  const uint32_t nslots = static_cast<uint32_t>(word >> 8) & 0xffffff;
  uint64_t seq;
  uint32_t len, crc;
  std::memcpy(&seq, s + 8, 8);
  std::memcpy(&len, s + 16, 4);
  std::memcpy(&crc, s + 20, 4);
  if ((word >> 32) != kHeadMagic || nslots == 0 || i + nslots > n || seq != (gen << 32 | i) ||
      JournalSlotsFor(len) != nslots) {
    return 0;
  }
  payload->assign(reinterpret_cast<const char*>(s + 24), std::min<size_t>(len, kJournalHeadPayload));
  for (uint32_t j = 1; j < nslots; ++j) {
    const uint8_t* c = s + j * kJournalSlotBytes;
    uint64_t cont;
    std::memcpy(&cont, c, 8);
    if (cont != (uint64_t{kContMagic} << 32 | j)) return 0;
    payload->append(reinterpret_cast<const char*>(c + 8), std::min<size_t>(kJournalContPayload, len - payload->size()));
  }
  if (RecordCrc(word, seq, len, payload->data()) != crc) return 0;
  *type = static_cast<uint8_t>(word);
  return nslots;
}

}  // namespace physmem
