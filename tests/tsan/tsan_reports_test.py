#!/usr/bin/env python3
"""Unit test of tsan_reports.py's verdicts on reports shaped like the ones TSan writes (the frames
are taken from real reports of this project's TSan run, shortened)."""
import os
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsan_reports  # noqa: E402

SEP = "=================="
OURS_FRAME = "#0 physmem::LeaseTable::Renew(unsigned long) ../server/lease_table.cc:88 (physmemd+0x1234)"
OURS_FRAME2 = "#1 OnReadDone ../server/physmem_service.cc:58 (physmemd+0xe71c9)"
GRPC_FRAME = ("#0 grpc::internal::CallOpSet<grpc::internal::CallOpSendInitialMetadata>::FillOps(grpc::internal::Call*) "
              "/usr/include/grpcpp/impl/call_op_set.h:897 (physmemd+0x66ddc)")
STD_FRAME = "#0 std::function<void ()>::function() /usr/include/c++/12/bits/std_function.h:369 (physmemd+0x166125)"
LIBGRPC_FRAME = "#1 <null> <null> (libgrpc++.so.1.51+0xa3f49)"
PB_FRAME = "#0 physmem::v1::KeepAliveRequest::Clear() gen/physmem/v1/physmem.pb.cc:1790 (physmemd+0x1ab9ff)"
PROTOBUF_FRAME = ("#1 google::protobuf::MessageLite::ParseFromZeroCopyStream(google::protobuf::io::ZeroCopyInputStream*) "
                  "<null> (libprotobuf.so.32+0x11f589)")
TSAN_FRAME = "#0 memcpy ../../../../src/libsanitizer/sanitizer_common/sanitizer_common_interceptors.inc:827 (libtsan.so.2+0x4d3c1)"


STD_NULL_FRAME = ("#1 std::__new_allocator<char>::allocate(unsigned long, void const*) <null> "
                  "(physmemd_test_hooks+0x54f95)")
ABSL_FRAME = "#2 absl::debian3::StrAppend(std::string*, absl::debian3::AlphaNum const&) <null> (libabsl_strings.so.20220623+0x1185b)"
ABSL_STATUS_FRAME = "#4 <null> <null> (libabsl_status.so.20220623+0x3699)"


def report(first, second, kind="data race", summary=True, block=OURS_FRAME):
    lines = [f"WARNING: ThreadSanitizer: {kind} (pid=4242)", "  Write of size 8 at 0x7b0400000010 by thread T1:"]
    lines += ["    " + f for f in first]
    lines += ["", "  Previous read of size 8 at 0x7b0400000010 by thread T2:"]
    lines += ["    " + f for f in second] if second else ["    [failed to restore the stack]"]
    lines += ["", "  Location is heap block of size 16 at 0x7b0400000010 allocated by main thread:",
              "    #0 operator new(unsigned long) ../../../../src/libsanitizer/tsan/tsan_new_delete.cpp:64 (libtsan.so.2+0x87323)",
              "    " + block.replace("#0", "#1"), "",
              "  Thread T1 (tid=4243, running) created by main thread at:",
              "    #0 pthread_create ../../../../src/libsanitizer/tsan/tsan_interceptors_posix.cpp:1001 (libtsan.so.2+0x5e686)",
              "    " + LIBGRPC_FRAME, ""]
    if summary:
        lines.append(f"SUMMARY: ThreadSanitizer: {kind} somewhere")
    return SEP + "\n" + "\n".join(lines) + "\n" + SEP + "\n"


def verdicts(text):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "tsan.4242"), "w") as f:
            f.write(text + "ThreadSanitizer: reported 1 warnings\n")
        return [r.verdict() for r in tsan_reports.read_reports(d)]


class Verdicts(unittest.TestCase):
    def test_two_accesses_by_our_code_are_ours(self):
        self.assertEqual(verdicts(report([OURS_FRAME], [OURS_FRAME2])), ["ours"])

    def test_an_access_by_grpc_code_makes_it_grpc_ordered(self):
        self.assertEqual(verdicts(report([GRPC_FRAME], [OURS_FRAME])), ["grpc-ordered"])
        self.assertEqual(verdicts(report([GRPC_FRAME], [GRPC_FRAME])), ["grpc-ordered"])

    def test_a_std_frame_without_a_file_counts_for_its_caller(self):
        # libstdc++'s _M_create in our binary, called by Abseil's status code called by FillOps.
        write = [TSAN_FRAME, STD_NULL_FRAME, ABSL_STATUS_FRAME, GRPC_FRAME.replace("#0", "#5")]
        self.assertEqual(verdicts(report(write, [TSAN_FRAME, ABSL_FRAME])), ["grpc-ordered"])

    def test_library_only_accesses_to_a_block_grpc_allocated_are_grpc_ordered(self):
        # Abseil called from a gRPC core thread reads a string FillOps made; the write's stack is lost.
        self.assertEqual(verdicts(report([TSAN_FRAME, ABSL_FRAME], None, block=GRPC_FRAME)), ["grpc-ordered"])
        # The same accesses on a block our code allocated stay ours.
        self.assertEqual(verdicts(report([TSAN_FRAME, ABSL_FRAME], None)), ["ours"])
        # A frame of ours in either access keeps it ours, whoever allocated the block.
        self.assertEqual(verdicts(report([OURS_FRAME], None, block=GRPC_FRAME)), ["ours"])

    def test_libstdcxx_frames_count_for_their_caller(self):
        # std::function's code called from libgrpc++: gRPC's access.
        self.assertEqual(verdicts(report([STD_FRAME, LIBGRPC_FRAME], [OURS_FRAME])), ["grpc-ordered"])
        # std::function's code called from ours: ours.
        self.assertEqual(verdicts(report([STD_FRAME, OURS_FRAME2], [OURS_FRAME])), ["ours"])

    def test_generated_and_protobuf_code_count_for_their_caller(self):
        parse_by_grpc = [PB_FRAME, PROTOBUF_FRAME,
                         "#2 grpc::SerializationTraits<physmem::v1::KeepAliveRequest, void>::Deserialize(grpc::ByteBuffer*, "
                         "google::protobuf::MessageLite*) /usr/include/grpcpp/impl/codegen/proto_utils.h:114 (physmemd+0x91a)"]
        self.assertEqual(verdicts(report(parse_by_grpc, [PB_FRAME.replace("Clear", "lease_id"), OURS_FRAME2])),
                         ["grpc-ordered"])
        self.assertEqual(verdicts(report([PB_FRAME, OURS_FRAME2], [OURS_FRAME])), ["ours"])

    def test_an_interceptor_counts_for_its_caller(self):
        self.assertEqual(verdicts(report([TSAN_FRAME, LIBGRPC_FRAME], [OURS_FRAME])), ["grpc-ordered"])
        self.assertEqual(verdicts(report([TSAN_FRAME, OURS_FRAME2], [OURS_FRAME])), ["ours"])

    def test_an_unknown_maker_is_not_excused(self):
        # Stack not restored on one side, ours on the other: cannot be shown to be gRPC's.
        self.assertEqual(verdicts(report([OURS_FRAME], None)), ["ours"])
        # Only neutral frames: nobody can be named.
        self.assertEqual(verdicts(report([STD_FRAME], [OURS_FRAME])), ["ours"])
        # A library that is neither ours nor gRPC's nor neutral.
        self.assertEqual(verdicts(report(["#0 <null> <null> (libfoo.so+0x10)"], [OURS_FRAME])), ["ours"])

    def test_every_other_kind_of_report_is_ours(self):
        for kind in ("lock-order-inversion (potential deadlock)", "heap-use-after-free (virtual call vs free)",
                     "destroy of a locked mutex"):
            self.assertEqual(verdicts(report([GRPC_FRAME], [GRPC_FRAME], kind=kind)), ["ours"], kind)
        self.assertEqual(verdicts(report([GRPC_FRAME], [OURS_FRAME], kind="data race on vptr (ctor/dtor vs virtual call)")),
                         ["grpc-ordered"])

    def test_tsan_failing_itself_is_ours(self):
        check = ("ThreadSanitizer: CHECK failed: sanitizer_deadlock_detector1.cpp:166 \"((!dd.isHeld(&lt->dd, m->id))) "
                 "!= (0)\" (0x0, 0x0) (tid=8039)\n    " + TSAN_FRAME + "\n")
        self.assertEqual(verdicts(check), ["ours"])
        self.assertEqual(verdicts(report([GRPC_FRAME], [OURS_FRAME]) + check), ["grpc-ordered", "ours"])
        # Its exit line alone is not a failure.
        self.assertEqual(verdicts(report([GRPC_FRAME], [OURS_FRAME]) + "ThreadSanitizer: reported 1 warnings\n"),
                         ["grpc-ordered"])

    def test_a_leaked_thread_is_judged_by_its_creator(self):
        def leak(creator):
            return (SEP + "\nWARNING: ThreadSanitizer: thread leak (pid=1)\n"
                    "  Thread T1 (tid=2, finished) created by main thread at:\n"
                    "    #0 pthread_create ../../../../src/libsanitizer/tsan/tsan_interceptors_posix.cpp:1001 (libtsan.so.2+0x5e686)\n"
                    "    " + creator + "\n\nSUMMARY: ThreadSanitizer: thread leak\n" + SEP + "\n")
        self.assertEqual(verdicts(leak("#1 grpc_core::Thread::Thread(char const*) <null> (libgpr.so.29+0xb0cb)")),
                         ["grpc-ordered"])
        self.assertEqual(verdicts(leak(OURS_FRAME.replace("#0", "#1"))), ["ours"])

    def test_a_report_cut_short_is_set_apart(self):
        self.assertEqual(verdicts(report([OURS_FRAME], [OURS_FRAME2], summary=False)), ["cut-short"])

    def test_several_reports_in_a_file(self):
        text = report([GRPC_FRAME], [OURS_FRAME]) + report([OURS_FRAME], [OURS_FRAME2])
        self.assertEqual(verdicts(text), ["grpc-ordered", "ours"])


class CommandLine(unittest.TestCase):
    def run_on(self, text):
        with tempfile.TemporaryDirectory() as d:
            if text is not None:
                with open(os.path.join(d, "tsan.1"), "w") as f:
                    f.write(text)
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tsan_reports.py")
            return subprocess.run([sys.executable, script, d], capture_output=True, text=True, timeout=60)

    def test_exit_status_says_whether_a_report_is_ours(self):
        self.assertEqual(self.run_on(None).returncode, 0)
        clean = self.run_on(report([GRPC_FRAME], [OURS_FRAME]))
        self.assertEqual(clean.returncode, 0, clean.stdout)
        self.assertIn("0 of ours, 1 gRPC-ordered", clean.stdout)
        bad = self.run_on(report([GRPC_FRAME], [OURS_FRAME]) + report([OURS_FRAME], [OURS_FRAME2]))
        self.assertEqual(bad.returncode, 1, bad.stdout)
        self.assertIn("--- OURS", bad.stdout)
        self.assertIn("lease_table.cc:88", bad.stdout)

    def test_no_directory_is_a_usage_error(self):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tsan_reports.py")
        run = subprocess.run([sys.executable, script, "/nonexistent/dir"], capture_output=True, text=True)
        self.assertEqual(run.returncode, 2)


if __name__ == "__main__":
    unittest.main()
