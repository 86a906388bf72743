// The version of physmemd and its tools, and the git commit they were built from (written by
// cmake/version.cmake at every build; "-dirty" when the tree had uncommitted changes).
//
// Who uses it: the --version of physmemd, physmemctl and physmem_loadgen, physmemd's started line.
// Thread-safety: constant strings.
#ifndef PHYSMEM_SERVER_VERSION_H_
#define PHYSMEM_SERVER_VERSION_H_

#include <string>
#include <vector>

namespace physmem {

const char* Version();    // "0.1.0"
const char* GitCommit();  // "0123456789ab", "0123456789ab-dirty" or "unknown"
// "<program> 0.1.0 (commit 0123456789ab)\n", what --version prints.
std::string VersionLine(const std::string& program);

// Abseil's flag usage for `program`: --help and --helpshort list only the flags defined in source
// files whose path ends with one of `own_sources` (not Abseil's or gRPC's), --version prints
// VersionLine(program). Call before absl::ParseCommandLine.
void SetFlagsUsage(const std::string& program, std::vector<std::string> own_sources);

}  // namespace physmem

#endif  // PHYSMEM_SERVER_VERSION_H_
