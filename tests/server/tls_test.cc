// Mutual TLS on TCP with real certificates (made by the openssl CLI for each run): the lease
// belongs to the certificate subject that created it; another client certificate is another
// identity; no certificate, or one from another CA, gets no connection at all.
#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "physmem/v1/physmem.grpc.pb.h"
#include "tests/daemon_process.h"

namespace physmem {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class MutualTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/physmemd-tls-XXXXXX";
    dir_ = new std::string(::mkdtemp(tmpl));
    const std::string d = *dir_;
    auto run = [](const std::string& cmd) { ASSERT_EQ(std::system((cmd + " >/dev/null 2>&1").c_str()), 0) << cmd; };
    auto ca = [&](const std::string& name) {
      run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=" + name + " -keyout " + d + "/" + name +
          ".key -out " + d + "/" + name + ".pem");
    };
    auto leaf = [&](const std::string& name, const std::string& ca_name, const std::string& ext) {
      run("openssl req -newkey rsa:2048 -nodes -subj '/O=physmemd-test/CN=" + name + "' -keyout " + d + "/" + name +
          ".key -out " + d + "/" + name + ".csr");
      std::ofstream(d + "/" + name + ".ext") << ext << "\n";
      run("openssl x509 -req -days 2 -in " + d + "/" + name + ".csr -CA " + d + "/" + ca_name + ".pem -CAkey " + d +
          "/" + ca_name + ".key -CAcreateserial -extfile " + d + "/" + name + ".ext -out " + d + "/" + name + ".pem");
    };
    ca("ca");
    ca("rogue-ca");
    leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost");
    leaf("client-a", "ca", "extendedKeyUsage=clientAuth");
    leaf("client-b", "ca", "extendedKeyUsage=clientAuth");
    leaf("client-rogue", "rogue-ca", "extendedKeyUsage=clientAuth");
  }
  static void TearDownTestSuite() {
    std::system(("rm -rf " + *dir_).c_str());
    delete dir_;
  }

  void SetUp() override {
    const std::string d = *dir_;
    daemon_ = std::make_unique<testing::DaemonProcess>(std::vector<std::string>{
        "--target=x86_64", "--mem_mb=64", "--tcp=127.0.0.1:0", "--tls_cert=" + d + "/server.pem",
        "--tls_key=" + d + "/server.key", "--tls_client_ca=" + d + "/ca.pem"});
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
    ASSERT_NE(daemon_->tcp_port(), 0) << daemon_->log();
  }

  std::unique_ptr<v1::PhysMem::Stub> Client(const std::string& name) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = Slurp(*dir_ + "/ca.pem");
    if (!name.empty()) {
      o.pem_private_key = Slurp(*dir_ + "/" + name + ".key");
      o.pem_cert_chain = Slurp(*dir_ + "/" + name + ".pem");
    }
    auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(daemon_->tcp_port()), grpc::SslCredentials(o));
    return v1::PhysMem::NewStub(ch);
  }

  // The first call on a channel: its deadline also bounds the TLS handshake (scaled to the build,
  // as a sanitized handshake is slow). The lease lives a day, past any slow build's test.
  static grpc::Status CreateLease(v1::PhysMem::Stub* s, uint64_t* id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + testing::ScaledTimeout(std::chrono::seconds(5)));
    v1::CreateLeaseRequest r;
    r.set_ttl_ms(int64_t{24} * 3600 * 1000);
    v1::CreateLeaseResponse resp;
    grpc::Status st = s->CreateLease(&ctx, r, &resp);
    *id = resp.lease_id();
    return st;
  }

  static std::string* dir_;
  std::unique_ptr<testing::DaemonProcess> daemon_;
};
std::string* MutualTls::dir_ = nullptr;

TEST_F(MutualTls, LeaseBelongsToTheCertificateSubject) {
  auto a = Client("client-a");
  uint64_t lease = 0;
  ASSERT_TRUE(CreateLease(a.get(), &lease).ok());
  grpc::ClientContext ctx;
  v1::GetLeaseRequest g;
  g.set_lease_id(lease);
  v1::LeaseInfo info;
  ASSERT_TRUE(a->GetLease(&ctx, g, &info).ok());
  EXPECT_THAT(info.identity(), StartsWith("x509:"));
  EXPECT_THAT(info.identity(), HasSubstr("CN=client-a"));
}

TEST_F(MutualTls, AnotherCertificateIsAnotherIdentity) {
  auto a = Client("client-a");
  auto b = Client("client-b");
  uint64_t lease = 0;
  ASSERT_TRUE(CreateLease(a.get(), &lease).ok());
  v1::AllocPagesRequest r;
  r.set_lease_id(lease);
  r.set_gfp("GFP_KERNEL");
  v1::Allocation page;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(a->AllocPages(&ctx, r, &page).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::Allocation out;
    EXPECT_EQ(b->AllocPages(&ctx, r, &out).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    v1::FreePagesRequest f;
    f.set_lease_id(lease);
    f.set_pfn(page.pfn());
    v1::FreePagesResponse out;
    EXPECT_EQ(b->FreePages(&ctx, f, &out).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    v1::RevokeLeaseRequest rv;
    rv.set_lease_id(lease);
    v1::RevokeLeaseResponse out;
    EXPECT_EQ(b->RevokeLease(&ctx, rv, &out).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    v1::ListLeasesResponse out;
    ASSERT_TRUE(b->ListLeases(&ctx, v1::ListLeasesRequest(), &out).ok());
    EXPECT_EQ(out.leases_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    v1::RevokeLeaseRequest rv;
    rv.set_lease_id(lease);
    v1::RevokeLeaseResponse out;
    ASSERT_TRUE(a->RevokeLease(&ctx, rv, &out).ok());
    EXPECT_EQ(out.pages_freed(), 1u);
  }
}

// Page contents follow the certificate too: client-b can neither read nor write client-a's page,
// through client-a's lease or through a lease of its own, and client-a's bytes stay as written.
TEST_F(MutualTls, AnotherCertificateCannotReadOrWriteThePages) {
  auto a = Client("client-a");
  auto b = Client("client-b");
  uint64_t lease_a = 0, lease_b = 0;
  ASSERT_TRUE(CreateLease(a.get(), &lease_a).ok());
  ASSERT_TRUE(CreateLease(b.get(), &lease_b).ok());
  v1::Allocation page;
  {
    grpc::ClientContext ctx;
    v1::AllocPagesRequest r;
    r.set_lease_id(lease_a);
    r.set_gfp("GFP_KERNEL");
    ASSERT_TRUE(a->AllocPages(&ctx, r, &page).ok());
  }
  auto write = [&](v1::PhysMem::Stub* s, uint64_t lease, const std::string& data) {
    grpc::ClientContext ctx;
    v1::WritePagesRequest w;
    w.set_lease_id(lease);
    w.set_pfn(page.pfn());
    w.set_data(data);
    v1::WritePagesResponse out;
    return s->WritePages(&ctx, w, &out);
  };
  auto read = [&](v1::PhysMem::Stub* s, uint64_t lease, std::string* data) {
    grpc::ClientContext ctx;
    v1::ReadPagesRequest r;
    r.set_lease_id(lease);
    r.set_pfn(page.pfn());
    r.set_length(5);
    v1::ReadPagesResponse out;
    grpc::Status st = s->ReadPages(&ctx, r, &out);
    *data = out.data();
    return st;
  };
  ASSERT_TRUE(write(a.get(), lease_a, "alice").ok());
  std::string got;
  for (uint64_t lease : {lease_a, lease_b}) {
    EXPECT_EQ(read(b.get(), lease, &got).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(got, "");
    EXPECT_EQ(write(b.get(), lease, "bobby").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  ASSERT_TRUE(read(a.get(), lease_a, &got).ok());
  EXPECT_EQ(got, "alice");
}

TEST_F(MutualTls, NoCertificateOrAForeignCaGetsNoConnection) {
  for (const char* who : {"", "client-rogue"}) {
    auto c = Client(who);
    uint64_t lease = 0;
    grpc::Status s = CreateLease(c.get(), &lease);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << (*who ? who : "no certificate") << ": "
                                                              << s.error_message();
  }
}

}  // namespace
}  // namespace physmem
