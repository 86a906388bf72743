#!/usr/bin/env python3
"""Judges the ThreadSanitizer reports of a TSan run of the server and client tests.

Why this exists: Debian 12's gRPC is not built with TSan. Our binaries contain gRPC's C++ code
(grpcpp/ headers, compiled WITH TSan) while the hand-offs that order it are inside libgrpc
(without), so TSan reports races between two pieces of gRPC code, or between gRPC's code and the
handler it hands a message to, that gRPC orders invisibly. TSan's suppression language matches
frames by name; it cannot say "this access was made by gRPC's code" (the top frame is often
libstdc++'s std::function or protobuf's generated code called by gRPC), and matching any frame
would hide our handlers, which gRPC's frames always call. So the run writes every report to files
(TSAN_OPTIONS=log_path=...,halt_on_error=0,exitcode=0) and this script decides, report by report:

  - A data race where at least one of the two accesses was made by gRPC's code is "gRPC-ordered":
    counted and summarized, not failed. Who made an access is the first frame of its stack that is
    not neutral (TSan's runtime, libc, libstdc++, Abseil, protobuf and its generated code are
    neutral: they run on behalf of whoever called them).
  - A thread leak of a thread that gRPC's code created is gRPC's own, as above.
  - A data race with no frame but libraries' in either access (a stack not restored, or only
    neutral frames called from uninstrumented code) on a heap block that gRPC's code allocated is
    gRPC-ordered too: e.g. a status string FillOps made, read by Abseil on a gRPC core thread.
    A libstdc++ function in our binary whose file TSan's symbolizer did not find (std::... <null>)
    is neutral, as its /usr/include/c++/ file would be.
  - Every other report fails the run: a race between two accesses made by our code (allocator/,
    server/, clients/, tests/) on any memory, one where an access's maker is unknown (stack not
    restored, only neutral frames) and the block is not gRPC's, and every report that is not a data race (lock-order
    inversion, use after free, thread leak, ...).
  - A report cut short (its process was killed while writing it, as the kill -9 tests do) is
    listed in full and counted, not failed: it cannot be judged.
  - Anything else TSan wrote outside a report but its exit line ("reported N warnings") fails the
    run too: a "CHECK failed" or other fatal message of TSan's own, after which the process ended
    with exit status 0 (exitcode=0 applies to TSan's deaths as well).

What this cannot check: an access by our code racing one by gRPC's code (e.g. a handler touching
a response after Finish()) — ordering between them lives in libgrpc. tests/tsan/racy_handler_canary.cc
proves that a race in a handler still fails the run.

Usage: tsan_reports.py DIR  (the directory of log_path's files; exit 0 = nothing of ours, 1 = a
report of ours, 2 = usage). --quiet prints only the verdict and the failing reports.
"""
import collections
import os
import re
import sys

# Frames that run on behalf of their caller.
NEUTRAL = re.compile(
    r"/libsanitizer/|libtsan\.so|/usr/include/c\+\+/|libstdc\+\+\.so|libc\.so|libm\.so"
    r"|/usr/include/absl/|libabsl_|/usr/include/google/protobuf/|libprotobuf\.so"
    r"|(^|[ /])gen/physmem/v1/[^ ]*\.pb\.(h|cc)"
    # libstdc++'s templates instantiated in our binaries, when TSan's symbolizer gives no file
    # (their file is /usr/include/c++/, as addr2line shows): e.g. the std::string that Abseil's
    # status code, called by gRPC's FillOps, creates through our binary's copy of _M_create.
    r"|^std::\S.* <null> \(")
# gRPC's code: its headers (compiled into our binaries) and its libraries.
GRPC = re.compile(
    r"/usr/include/grpcpp/|/usr/include/grpc/|/usr/include/grpc\+\+/"
    r"|libgrpc\+\+[^ ]*\.so|libgrpc[^ ]*\.so|libgpr\.so|libaddress_sorting\.so|libupb\.so")
# Our code, as TSan prints it from the build directory (../server/x.cc) or an absolute path.
OURS = re.compile(r"(^|[ /])(allocator|server|clients|tests)/[^ ]+\.(cc|h):\d+")

ACCESS = re.compile(r"^  (Previous )?(atomic )?(read|write)\b", re.IGNORECASE)
FRAME = re.compile(r"^    #\d+ (.*)$")
SEPARATOR = "=================="
EXIT_LINE = re.compile(r"^ThreadSanitizer: reported \d+ warnings$")


def maker(frames):
    """'ours', 'grpc' or 'unknown': who made an access whose stack is `frames` (top first)."""
    for frame in frames:
        if OURS.search(frame):
            return "ours"
        if GRPC.search(frame):
            return "grpc"
        if NEUTRAL.search(frame):
            continue
        return "unknown"
    return "unknown"


def function_of(frame):
    """The function name of a frame line ('#3 Foo::Bar(int) file:line (module+0x..)')."""
    text = re.sub(r" \(?[^ ]*\+0x[0-9a-f]+\)?$", "", frame)
    return re.sub(r" [^ ]+:\d+(:\d+)?$", "", text)


class Report:
    def __init__(self, path, lines, runtime_message=None):
        self.path = path
        self.lines = lines
        header = next((l for l in lines if l.startswith("WARNING: ThreadSanitizer: ")), "")
        self.kind = re.sub(r" \(pid=\d+\)$", "", header[len("WARNING: ThreadSanitizer: "):])
        if runtime_message is not None:
            self.kind = "TSan runtime message: " + runtime_message
        self.complete = runtime_message is not None or any(
            l.startswith("SUMMARY: ThreadSanitizer") for l in lines)
        self.accesses = []  # one list of frames per access, in report order
        current = None
        for line in lines:
            if ACCESS.match(line):
                current = []
                self.accesses.append(current)
            elif line.startswith("  ") and not line.startswith("    "):
                current = None
            elif current is not None:
                m = FRAME.match(line)
                if m:
                    current.append(m.group(1))

    def stack_after(self, header):
        """The frames under the first line matching `header` (up to the next non-frame line)."""
        frames, inside = [], False
        for line in self.lines:
            if re.match(header, line):
                if inside:
                    break
                inside = True
            elif inside:
                m = FRAME.match(line)
                if m:
                    frames.append(m.group(1))
                elif line.strip():
                    break
        return frames

    def creator(self):
        """Who created the (first) thread a report names: the maker of its creation stack."""
        return maker(self.stack_after(r"^  Thread T\d+ .*created by"))

    def block_allocator(self):
        """Who allocated the heap block a report is about: the maker of its allocation stack."""
        return maker(self.stack_after(r"^  Location is heap block .*allocated by"))

    def makers(self):
        return [maker(frames) for frames in self.accesses]

    def only_library_code(self):
        """No access shows a frame that is not a library's: each stack is empty (not restored) or
        all NEUTRAL frames with no caller recorded (called from uninstrumented code)."""
        return all(all(NEUTRAL.search(f) for f in frames) for frames in self.accesses)

    def verdict(self):
        """'grpc-ordered', 'cut-short' or 'ours'."""
        if not self.complete:
            return "cut-short"
        if self.kind == "thread leak" and self.creator() == "grpc":
            return "grpc-ordered"  # a thread gRPC's code created and never joined: gRPC's own
        if not self.kind.startswith("data race"):
            return "ours"
        makers = self.makers()
        if len(makers) == 2 and "grpc" in makers:
            return "grpc-ordered"
        # Neither access has a frame of ours or of unknown code, and gRPC's code allocated the
        # block: e.g. a status string FillOps made, read by Abseil from a gRPC core thread.
        if len(makers) == 2 and self.only_library_code() and self.block_allocator() == "grpc":
            return "grpc-ordered"
        return "ours"

    def signature(self):
        """The first frame of each access that says who made it, for the summary."""
        parts = []
        for frames in self.accesses:
            decisive = next((f for f in frames if not NEUTRAL.search(f) or OURS.search(f)),
                            frames[0] if frames else "(stack not restored)")
            parts.append(function_of(decisive)[:110])
        return self.kind + ": " + " | ".join(sorted(parts))


def read_reports(directory):
    reports = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        for chunk in text.split(SEPARATOR):
            lines = chunk.strip("\n").split("\n")
            if any(l.startswith("WARNING: ThreadSanitizer: ") for l in lines):
                reports.append(Report(path, lines))
                continue
            # Between reports TSan writes only its exit line; anything else is TSan itself failing.
            unexpected = [l for l in lines if l.strip() and not EXIT_LINE.match(l) and not l.startswith("    ")]
            if unexpected:
                reports.append(Report(path, lines, runtime_message=unexpected[0]))
    return reports


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    quiet = "--quiet" in argv
    if len(args) != 1 or not os.path.isdir(args[0]):
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        print("usage: tsan_reports.py [--quiet] DIR", file=sys.stderr)
        return 2
    reports = read_reports(args[0])
    by_verdict = collections.defaultdict(list)
    for r in reports:
        by_verdict[r.verdict()].append(r)
    processes = len({r.path for r in reports})
    print(f"tsan_reports: {len(reports)} reports from {processes} processes: "
          f"{len(by_verdict['ours'])} of ours, {len(by_verdict['grpc-ordered'])} gRPC-ordered, "
          f"{len(by_verdict['cut-short'])} cut short")
    if not quiet:
        common = collections.Counter(r.signature() for r in by_verdict["grpc-ordered"])
        for signature, n in common.most_common(15):
            print(f"  {n:6d}  {signature}")
        for r in by_verdict["cut-short"]:
            print(f"--- cut short ({r.path}):")
            print("\n".join(r.lines))
    for r in by_verdict["ours"]:
        print(f"--- OURS ({r.path}), makers {r.makers()}:")
        print("\n".join(r.lines))
    return 1 if by_verdict["ours"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
