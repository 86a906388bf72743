// physmemd's command line (server/daemon_main.cc) and the tools': --help lists the project's own
// flags with their meaning and default (not Abseil's or gRPC's), --version prints the version and
// the git commit the binary was built from (server/version.h).
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

struct CommandResult {
  int status = -1;
  std::string out;
};

CommandResult RunCommand(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = ::pclose(p);
  return r;
}

TEST(DaemonMain, HelpListsOurFlagsWithTheirDefaults) {
  const CommandResult r = RunCommand(std::string(PHYSMEMD_BINARY) + " --help");
  EXPECT_THAT(r.out, HasSubstr("Flags from server/daemon_main.cc:"));
  for (const char* flag : {"--target", "--mem_mb", "--unix_socket", "--max_alloc_wait_ms", "--metrics_listen", "--journal"}) {
    EXPECT_THAT(r.out, HasSubstr(std::string(flag) + " (")) << flag;
  }
  EXPECT_THAT(r.out, HasSubstr("default: 10000;"));  // --max_alloc_wait_ms
  EXPECT_THAT(r.out, Not(HasSubstr("No flags matched")));
  EXPECT_THAT(r.out, Not(HasSubstr("--flagfile"))) << "Abseil's own flags belong to --helpfull";
}

TEST(DaemonMain, VersionPrintsTheVersionAndTheCommit) {
  for (const char* binary : {PHYSMEMD_BINARY, PHYSMEMCTL_BINARY}) {
    const CommandResult r = RunCommand(std::string(binary) + " --version");
    EXPECT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << binary << ": " << r.out;
    // "physmemd 0.1.0 (commit 0123456789ab)", "-dirty" when built from uncommitted changes.
    EXPECT_THAT(r.out, MatchesRegex("physmem(d|ctl) [0-9]+\\.[0-9]+\\.[0-9]+ \\(commit ([0-9a-f]{12}(-dirty)?|unknown)\\)\n"))
        << binary;
    EXPECT_THAT(r.out, Not(HasSubstr("Debug build")));
  }
}

}  // namespace
}  // namespace physmem
