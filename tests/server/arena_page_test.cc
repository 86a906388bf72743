// Tests of server/arena_page.h (the /arena, /arena.json, /arena.png replies) and of their place on
// the metrics listener (server/metrics.h: civetweb's begin_request, found by port).
#include "server/arena_page.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "allocator/page_allocator.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "server/metrics.h"
#include "tests/server/metrics_scrape.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

std::unique_ptr<PageAllocator> Make(const std::string& target, uint64_t mem_mb) {
  absl::StatusOr<Target> t = BuiltinTarget(target, mem_mb << 20);
  EXPECT_TRUE(t.ok()) << t.status();
  PageAllocatorOptions o;
  o.target = *t;
  o.arena_backing = ArenaOptions::Backing::kOrdinary;
  o.nr_cpus = 2;
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(std::move(o));
  EXPECT_TRUE(pa.ok()) << pa.status();
  return std::move(*pa);
}

// The raw reply (status line, headers, body) to `method path` on 127.0.0.1:port.
std::string HttpRaw(int port, const std::string& method, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string text;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return text;
}

TEST(ArenaPage, ThePageIsSelfContained) {
  auto pa = Make("x86_64", 512);
  std::optional<HttpReply> page = ServeArena(*pa, "/arena");
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->content_type, "text/html; charset=utf-8");
  EXPECT_THAT(page->body, HasSubstr("fetch(\"/arena.json\""));
  EXPECT_THAT(page->body, HasSubstr("setTimeout(refresh, 1000)"));
  // Nothing from elsewhere: no URL with a scheme, no external script, stylesheet or font.
  EXPECT_THAT(page->body, Not(HasSubstr("http:")));
  EXPECT_THAT(page->body, Not(HasSubstr("https:")));
  EXPECT_THAT(page->body, Not(HasSubstr("src=")));
  EXPECT_THAT(page->body, Not(HasSubstr("@font-face")));
}

TEST(ArenaPage, JsonIsAFreshSnapshot) {
  auto pa = Make("x86_64", 512);
  const std::optional<HttpReply> before = ServeArena(*pa, "/arena.json");
  ASSERT_TRUE(before.has_value());
  EXPECT_EQ(before->content_type, "application/json");
  google::protobuf::Struct parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(before->body, &parsed).ok());
  ASSERT_NE(pa->alloc_pages(GFP_KERNEL, pa->pageblock_order()), nullptr);
  const std::optional<HttpReply> after = ServeArena(*pa, "/arena.json");
  EXPECT_NE(before->body, after->body);
  const std::optional<HttpReply> png = ServeArena(*pa, "/arena.png");
  ASSERT_TRUE(png.has_value());
  EXPECT_EQ(png->content_type, "image/png");
  EXPECT_THAT(png->body, StartsWith("\x89PNG"));
}

TEST(ArenaPage, OtherPathsAreNotTheArenas) {
  auto pa = Make("x86_64", 512);
  EXPECT_FALSE(ServeArena(*pa, "/metrics").has_value());
  EXPECT_FALSE(ServeArena(*pa, "/arena/").has_value());
  EXPECT_FALSE(ServeArena(*pa, "/").has_value());
}

TEST(ArenaPage, EachMetricsListenerServesItsOwnAllocator) {
  auto x86 = Make("x86_64", 512);
  auto i386 = Make("i386", 64);
  MetricsOptions o;
  o.listen = "127.0.0.1:0";
  Metrics a(x86.get(), nullptr, nullptr, o);
  Metrics b(i386.get(), nullptr, nullptr, o);
  ASSERT_TRUE(a.StartExposer().ok());
  ASSERT_TRUE(b.StartExposer().ok());
  EXPECT_THAT(testing::HttpGet(a.port(), "/arena.json"), HasSubstr("physmemd arena: x86_64"));
  EXPECT_THAT(testing::HttpGet(b.port(), "/arena.json"), HasSubstr("physmemd arena: i386"));
  EXPECT_THAT(testing::HttpGet(a.port(), "/arena"), HasSubstr("<canvas id=\"map\""));
  EXPECT_THAT(HttpRaw(a.port(), "POST", "/arena.json"), StartsWith("HTTP/1.0 405"));
  EXPECT_THAT(HttpRaw(a.port(), "HEAD", "/arena.png"), StartsWith("HTTP/1.0 200"));
  // Paths that are not the arena's go to the exporter as before.
  EXPECT_THAT(HttpRaw(a.port(), "GET", "/nothing-here"), StartsWith("HTTP/1.0 404"));
  const int port = b.port();
  b.StopExposer();
  EXPECT_EQ(testing::HttpGet(port, "/arena.json"), "");
  EXPECT_THAT(testing::HttpGet(a.port(), "/arena.json"), HasSubstr("x86_64"));
}

}  // namespace
}  // namespace physmem
