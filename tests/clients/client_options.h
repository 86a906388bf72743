// What the client tests share about reaching a test daemon: the options that connect a client to a
// DaemonProcess (deadlines that only bound a hang, scaled to the build) and a small machine's flags.
// One definition here, not one per test file: the client tests compile several files to a
// translation unit (CMakeLists.txt, the unity build of the server and client tests).
//
// Who uses it: tests/clients/*_test.cc. Thread-safety: constants and a pure function.
#ifndef PHYSMEM_TESTS_CLIENTS_CLIENT_OPTIONS_H_
#define PHYSMEM_TESTS_CLIENTS_CLIENT_OPTIONS_H_

#include <chrono>
#include <string>
#include <vector>

#include "clients/physmem_client.h"
#include "tests/daemon_process.h"
#include "tests/time_scale.h"

namespace physmem::testing {

// Options to reach `d`: connect and call deadlines that only bound a hang, scaled to the build (a
// sanitized daemon on a busy machine can take longer than the client's default 2 s).
inline client::ClientOptions OptionsFor(const DaemonProcess& d) {
  client::ClientOptions o;
  o.target = d.unix_target();
  o.connect_timeout_ms = o.call_timeout_ms = ScaledTimeout(std::chrono::seconds(20)).count();
  return o;
}

// A 64 MiB i386 machine (DMA and Normal, no HighMem): quick to start and to fill.
inline const std::vector<std::string> kSmallI386 = {"--target=i386", "--mem_mb=64"};

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_CLIENTS_CLIENT_OPTIONS_H_
