// Tests for allocator/mutex.h: the annotated locks behave as the std:: locks they wrap, and
// clang's -Wthread-safety rejects code that breaks a lock contract (so the contracts written
// with ABSL_GUARDED_BY across allocator/ and server/ are really checked by the fuzz build).
#include "allocator/mutex.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace physmem {
namespace {

class Counter {
 public:
  void Add(int n) {
    MutexLock l(&mu_);
    total_ += n;
  }
  int Total() {
    MutexLock l(&mu_);
    return total_;
  }

 private:
  Mutex mu_;
  int total_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST(Mutex, MutexLockMakesConcurrentIncrementsExact) {
  Counter c;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&c] {
      for (int i = 0; i < 10000; ++i) c.Add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.Total(), 40000);
}

TEST(Mutex, TryLockFailsWhileAnotherThreadHoldsIt) {
  Mutex mu;
  mu.Lock();
  bool got = true;
  std::thread([&] {
    got = mu.TryLock();
    if (got) mu.Unlock();
  }).join();
  EXPECT_FALSE(got);
  mu.Unlock();
  EXPECT_TRUE(mu.TryLock());
  mu.Unlock();
}

TEST(SharedMutex, ReadersShareAndAWriterExcludesThem) {
  SharedMutex mu;
  mu.ReaderLock();
  bool second_reader = false, writer = true;
  std::thread([&] {
    second_reader = mu.ReaderTryLock();
    if (second_reader) mu.ReaderUnlock();
  }).join();
  EXPECT_TRUE(second_reader);
  mu.ReaderUnlock();
  {
    WriterLock w(&mu);
    std::thread([&] {
      writer = mu.ReaderTryLock();
      if (writer) mu.ReaderUnlock();
    }).join();
  }
  EXPECT_FALSE(writer);
}

TEST(CondVar, WaitReturnsOnceSignalledAndTheConditionHolds) {
  Mutex mu;
  CondVar cv;
  bool ready = false;
  std::thread producer([&] {
    MutexLock l(&mu);
    ready = true;
    cv.SignalAll();
  });
  {
    MutexLock l(&mu);
    while (!ready) cv.Wait(&mu);
    EXPECT_TRUE(ready);
  }
  producer.join();
}

TEST(CondVar, WaitForReportsATimeoutWhenNobodySignals) {
  Mutex mu;
  CondVar cv;
  MutexLock l(&mu);
  // Spurious wake-ups may return false early; a timeout must come eventually and keep the lock.
  bool timed_out = false;
  for (int i = 0; i < 100 && !timed_out; ++i) timed_out = cv.WaitFor(&mu, std::chrono::milliseconds(1));
  EXPECT_TRUE(timed_out);
  EXPECT_FALSE(mu.TryLock()) << "the lock must be held again after the wait";
}

// The analysis itself: a guarded field written without its lock must not compile under clang's
// -Wthread-safety -Werror, and the same code with the lock must. Uses clang++-14 (installed for
// the fuzz build by scripts/install-deps.sh).
int CompileWithClang(const std::string& body) {
  const std::string path = ::testing::TempDir() + "/thread_safety_probe.cc";
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return -1;
  std::fprintf(f, "#include \"allocator/mutex.h\"\nstruct S {\n  physmem::Mutex mu;\n  int x ABSL_GUARDED_BY(mu) = 0;\n};\n%s\n",
               body.c_str());
  std::fclose(f);
  const std::string cmd = "clang++-14 -std=c++20 -fsyntax-only -Wthread-safety -Werror -I" PHYSMEM_SOURCE_DIR " " +
                          path + " 2>/dev/null";
  const int rc = std::system(cmd.c_str());
  std::remove(path.c_str());
  return rc;
}

TEST(ThreadSafetyAnalysis, ClangRejectsAGuardedFieldTouchedWithoutItsLock) {
  if (std::system("command -v clang++-14 > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "clang++-14 is not installed (scripts/install-deps.sh installs it for the fuzz build)";
  }
  EXPECT_EQ(CompileWithClang("void Good(S* s) { physmem::MutexLock l(&s->mu); s->x = 1; }"), 0);
  EXPECT_NE(CompileWithClang("void Bad(S* s) { s->x = 1; }"), 0);
  EXPECT_NE(CompileWithClang("void Leak(S* s) { s->mu.Lock(); s->x = 1; }"), 0)
      << "returning with the lock held must be refused too";
}

}  // namespace
}  // namespace physmem
