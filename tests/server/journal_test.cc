// Tests server/journal.h on its own: what is appended is what recovery reads back (also after
// compaction, and with appends from several threads); a torn or corrupt record is skipped without
// losing the records after it; client bytes never pass for a record; a crash at every compaction
// step leaves a journal that reads back the same state; a journal for another target is refused.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/journal.h"

namespace physmem {
namespace {

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/dev/shm/physmem-journal-test-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  JournalOptions Options() {
    JournalOptions o;
    o.path = dir_ + "/j";
    o.compact_bytes = 1 << 30;  // tests compact by hand
    o.target_fingerprint = 42;
    return o;
  }
  std::unique_ptr<Journal> Open(JournalState* st) {
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(Options(), st);
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *std::move(j) : nullptr;
  }
  std::unique_ptr<Journal> OpenAndStart(JournalState* st) {
    auto j = Open(st);
    EXPECT_TRUE(j->Start(st->nonce ? st->nonce : uint64_t{7} << 32, st->next_id).ok());
    return j;
  }
  std::string dir_;
};

// The reference model: the same operations applied to a JournalState directly.
class Model {
 public:
  explicit Model(Journal* j) : j_(j) {}
  void Create(uint64_t id, const std::string& who, int64_t deadline) {
    EXPECT_TRUE(j_->LeaseCreated(id, who, "name-" + who, 1000, 99, deadline).ok());
    JournalLease& l = st_.leases[id];
    l.id = id;
    l.identity = who;
    l.name = "name-" + who;
    l.ttl_ms = 1000;
    l.quota = 99;
    l.deadline_ns = deadline;
  }
  void Renew(uint64_t id, int64_t deadline) {
    EXPECT_TRUE(j_->LeaseRenewed(id, deadline).ok());
    st_.leases[id].deadline_ns = deadline;
  }
  void End(uint64_t id) {
    EXPECT_TRUE(j_->LeaseEnded(id).ok());
    st_.leases.erase(id);
  }
  void Alloc(uint64_t id, std::vector<JournalEntry> entries) {
    EXPECT_TRUE(j_->Allocated(id, entries).ok());
    for (const JournalEntry& e : entries) st_.leases[id].blocks[e.pfn] = {e.order, e.compound, std::string(e.key)};
  }
  void Free(uint64_t id, uint64_t pfn) {
    EXPECT_TRUE(j_->Freed(id, pfn).ok());
    st_.leases[id].blocks.erase(pfn);
  }
  void set_journal(Journal* j) { j_ = j; }
  const JournalState& state() const { return st_; }

 private:
  Journal* j_;
  JournalState st_;
};

void ExpectSameLeases(const JournalState& got, const JournalState& want) {
  ASSERT_EQ(got.leases.size(), want.leases.size());
  for (const auto& [id, w] : want.leases) {
    auto it = got.leases.find(id);
    ASSERT_NE(it, got.leases.end()) << "lease " << id;
    const JournalLease& g = it->second;
    EXPECT_EQ(g.identity, w.identity);
    EXPECT_EQ(g.name, w.name);
    EXPECT_EQ(g.ttl_ms, w.ttl_ms);
    EXPECT_EQ(g.quota, w.quota);
    EXPECT_EQ(g.deadline_ns, w.deadline_ns);
    ASSERT_EQ(g.blocks.size(), w.blocks.size()) << "lease " << id;
    for (const auto& [pfn, b] : w.blocks) {
      auto bt = g.blocks.find(pfn);
      ASSERT_NE(bt, g.blocks.end()) << "lease " << id << " pfn " << pfn;
      EXPECT_EQ(bt->second.order, b.order);
      EXPECT_EQ(bt->second.compound, b.compound);
      EXPECT_EQ(bt->second.key, b.key);
    }
  }
}

// Random operations; keys sometimes long (several slots) and sometimes full of header-like bytes.
void RandomLoad(Model& m, std::mt19937& rng, int ops, uint64_t* next_lease, uint64_t* next_pfn) {
  std::vector<uint64_t> ids;
  for (const auto& [id, l] : m.state().leases) ids.push_back(id);
  for (int i = 0; i < ops; ++i) {
    const int op = rng() % 10;
    if (ids.empty() || op == 0) {
      const uint64_t id = (uint64_t{7} << 32) | (*next_lease)++;
      m.Create(id, "uid:" + std::to_string(rng() % 5), 1000 + rng());
      ids.push_back(id);
    } else if (op == 1) {
      m.Renew(ids[rng() % ids.size()], 5000 + rng());
    } else if (op == 2 && ids.size() > 2) {
      const size_t k = rng() % ids.size();
      m.End(ids[k]);
      ids.erase(ids.begin() + k);
    } else if (op < 7) {
      std::vector<JournalEntry> entries(1 + rng() % (op == 6 ? 200 : 2));
      std::vector<std::string> keys(entries.size());
      for (size_t e = 0; e < entries.size(); ++e) {
        entries[e].pfn = (*next_pfn += 16);
        entries[e].order = rng() % 5;
        entries[e].compound = rng() % 2;
        if (rng() % 3 == 0) {
          keys[e] = std::string(1 + rng() % 128, 'k');
          // Bytes that would read as a record header if the reader ever looked at them.
          const uint64_t fake = uint64_t{0x4A524543} << 32 | 1u << 8 | 4;
          for (size_t b = 0; b + 8 <= keys[e].size(); b += 16) std::memcpy(keys[e].data() + b, &fake, 8);
          entries[e].key = keys[e];
        }
      }
      m.Alloc(ids[rng() % ids.size()], entries);
    } else {
      const uint64_t id = ids[rng() % ids.size()];
      const auto& blocks = m.state().leases.at(id).blocks;
      if (!blocks.empty()) m.Free(id, blocks.begin()->first);
    }
  }
}

TEST_F(JournalTest, ReadsBackWhatWasAppendedBeforeAndAfterCompaction) {
  uint64_t next_lease = 1, next_pfn = 0;
  JournalState st;
  auto j = OpenAndStart(&st);
  Model m(j.get());
  std::mt19937 rng(1);
  RandomLoad(m, rng, 3000, &next_lease, &next_pfn);
  j.reset();  // a crash: nothing is flushed or closed on purpose
  auto j2 = OpenAndStart(&st);
  ExpectSameLeases(st, m.state());
  EXPECT_EQ(st.skipped_slots, 0u);
  EXPECT_EQ(st.anomalies, 0u);
  EXPECT_EQ(st.next_id, next_lease);

  m.set_journal(j2.get());
  RandomLoad(m, rng, 2000, &next_lease, &next_pfn);
  ASSERT_TRUE(j2->Compact().ok());
  RandomLoad(m, rng, 500, &next_lease, &next_pfn);
  j2.reset();
  auto j3 = Open(&st);
  EXPECT_TRUE(st.from_snapshot);
  ExpectSameLeases(st, m.state());
  EXPECT_EQ(st.anomalies, 0u);
  EXPECT_EQ(st.next_id, next_lease);
}

TEST_F(JournalTest, ConcurrentAppendsAllReadBack) {
  JournalState st;
  auto j = OpenAndStart(&st);
  constexpr int kThreads = 4, kPerThread = 5000;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const uint64_t id = (uint64_t{7} << 32) | (t + 1);
      EXPECT_TRUE(j->LeaseCreated(id, "t", "", 1000, 0, 1).ok());
      for (int i = 0; i < kPerThread; ++i) {
        const JournalEntry e{uint64_t(t) << 32 | uint64_t(i), 0, false, {}};
        EXPECT_TRUE(j->Allocated(id, {&e, 1}).ok());
        if (i % 3 == 0) {
          EXPECT_TRUE(j->Freed(id, e.pfn).ok());
        }
        if (i == kPerThread / 2 && t == 0) {
          EXPECT_TRUE(j->Compact().ok());  // compaction under load
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d threads: %.0f ns per append (including one compaction)\n", kThreads,
              ns * kThreads / (kThreads * kPerThread * 4 / 3.0));
  j.reset();
  Open(&st);
  ASSERT_EQ(st.leases.size(), size_t{kThreads});
  for (const auto& [id, l] : st.leases) EXPECT_EQ(l.blocks.size(), size_t{kPerThread - (kPerThread + 2) / 3});
  EXPECT_EQ(st.anomalies, 0u);
}

// The live segment's bytes, for surgery.
struct SegmentBytes {
  explicit SegmentBytes(const std::string& path) {
    fd = ::open(path.c_str(), O_RDWR);
    size = std::filesystem::file_size(path);
    map = static_cast<uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  }
  ~SegmentBytes() {
    ::munmap(map, size);
    ::close(fd);
  }
  uint8_t* slot(uint64_t i) { return map + 4096 + i * 64; }
  int fd;
  uint64_t size;
  uint8_t* map;
};

TEST_F(JournalTest, TornAndCorruptRecordsAreSkippedAndLaterOnesKept) {
  JournalState st;
  auto j = OpenAndStart(&st);  // slot 0: the meta record
  const uint64_t id = (uint64_t{7} << 32) | 1;
  EXPECT_TRUE(j->LeaseCreated(id, "u", "", 1000, 0, 5).ok());       // slot 1 (37 payload bytes: one slot)
  for (uint64_t pfn = 0; pfn < 10; ++pfn) {       // slots 2..11
    const JournalEntry e{pfn, 0, false, {}};
    EXPECT_TRUE(j->Allocated(id, {&e, 1}).ok());
  }
  const std::string long_key(300, 'z');  // 322 payload bytes, 7 slots: 12..18
  const JournalEntry e{100, 2, false, long_key};
  EXPECT_TRUE(j->Allocated(id, {&e, 1}).ok());
  j.reset();
  {
    SegmentBytes seg(dir_ + "/j.1");
    std::memset(seg.slot(4), 0, 8);  // pfn 2: its header word never got written (a hole)
    seg.slot(7)[30] ^= 1;            // pfn 5: a payload bit flipped (checksum mismatch)
    std::memset(seg.slot(14), 0, 64);  // the long-key record torn: a continuation slot missing
  }
  Open(&st);
  ASSERT_EQ(st.leases.count(id), 1u);
  const auto& blocks = st.leases.at(id).blocks;
  EXPECT_EQ(blocks.size(), 8u);
  EXPECT_FALSE(blocks.contains(2));
  EXPECT_FALSE(blocks.contains(5));
  EXPECT_FALSE(blocks.contains(100));
  EXPECT_TRUE(blocks.contains(9));
  EXPECT_EQ(st.skipped_slots, 1u + 1u + 7u);
  EXPECT_EQ(st.anomalies, 0u);
}

TEST_F(JournalTest, EveryCompactionCrashPointRecoversTheSameState) {
  for (const char* point : {"compact_after_switch", "compact_mid_snapshot", "compact_after_rename",
                            "compact_mid_unlink"}) {
    SCOPED_TRACE(point);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    uint64_t next_lease = 1, next_pfn = 0;
    JournalState st;
    auto j = OpenAndStart(&st);
    Model m(j.get());
    std::mt19937 rng(3);
    RandomLoad(m, rng, 1500, &next_lease, &next_pfn);
    ASSERT_TRUE(j->Compact().ok());  // a first snapshot, so the next one replaces it
    RandomLoad(m, rng, 1500, &next_lease, &next_pfn);
    ASSERT_TRUE(j->Compact(point).ok());  // stops where a crash would, files as they are
    j.reset();
    auto j2 = OpenAndStart(&st);
    ExpectSameLeases(st, m.state());
    EXPECT_EQ(st.anomalies, 0u);
    // And the journal goes on: more appends, a full compaction, a clean read.
    m.set_journal(j2.get());
    RandomLoad(m, rng, 500, &next_lease, &next_pfn);
    ASSERT_TRUE(j2->Compact().ok());
    j2.reset();
    Open(&st);
    ExpectSameLeases(st, m.state());
    EXPECT_EQ(st.anomalies, 0u);
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/j.snap.tmp"));
  }
}

TEST_F(JournalTest, RefusesAJournalWrittenForAnotherTarget) {
  JournalState st;
  {
    auto j = OpenAndStart(&st);
    EXPECT_TRUE(j->LeaseCreated(1, "a", "b", 1000, 0, 5).ok());
  }
  JournalOptions o = Options();
  o.target_fingerprint = 43;
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(o, &st);
  EXPECT_EQ(j.status().code(), absl::StatusCode::kFailedPrecondition);
}

// Journal faults (docs/recovery.md): what the file system refuses is refused to the caller, with
// a status naming the journal; frees go on from the reserve; nothing refused is recovered; the
// journal heals by itself when the file system works again.
TEST_F(JournalTest, AnAppendTheFileSystemRefusesIsNotAcknowledgedAndTheJournalHeals) {
  std::atomic<int> fail{0};
  JournalOptions o = Options();
  o.fault_hook = [&fail](std::string_view op) { return op == "fallocate" ? fail.load() : 0; };
  JournalState st;
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(o, &st);
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_TRUE((*j)->Start(uint64_t{7} << 32, 1).ok());
  const uint64_t id = (uint64_t{7} << 32) | 1;
  ASSERT_TRUE((*j)->LeaseCreated(id, "u", "", 1000, 0, 5).ok());
  fail = ENOSPC;
  std::vector<JournalEntry> batch(1000);
  uint64_t acked = 0;
  absl::Status refused;
  for (uint64_t i = 0; i < 1000 && refused.ok(); ++i) {
    for (uint64_t k = 0; k < batch.size(); ++k) batch[k].pfn = i * batch.size() + k;
    refused = (*j)->Allocated(id, batch);
    if (refused.ok()) acked += batch.size();
  }
  ASSERT_FALSE(refused.ok()) << "the first preallocated chunk never ran out";
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(refused.message(), ::testing::HasSubstr("journal: write to " + dir_ + "/j.1 failed: " +
                                                      std::strerror(ENOSPC)));
  EXPECT_TRUE((*j)->failing());
  // What is left of the backed slots (less than a batch) goes to smaller grants, then none.
  for (uint64_t pfn = uint64_t{1} << 30;; ++pfn) {
    const JournalEntry e{pfn, 0, false, {}};
    if (!(*j)->Allocated(id, {&e, 1}).ok()) break;
    ++acked;
    ASSERT_LT(pfn, (uint64_t{1} << 30) + 200);
  }
  EXPECT_EQ((*j)->LeaseRenewed(id, 6).code(), absl::StatusCode::kUnavailable);  // gives time out: refused
  EXPECT_TRUE((*j)->Freed(id, 0).ok());                                      // gives a page back: reserve
  fail = 0;
  const JournalEntry late{uint64_t{1} << 40, 0, false, {}};
  EXPECT_TRUE((*j)->Allocated(id, {&late, 1}).ok());
  EXPECT_FALSE((*j)->failing());
  EXPECT_GE((*j)->failed_appends(), 2u);
  j->reset();
  Open(&st);
  ASSERT_EQ(st.leases.count(id), 1u);
  const JournalLease& l = st.leases.at(id);
  EXPECT_EQ(l.blocks.size(), acked - 1 + 1);  // the refused batch is not there, pfn 0 freed, `late` added
  EXPECT_FALSE(l.blocks.contains(acked));     // the first pfn of the refused batch
  EXPECT_TRUE(l.blocks.contains(late.pfn));
  EXPECT_EQ(l.deadline_ns, 5);  // the refused renewal is not there either
  EXPECT_EQ(st.anomalies, 0u);
}

TEST_F(JournalTest, ARotationThatCannotCreateASegmentRefusesGrantsButNotFrees) {
  std::atomic<int> fail{0};
  JournalOptions o = Options();
  o.compact_bytes = 256 << 10;  // segments of 1 MiB: full after 768 KiB of grants
  o.fault_hook = [&fail](std::string_view op) { return op == "open" ? fail.load() : 0; };
  JournalState st;
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Recover(o, &st);
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_TRUE((*j)->Start(uint64_t{7} << 32, 1).ok());
  const uint64_t id = (uint64_t{7} << 32) | 1;
  ASSERT_TRUE((*j)->LeaseCreated(id, "u", "", 1000, 0, 5).ok());
  fail = EIO;
  absl::Status refused;
  uint64_t pfn = 0;
  std::vector<uint64_t> acked;
  const std::string key(100, 'k');  // JournalEntry::key is a view: the bytes live here
  while (refused.ok() && pfn < 100000) {
    const JournalEntry e{pfn, 0, false, key};
    refused = (*j)->Allocated(id, {&e, 1});
    if (refused.ok()) acked.push_back(pfn);
    ++pfn;
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_THAT(refused.message(), ::testing::HasSubstr(std::strerror(EIO)));
  for (int i = 0; i < 100; ++i) ASSERT_TRUE((*j)->Freed(id, acked[i]).ok()) << i;
  fail = 0;
  const JournalEntry e{pfn, 0, false, {}};
  EXPECT_TRUE((*j)->Allocated(id, {&e, 1}).ok());
  j->reset();
  Open(&st);
  EXPECT_EQ(st.leases.at(id).blocks.size(), acked.size() - 100 + 1);
  EXPECT_EQ(st.anomalies, 0u);
}

}  // namespace
}  // namespace physmem
