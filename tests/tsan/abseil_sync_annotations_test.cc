// Tests of tests/tsan/abseil_sync_annotations.cc, built only in TSan builds (label server, so the
// TSan run judges their reports with tests/tsan/tsan_reports.py: a report here has both accesses
// in this file and fails the run).
//
// - Ordering through Debian's absl::Mutex and absl::CondVar is seen by TSan: a plain int written
//   before Unlock and read after Lock on another thread is not a race. Without the annotations
//   TSan reports exactly that (the threads meet through relaxed atomics, which order nothing).
// - Every absl::Mutex/CondVar entry point that the loaded gRPC libraries import, and that orders
//   memory, is interposed by this executable, so a gRPC upgrade that starts calling another one
//   (LockWhen, Await, ...) fails here instead of silently losing the ordering.
#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace {

// Spins until `flag` is set, with relaxed loads: the meeting gives TSan no happens-before.
void AwaitRelaxed(const std::atomic<bool>& flag) {
  while (!flag.load(std::memory_order_relaxed)) std::this_thread::yield();
}

TEST(AbseilSyncAnnotations, MutexOrdersAPlainWriteBeforeAPlainRead) {
  absl::Mutex mu;
  int value = 0;
  std::atomic<bool> unlocked{false};
  std::thread writer([&] {
    mu.Lock();
    value = 42;
    mu.Unlock();
    unlocked.store(true, std::memory_order_relaxed);
  });
  AwaitRelaxed(unlocked);
  mu.Lock();
  EXPECT_EQ(value, 42);
  mu.Unlock();
  writer.join();
}

TEST(AbseilSyncAnnotations, TryLockAndReaderLockOrderToo) {
  absl::Mutex mu;
  int value = 0;
  std::atomic<bool> unlocked{false};
  std::thread writer([&] {
    while (!mu.TryLock()) std::this_thread::yield();
    value = 7;
    mu.Unlock();
    unlocked.store(true, std::memory_order_relaxed);
  });
  AwaitRelaxed(unlocked);
  mu.ReaderLock();
  EXPECT_EQ(value, 7);
  mu.ReaderUnlock();
  writer.join();
}

TEST(AbseilSyncAnnotations, CondVarWaitReacquiresWithOrdering) {
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  int value = 0;
  std::thread waiter([&] {
    mu.Lock();
    while (!ready) cv.Wait(&mu);
    EXPECT_EQ(value, 9);
    value = 10;
    mu.Unlock();
  });
  {
    absl::ReleasableMutexLock l(&mu);
    value = 9;
    ready = true;
    cv.Signal();
    l.Release();
  }
  waiter.join();
  mu.Lock();
  EXPECT_EQ(value, 10);
  mu.Unlock();
}

TEST(AbseilSyncAnnotations, CondVarTimedWaitsOrderToo) {
  absl::Mutex mu;
  absl::CondVar cv;
  int stage = 0;
  std::thread waiter([&] {
    mu.Lock();
    while (stage != 1) cv.WaitWithTimeout(&mu, absl::Milliseconds(5));
    stage = 2;
    cv.Signal();
    while (stage != 3) cv.WaitWithDeadline(&mu, absl::Now() + absl::Milliseconds(5));
    mu.Unlock();
  });
  mu.Lock();
  stage = 1;
  cv.Signal();
  while (stage != 2) cv.Wait(&mu);
  stage = 3;
  cv.Signal();
  mu.Unlock();
  waiter.join();
}

// Paths of the loaded shared objects whose file name starts with one of `prefixes`.
std::set<std::string> LoadedLibraries(const std::set<std::string>& prefixes) {
  struct Ctx {
    const std::set<std::string>* prefixes;
    std::set<std::string> found;
  } ctx{&prefixes, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* c = static_cast<Ctx*>(data);
        const std::string path = info->dlpi_name;
        const std::string file = path.substr(path.rfind('/') + 1);
        for (const std::string& p : *c->prefixes) {
          if (file.rfind(p, 0) == 0) c->found.insert(path);
        }
        return 0;
      },
      &ctx);
  return ctx.found;
}

// The undefined dynamic symbols of `library` matching `pattern` (nm -D --undefined-only).
std::set<std::string> ImportedSymbols(const std::string& library, const std::regex& pattern) {
  std::set<std::string> out;
  std::unique_ptr<FILE, int (*)(FILE*)> nm(::popen(("nm -D --undefined-only " + library).c_str(), "r"), ::pclose);
  if (nm == nullptr) return out;
  char line[512];
  while (std::fgets(line, sizeof(line), nm.get()) != nullptr) {
    std::string s(line);
    s = s.substr(s.find_last_of(' ') + 1);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    if (std::regex_search(s, pattern)) out.insert(s);
  }
  return out;
}

TEST(AbseilSyncAnnotations, EveryOrderingEntryPointGrpcImportsIsInterposed) {
  grpc::ServerBuilder keep_grpc_loaded;  // the executable links gRPC; make sure it is mapped
  const std::set<std::string> libraries = LoadedLibraries({"libgrpc.so", "libgrpc++.so", "libgpr.so"});
  ASSERT_EQ(libraries.size(), 3u) << "expected libgrpc, libgrpc++ and libgpr to be loaded";
  // Entry points that neither take, release nor wait on a mutex need no annotation.
  const std::regex sync("^_ZN?K?4absl7debian3(5Mutex|7CondVar|19ReleasableMutexLock)");
  const std::regex no_ordering("(D[12]Ev|AssertHeld|AssertReaderHeld|AssertNotHeld|6Signal|9SignalAll)");
  Dl_info self{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&LoadedLibraries), &self), 0);
  int checked = 0;
  for (const std::string& lib : libraries) {
    for (const std::string& symbol : ImportedSymbols(lib, sync)) {
      if (std::regex_search(symbol, no_ordering)) continue;
      void* resolved = dlsym(RTLD_DEFAULT, symbol.c_str());
      Dl_info where{};
      ASSERT_NE(resolved, nullptr) << symbol;
      ASSERT_NE(dladdr(resolved, &where), 0) << symbol;
      EXPECT_EQ(where.dli_fbase, self.dli_fbase)
          << lib << " imports " << symbol << ", which resolves to " << where.dli_fname
          << ", not to this executable: add it to tests/tsan/abseil_sync_annotations.cc";
      ++checked;
    }
  }
  EXPECT_GE(checked, 6) << "Lock, TryLock, Unlock, CondVar::Wait, ... should be among the imports";
}

}  // namespace
