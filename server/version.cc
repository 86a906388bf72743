#include "server/version.h"

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "physmem_version.h"  // generated in the build tree by cmake/version.cmake

namespace physmem {

const char* Version() { return PHYSMEM_VERSION_STRING; }
const char* GitCommit() { return PHYSMEM_GIT_COMMIT; }
std::string VersionLine(const std::string& program) {
  return program + " " + Version() + " (commit " + GitCommit() + ")\n";
}

void SetFlagsUsage(const std::string& program, std::vector<std::string> own_sources) {
  absl::FlagsUsageConfig config;
  auto own = [own_sources](absl::string_view path) {
    for (const std::string& s : own_sources) {
      if (absl::EndsWith(path, s)) return true;
    }
    return false;
  };
  config.contains_helpshort_flags = own;
  // "Flags from server/daemon_main.cc", not the build machine's absolute path.
  config.normalize_filename = [own_sources](absl::string_view path) -> std::string {
    for (const std::string& s : own_sources) {
      if (absl::EndsWith(path, s)) return s;
    }
    return std::string(path);
  };
  config.contains_help_flags = own;
  config.version_string = [program] { return VersionLine(program); };
  absl::SetFlagsUsageConfig(config);
}

}  // namespace physmem
