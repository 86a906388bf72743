#include "allocator/rseq.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <string>

namespace physmem {
namespace {

// Size of the original struct rseq fields (cpu_id_start, cpu_id, rseq_cs, flags): what a kernel
// that predates AT_RSEQ_FEATURE_SIZE (Linux < 6.3, auxv entry 0) fills.
constexpr size_t kRseqOriginalFeatureSize = 20;

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif

long Membarrier(int cmd, unsigned flags, int cpu) { return syscall(__NR_membarrier, cmd, flags, cpu); }

// True if the kernel offers membarrier `cmd` and registered this process for it.
bool QueryAndRegisterMembarrier(int cmd, int register_cmd) {
  const long supported = Membarrier(MEMBARRIER_CMD_QUERY, 0, 0);
  if (supported < 0 || (supported & cmd) == 0) return false;
  return Membarrier(register_cmd, 0, 0) == 0;
}

// Largest number in a kernel cpulist ("0-3,8-11" -> 11), or -1 if there is none.
int MaxIdInCpuList(const std::string& list) {
  int max_id = -1;
  int value = -1;
  for (char c : list) {
    if (std::isdigit(static_cast<unsigned char>(c))) {
      value = (value < 0 ? 0 : value * 10) + (c - '0');
    } else {
      max_id = std::max(max_id, value);
      value = -1;
    }
  }
  return std::max(max_id, value);
}

}  // namespace

size_t RseqUsableSize() {
#if PHYSMEM_RSEQ_X86_64
  static const size_t usable = [] {
    if (__rseq_size == 0) return size_t{0};  // glibc did not register (tunable, old kernel)
    size_t kernel = getauxval(AT_RSEQ_FEATURE_SIZE);
    if (kernel == 0) kernel = kRseqOriginalFeatureSize;
    return std::min<size_t>(kernel, __rseq_size);
  }();
  return usable;
#else
  return 0;
#endif
}

bool RseqRegistered() {
#if PHYSMEM_RSEQ_X86_64
  if (RseqUsableSize() < kRseqRequiredSize) return false;
  const auto cpu = static_cast<int32_t>(__atomic_load_n(&RseqArea()->cpu_id, __ATOMIC_RELAXED));
  return cpu >= 0;
#else
  return false;
#endif
}

namespace rseq_internal {
int SchedGetCpuOrZero() {
  const int cpu = sched_getcpu();
  return cpu >= 0 ? cpu : 0;
}
}  // namespace rseq_internal

bool MembarrierRseqReady() {
  static const bool ready =  // thread-safe static init: once
      QueryAndRegisterMembarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ);
  return ready;
}

int FenceCpu(int cpu) {
  if (Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu) != 0) {
    return -errno;
  }
  return 0;
}

bool MembarrierExpeditedReady() {
  static const bool ready =
      QueryAndRegisterMembarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED);
  return ready;
}

int FenceAllThreads() { return Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0 ? -errno : 0; }

int NumPossibleCpus() {
  std::ifstream in("/sys/devices/system/cpu/possible");
  std::string list;
  if (in && std::getline(in, list)) {
    const int max_id = MaxIdInCpuList(list);
    if (max_id >= 0) return max_id + 1;
  }
  return std::max(1, get_nprocs_conf());
}

}  // namespace physmem
