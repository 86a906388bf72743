// The daemon's Prometheus exporter read the way Prometheus reads it: GET /metrics over a plain
// socket, and the sum of one family's samples. Tests that wait for the daemon to show something
// (a call parked among the waiters, a lease's pages reclaimed) watch these counters instead of
// sleeping; metrics_test.cc parses the whole text.
//
// Who uses it: tests/server/{metrics,physmemd,exhaustion}_test.cc, fault_helpers.h.
// Thread-safety: free functions, safe from any thread.
#ifndef PHYSMEM_TESTS_SERVER_METRICS_SCRAPE_H_
#define PHYSMEM_TESTS_SERVER_METRICS_SCRAPE_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tests/time_scale.h"

namespace physmem::testing {

// GET http://127.0.0.1:<port><path>; the body, or "" on any failure (no 200, no answer within a
// scaled 5 s).
inline std::string HttpGet(int port, const std::string& path = "/metrics") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  const auto wait = ScaledTimeout(std::chrono::seconds(5));  // a scrape of a slow daemon
  const timeval tv{static_cast<time_t>(wait.count() / 1000), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string text;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  const size_t body = text.find("\r\n\r\n");
  if (text.rfind("HTTP/1.", 0) != 0 || body == std::string::npos) return "";
  if (text.find(" 200 ") > text.find("\r\n")) return "";
  return text.substr(body + 4);
}

// The sum of the samples of metric `name` on the exporter at 127.0.0.1:`port` whose labels
// include each of `labels` (as text, e.g. `grpc_method="AllocPages"`); -1 if the scrape failed.
inline double MetricSum(int port, const std::string& name, const std::vector<std::string>& labels = {}) {
  const std::string text = HttpGet(port);
  if (text.empty()) return -1;
  std::istringstream in(text);
  double sum = 0;
  for (std::string line; std::getline(in, line);) {
    // name{labels} value, or name value; not another family that starts with `name`
    if (line.empty() || line[0] == '#' || line.rfind(name, 0) != 0) continue;
    if (line.size() <= name.size() || (line[name.size()] != '{' && line[name.size()] != ' ')) continue;
    const size_t value = line.rfind(' ');
    const std::string_view label_text(line.data(), value);
    bool match = true;
    for (const std::string& l : labels) match = match && label_text.find(l) != std::string_view::npos;
    if (match) sum += std::strtod(line.c_str() + value + 1, nullptr);
  }
  return sum;
}

}  // namespace physmem::testing

#endif  // PHYSMEM_TESTS_SERVER_METRICS_SCRAPE_H_
