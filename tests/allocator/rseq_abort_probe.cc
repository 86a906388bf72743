// rseq_abort_probe: does this kernel abort every rseq critical section it must? A standalone
// program (none of physmemd's code) that settles whether a failure of the per-CPU rings' remote
// drain (allocator/per_cpu_ring.cc, DrainRemote) is the kernel's or ours.
//
// What it checks, after the kernel selftest tools/testing/selftests/rseq/param_test.c (its percpu
// counter test, rseq_cmpeqv_storev-style sections in the shape of rseq-x86.h):
//   N worker threads increment per-CPU counters, each increment one rseq critical section
//   (arm rseq_cs -> cpu = rseq->cpu_id -> load counter[cpu] -> fail if drain-locked -> optional
//   busy window -> ONE committing store of counter + 1). A migrator thread re-pins the workers
//   with sched_setaffinity every --migrate_us microseconds (0: none).
//   --mode=count: no drainer. Check (a): sum of counters == increments the workers saw commit.
//     (Reported as "counted - committed": < 0 increments lost, > 0 an increment counted twice.)
//     A section that kept running after its thread was preempted or migrated commits on a CPU
//     whose counter another thread also updates, and increments get lost.
//   --mode=drain: also a drainer thread running the fence protocol of DrainRemote: for CPU c,
//     counter[c] += 2^63 (lock bias, atomic RMW), then membarrier(PRIVATE_EXPEDITED_RSEQ,
//     FLAG_CPU, c); if the bias was overwritten (a section committed before the fence: legitimate)
//     bias again; then hold the lock for --hold_ns, re-reading the counter: any change is a
//     section that committed AFTER the fence returned (check (b), "late commits"). Then it moves
//     the counter's value to its own total and stores 0 (unlocked). Check (a) becomes
//     sum(counters) + drained == increments.
// Registrations (--reg): glibc (the thread's area glibc registered: __rseq_offset/__rseq_size,
// as physmemd uses it), own32 / ownext (glibc's registration must be off:
// GLIBC_TUNABLES=glibc.pthread.rseq=0; each worker registers its own area with rseq_len 32, the
// original ABI, or with the extended size getauxval(AT_RSEQ_FEATURE_SIZE)).
// --busy N forks N busy-loop processes for the run (load: preemption on every CPU).
// --fence=0 skips the membarrier: a negative control that shows the checks can fail (late commits
// and lost increments appear within a run).
//
// Output: one line per run and a summary; exit 0 if no run failed a check, 1 if some did, 2 if
// the setup is unusable (no rseq, no membarrier, bad flag), with the reason.
//
// Build: g++ -O2 -std=c++20 -o rseq_abort_probe tests/allocator/rseq_abort_probe.cc -lpthread
// Run:   ./rseq_abort_probe --mode=drain --runs=40 --seconds=1.5 --busy=4
#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif
#ifndef AT_RSEQ_ALIGN
#define AT_RSEQ_ALIGN 28
#endif

constexpr uint64_t kLockBias = uint64_t{1} << 63;
constexpr int kMaxCpus = 1024;

struct Options {
  std::string mode = "drain";  // drain | count
  std::string reg = "glibc";   // glibc | own32 | ownext
  int threads = 6;
  int migrate_us = 50;
  double seconds = 1.5;
  int runs = 10;
  int window = 50;  // busy iterations inside each section (widens the race)
  int hold_ns = 2000;
  int busy = 0;
  int fence = 1;  // 0: skip the membarrier (negative control: the checks must then fail)
};

struct alignas(128) Counter {
  uint64_t value;  // + kLockBias while the drainer holds it
};

struct alignas(128) WorkerTally {
  uint64_t commits = 0;
  uint64_t aborts = 0;
  uint64_t locked = 0;
};

Counter g_counters[kMaxCpus];
uint32_t g_ncpus = 0;
Options g_opt;

// Prints the reason and ends the process with status 2, from any thread: _exit, because other
// threads may still run (exit() would destroy globals under them); only the first caller prints.
[[noreturn]] void Unusable(const std::string& why) {
  static std::atomic<bool> said{false};
  if (!said.exchange(true)) {
    std::fflush(stdout);
    std::fprintf(stderr, "rseq_abort_probe: %s\n", why.c_str());
  }
  _exit(2);
}

long Membarrier(int cmd, unsigned flags, int cpu) { return syscall(__NR_membarrier, cmd, flags, cpu); }

// One increment of this CPU's counter as an rseq critical section. Returns 1 on commit, 0 if the
// counter is drain-locked; counts aborts (the kernel restarted the section at label 4).
int IncrementThisCpu(struct rseq* rs, WorkerTally* tally) {
  const uint64_t window = static_cast<uint64_t>(g_opt.window);
restart:
  asm volatile goto(
      ".pushsection __rseq_cs, \"aw\"\n\t"
      ".balign 32\n\t"
      "3:\n\t"
      ".long 0, 0\n\t"
      ".quad 1f, 2f - 1f, 4f\n\t"  // start_ip, post_commit_offset, abort_ip
      ".popsection\n\t"
      "leaq 3b(%%rip), %%rax\n\t"
      "movq %%rax, 8(%[rs])\n\t"  // arm: rseq->rseq_cs = &descriptor
      "1:\n\t"
      "movl 4(%[rs]), %%eax\n\t"  // cpu = rseq->cpu_id (inside the section)
      "cmpl %[ncpus], %%eax\n\t"
      "jae %l[bad_cpu]\n\t"
      "shlq $7, %%rax\n\t"  // sizeof(Counter) == 128
      "addq %[base], %%rax\n\t"
      "movq (%%rax), %%rdx\n\t"  // v = counter[cpu]
      "btq $63, %%rdx\n\t"
      "jc %l[locked]\n\t"  // drain-locked: fail
      "movq %[window], %%rcx\n\t"
      "testq %%rcx, %%rcx\n\t"
      "jz 6f\n\t"
      "5:\n\t"  // busy window: more time for preemption, migration, IPIs
      "pause\n\t"
      "subq $1, %%rcx\n\t"
      "jnz 5b\n\t"
      "6:\n\t"
      "addq $1, %%rdx\n\t"
      "movq %%rdx, (%%rax)\n\t"  // commit: counter[cpu] = v + 1
      "2:\n\t"
      ".pushsection __rseq_failure, \"ax\"\n\t"
      ".byte 0x0f, 0xb9, 0x3d\n\t"  // ud1 <sig>(%rip), %edi: the 4 signature bytes end here
      ".long 0x53053053\n\t"
      "4:\n\t"
      "jmp %l[aborted]\n\t"
      ".popsection\n\t"
      :
      : [rs] "r"(rs), [ncpus] "r"(g_ncpus), [base] "r"(g_counters), [window] "r"(window)
      : "memory", "cc", "rax", "rcx", "rdx"
      : aborted, locked, bad_cpu);
  ++tally->commits;
  return 1;
aborted:
  ++tally->aborts;
  goto restart;
locked:
  ++tally->locked;
  return 0;
bad_cpu:
  Unusable("cpu_id out of range inside a section (rseq not registered for this thread?)");
}

// The calling thread's rseq area: glibc's, or a fresh registration of our own.
struct Registration {
  struct rseq* area = nullptr;
  bool own = false;
  uint32_t len = 0;
};

alignas(256) thread_local unsigned char t_own_area[256];

// Whether --reg fits glibc's registration state; checked once in main, before any thread starts.
void CheckRegistrationMode() {
  if (g_opt.reg == "glibc" && __rseq_size == 0) {
    Unusable("glibc did not register rseq (GLIBC_TUNABLES=glibc.pthread.rseq=0 set?)");
  }
  if (g_opt.reg != "glibc" && __rseq_size != 0) {
    Unusable("--reg=" + g_opt.reg + " needs GLIBC_TUNABLES=glibc.pthread.rseq=0");
  }
}

Registration RegisterThread() {
  Registration r;
  if (g_opt.reg == "glibc") {
    r.area = reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
    return r;
  }
  r.own = true;
  r.area = reinterpret_cast<struct rseq*>(t_own_area);
  std::memset(t_own_area, 0, sizeof(t_own_area));
  r.area->cpu_id = static_cast<uint32_t>(RSEQ_CPU_ID_UNINITIALIZED);
  if (g_opt.reg == "own32") {
    r.len = 32;
  } else {
    const unsigned long feature = getauxval(AT_RSEQ_FEATURE_SIZE);
    const unsigned long align = getauxval(AT_RSEQ_ALIGN);
    if (feature == 0 || align > 256) Unusable("kernel reports no extended rseq ABI (AT_RSEQ_FEATURE_SIZE 0)");
    r.len = static_cast<uint32_t>(std::max<unsigned long>(feature, 33));  // != 32: extended ABI
  }
  if (syscall(__NR_rseq, r.area, r.len, 0, RSEQ_SIG) != 0) {
    Unusable("rseq(len " + std::to_string(r.len) + ") failed: " + std::strerror(errno));
  }
  return r;
}

void UnregisterThread(const Registration& r) {
  if (r.own) syscall(__NR_rseq, r.area, r.len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
}

void Worker(WorkerTally* tally, std::atomic<pid_t>* tid, const std::atomic<bool>* stop) {
  const Registration reg = RegisterThread();
  tid->store(static_cast<pid_t>(syscall(SYS_gettid)));
  while (!stop->load(std::memory_order_relaxed)) {
    for (int i = 0; i < 64; ++i) IncrementThisCpu(reg.area, tally);
  }
  UnregisterThread(reg);
}

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) Unusable("sched_getaffinity failed");
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && c < kMaxCpus; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

void Migrator(const std::vector<std::atomic<pid_t>>* tids, const std::vector<int>* cpus,
              const std::atomic<bool>* stop) {
  std::mt19937 rng(99);
  while (!stop->load(std::memory_order_relaxed)) {
    const pid_t tid = (*tids)[rng() % tids->size()].load();
    if (tid != 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (rng() % 3 == 0) {
        for (int c : *cpus) CPU_SET(c, &set);
      } else {
        CPU_SET((*cpus)[rng() % cpus->size()], &set);
      }
      sched_setaffinity(tid, sizeof(set), &set);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(g_opt.migrate_us));
  }
}

struct DrainTally {
  uint64_t drained = 0;       // increments moved out of the counters
  uint64_t locks = 0;         // fenced lock acquisitions
  uint64_t rebias = 0;        // bias overwritten before the fence returned (legitimate)
  uint64_t late_commits = 0;  // counter changed while locked, after the fence: a kernel miss
};

void Drainer(DrainTally* t, const std::vector<int>* cpus, const std::atomic<bool>* stop) {
  std::mt19937 rng(4242);
  while (!stop->load(std::memory_order_relaxed)) {
    const int cpu = (*cpus)[rng() % cpus->size()];
    uint64_t* const value = &g_counters[cpu].value;
    for (;;) {
      __atomic_fetch_add(value, kLockBias, __ATOMIC_SEQ_CST);
      if (g_opt.fence && Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu) != 0) {
        Unusable(std::string("membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU) failed: ") + std::strerror(errno));
      }
      if (__atomic_load_n(value, __ATOMIC_SEQ_CST) & kLockBias) break;
      ++t->rebias;
    }
    ++t->locks;
    const uint64_t locked = __atomic_load_n(value, __ATOMIC_SEQ_CST);
    uint64_t last = locked;
    const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(g_opt.hold_ns);
    while (std::chrono::steady_clock::now() < until) {
      const uint64_t now = __atomic_load_n(value, __ATOMIC_SEQ_CST);
      if (now != last) ++t->late_commits;
      last = now;
    }
    // Take whatever is there now, a late commit's value too: check (a) then counts a late commit
    // seen above once, and only one landing after this read shows up as a mismatch.
    t->drained += last & ~kLockBias;
    __atomic_store_n(value, 0, __ATOMIC_SEQ_CST);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

struct RunResult {
  uint64_t commits = 0, aborts = 0, locked = 0;
  int64_t mismatch = 0;  // counters + drained - commits: < 0 lost, > 0 counted twice
  DrainTally drain;
  bool failed() const { return mismatch != 0 || drain.late_commits != 0; }
};

RunResult OneRun(const std::vector<int>& cpus) {
  std::memset(g_counters, 0, sizeof(g_counters));
  std::vector<WorkerTally> tallies(g_opt.threads);
  std::vector<std::atomic<pid_t>> tids(g_opt.threads);
  DrainTally drain;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < g_opt.threads; ++w) threads.emplace_back(Worker, &tallies[w], &tids[w], &stop);
  if (g_opt.mode == "drain") threads.emplace_back(Drainer, &drain, &cpus, &stop);
  if (g_opt.migrate_us > 0) threads.emplace_back(Migrator, &tids, &cpus, &stop);
  std::this_thread::sleep_for(std::chrono::duration<double>(g_opt.seconds));
  stop.store(true);
  for (auto& t : threads) t.join();
  RunResult r;
  for (const auto& t : tallies) {
    r.commits += t.commits;
    r.aborts += t.aborts;
    r.locked += t.locked;
  }
  uint64_t sum = drain.drained;
  for (uint32_t c = 0; c < g_ncpus; ++c) sum += g_counters[c].value;
  r.mismatch = static_cast<int64_t>(sum - r.commits);
  r.drain = drain;
  return r;
}

bool ParseInt(const char* arg, const char* name, int* out) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  char* end = nullptr;
  const long v = std::strtol(arg + n + 1, &end, 10);
  if (*end != '\0' || v < 0 || v > 1000000000) Unusable(std::string("bad value in ") + arg);
  *out = static_cast<int>(v);
  return true;
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strncmp(a, "--mode=", 7) == 0) {
      o.mode = a + 7;
      if (o.mode != "drain" && o.mode != "count") Unusable("--mode must be drain or count");
    } else if (std::strncmp(a, "--reg=", 6) == 0) {
      o.reg = a + 6;
      if (o.reg != "glibc" && o.reg != "own32" && o.reg != "ownext") Unusable("--reg must be glibc, own32 or ownext");
    } else if (std::strncmp(a, "--seconds=", 10) == 0) {
      o.seconds = std::atof(a + 10);
      if (!(o.seconds > 0 && o.seconds < 3600)) Unusable("--seconds must be in (0, 3600)");
    } else if (!ParseInt(a, "--threads", &o.threads) && !ParseInt(a, "--migrate_us", &o.migrate_us) &&
               !ParseInt(a, "--runs", &o.runs) && !ParseInt(a, "--window", &o.window) &&
               !ParseInt(a, "--hold_ns", &o.hold_ns) && !ParseInt(a, "--busy", &o.busy) &&
               !ParseInt(a, "--fence", &o.fence)) {
      Unusable(std::string("unknown flag: ") + a +
               " (flags: --mode=drain|count --reg=glibc|own32|ownext --threads --migrate_us --seconds --runs "
               "--window --hold_ns --busy --fence=0|1)");
    }
  }
  if (o.threads < 1 || o.threads > 256) Unusable("--threads must be in [1, 256]");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  g_opt = Parse(argc, argv);
  CheckRegistrationMode();
  const std::vector<int> cpus = AllowedCpus();
  g_ncpus = static_cast<uint32_t>(std::min(kMaxCpus, *std::max_element(cpus.begin(), cpus.end()) + 1));
  const long supported = Membarrier(MEMBARRIER_CMD_QUERY, 0, 0);
  if (supported < 0 || (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) == 0) {
    Unusable("membarrier PRIVATE_EXPEDITED_RSEQ not supported");
  }
  if (Membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) {
    Unusable(std::string("membarrier register failed: ") + std::strerror(errno));
  }
  std::vector<pid_t> busy;
  for (int i = 0; i < g_opt.busy; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the probe, even if it exits early
      for (;;) asm volatile("" ::: "memory");
    }
    if (pid > 0) busy.push_back(pid);
  }
  std::printf("kernel rseq feature size %lu, glibc __rseq_size %u, reg %s, mode %s, %d threads, migrate %d us, "
              "window %d, %d busy processes%s\n",
              getauxval(AT_RSEQ_FEATURE_SIZE), __rseq_size, g_opt.reg.c_str(), g_opt.mode.c_str(), g_opt.threads,
              g_opt.migrate_us, g_opt.window, g_opt.busy, g_opt.fence ? "" : ", NO FENCE (negative control)");
  int failed_runs = 0;
  uint64_t total_late = 0, total_mismatch = 0, total_aborts = 0, total_locks = 0;
  for (int run = 0; run < g_opt.runs; ++run) {
    const RunResult r = OneRun(cpus);
    failed_runs += r.failed();
    total_late += r.drain.late_commits;
    total_mismatch += r.mismatch != 0;
    total_aborts += r.aborts;
    total_locks += r.drain.locks;
    std::printf("run %d: commits %lu aborts %lu locked %lu | drain locks %lu rebias %lu late_commits %lu | counted - committed %ld%s\n",
                run, r.commits, r.aborts, r.locked, r.drain.locks, r.drain.rebias, r.drain.late_commits,
                static_cast<long>(r.mismatch), r.failed() ? "  FAIL" : "");
    std::fflush(stdout);
  }
  for (pid_t pid : busy) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  std::printf("summary: %d of %d runs failed; late commits %lu, runs whose counts mismatch %lu, aborts %lu, drain locks %lu\n",
              failed_runs, g_opt.runs, total_late, total_mismatch, total_aborts, total_locks);
  return failed_runs == 0 ? 0 : 1;
}
