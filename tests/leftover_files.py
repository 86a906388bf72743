#!/usr/bin/python3
"""No test leaves files behind: the physmem* entries of /dev/shm and /tmp (arenas, journals,
daemon directories with their sockets and logs) before a test run, and after it.

scripts/test.sh records the entries before its first test stage and checks after its last one
that the run added none: an arena or journal left in /dev/shm holds memory until reboot (a 1 GiB
arena, or a 64 MiB-apparent journal segment per restart), and a directory left in /tmp means a
daemon a test started was not stopped and cleaned up. Entries that were there before the run are
not the run's; the lock files of concurrent builds (*.lock) are not test files.

Usage: leftover_files.py snapshot FILE    writes the current entries to FILE
       leftover_files.py check FILE       lists the entries not in FILE; exit 1 if there are any
Thread-safety: a plain script.
"""
import os
import sys

DIRS = ("/dev/shm", "/tmp")
PREFIX = "physmem"


def entries():
    found = set()
    for d in DIRS:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(PREFIX) and not name.endswith(".lock"):
                found.add(os.path.join(d, name))
    return found


def main(argv):
    if len(argv) != 3 or argv[1] not in ("snapshot", "check"):
        sys.exit(__doc__)
    mode, path = argv[1], argv[2]
    if mode == "snapshot":
        with open(path, "w") as f:
            f.write("".join(e + "\n" for e in sorted(entries())))
        return 0
    with open(path) as f:
        before = {line.rstrip("\n") for line in f if line.strip()}
    left = sorted(entries() - before)
    for e in left:
        kind = "directory" if os.path.isdir(e) else "file"
        print("left behind by the test run: %s %s" % (kind, e))
    print("%d physmem* entries left in %s by the test run" % (len(left), " and ".join(DIRS)))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
