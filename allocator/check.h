// PHYSMEM_DCHECK: invariant checks that run where tests run, after the kernel's VM_BUG_ON (on
// with CONFIG_DEBUG_VM). A failed check prints the condition, file:line and a message to stderr
// and aborts — it never falls through the way `assert(false)` does once NDEBUG is defined (every
// RelWithDebInfo build defines it, so plain asserts never ran, not even under the sanitizers).
//
// On unless PHYSMEM_NO_DCHECKS is defined: CMake's PHYSMEM_DCHECKS option is on for every build
// type but Release (the RelWithDebInfo build the tests and the daemon use, the ASan, TSan and fuzz
// builds) and off in Release (benchmarks), where it defines PHYSMEM_NO_DCHECKS and the condition
// is not evaluated at all.
//
//   PHYSMEM_DCHECK(idx < nr_pages_, "page index outside this zone");
//
// Who uses it: allocator/ and server/ for invariants a caller cannot violate through the API
// (those get a Status). Thread-safety: as safe as the condition it evaluates.
#ifndef PHYSMEM_ALLOCATOR_CHECK_H_
#define PHYSMEM_ALLOCATOR_CHECK_H_

#include <cstdio>
#include <cstdlib>

namespace physmem::internal {

[[noreturn]] inline void DcheckFailed(const char* condition, const char* file, int line, const char* message) {
  std::fprintf(stderr, "%s:%d: PHYSMEM_DCHECK(%s) failed: %s\n", file, line, condition, message);
  std::fflush(stderr);
  std::abort();
}

}  // namespace physmem::internal

#ifndef PHYSMEM_NO_DCHECKS
#define PHYSMEM_DCHECK(condition, message)                                                 \
  do {                                                                                     \
    if (!(condition)) [[unlikely]] {                                                       \
      ::physmem::internal::DcheckFailed(#condition, __FILE__, __LINE__, (message));        \
    }                                                                                      \
  } while (false)
inline constexpr bool kPhysmemDchecks = true;
#else
#define PHYSMEM_DCHECK(condition, message) \
  do {                                     \
  } while (false && (condition))
inline constexpr bool kPhysmemDchecks = false;
#endif

#endif  // PHYSMEM_ALLOCATOR_CHECK_H_
