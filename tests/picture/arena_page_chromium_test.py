#!/usr/bin/python3
"""The daemon's live /arena page, for real, in headless Chromium (Debian's `chromium`).

The daemon (512 MiB x86_64) gets a known pattern: GFP_KERNEL pageblocks (order 9: a whole
pageblock each, Unmovable), a GFP_HIGHUSER_MOVABLE pageblock (Movable), and a few hundred movable
single pages (mixed pageblocks). Then:
  * the daemon's own snapshot (/arena.json) puts each pattern block in a cell of the expected
    colour (the legend's Unmovable and Movable colours), found from the pfns physmemctl printed;
  * a screenshot of /arena (chromium --headless --screenshot) has every cell of every zone in
    the snapshot's colour at the snapshot's position, and each zone's frame where it says;
  * the page refreshes: --dump-dom after a few virtual seconds shows several redraws and
    /proc/buddyinfo exactly as `physmemctl buddyinfo` prints it; after more allocations a new
    load shows the new buddyinfo.

Chromium missing: the test says so and exits 77 (ctest: skipped); scripts/install-deps.sh installs it.
Usage: arena_page_chromium_test.py PHYSMEMD PHYSMEMCTL   (run by ctest)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from physmemd_process import Physmemd, time_scale  # noqa: E402
import arena_picture as ap  # noqa: E402

SKIP = 77


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(binary, profile, *args):
    """Runs headless Chromium once with a throwaway profile; returns its stdout."""
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
            "--force-color-profile=srgb", "--no-first-run", "--disable-extensions", "--user-data-dir=" + profile] + list(args)
    env = dict(os.environ, HOME=profile)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120 * time_scale(), env=env)
    if r.returncode != 0:
        raise RuntimeError("chromium %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr[-2000:]))
    return r.stdout


def main():
    physmemd, physmemctl = sys.argv[1], sys.argv[2]
    browser = chromium_binary()
    if browser is None:
        print("SKIPPED: chromium is not installed (scripts/install-deps.sh installs Debian's chromium)", flush=True)
        return SKIP
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory(prefix="arena-page-") as tmp:
        profile = os.path.join(tmp, "chromium")
        os.mkdir(profile)
        with Physmemd(physmemd, tmp, "--mem_mb=512") as d:
            sock, port = d.sock, ap.metrics_port(d)
            url = "http://127.0.0.1:%d/arena" % port
            lease = re.search(r"\d+", ap.ctl(physmemctl, sock, "lease", "create", "--ttl_ms=600000")).group(0)
            unmovable = [ap.alloc(physmemctl, sock, lease, "GFP_KERNEL", 9) for _ in range(4)]
            movable = ap.alloc(physmemctl, sock, lease, "GFP_HIGHUSER_MOVABLE", 9)
            ap.ctl(physmemctl, sock, "alloc", lease, "--count=300", "--gfp=GFP_HIGHUSER_MOVABLE")

            m = ap.arena_json(port)
            red, blue = ap.legend_colour(m, "Unmovable"), ap.legend_colour(m, "Movable")
            for pfn in unmovable:
                z, i = ap.cell_of_pfn(m, pfn)
                check(m["palette"][z["cells"][i]] == red,
                      "snapshot: GFP_KERNEL pageblock at pfn %#x is an Unmovable cell (%s %d)" % (pfn, z["name"], i))
            z, i = ap.cell_of_pfn(m, movable)
            check(m["palette"][z["cells"][i]] == blue,
                  "snapshot: movable pageblock at pfn %#x is a Movable cell (%s %d)" % (movable, z["name"], i))
            mixed = sum(1 for zz in m["zones"] for c in zz["cells"] if m["palette"][c] == ap.legend_colour(m, "mixed"))
            check(mixed >= 1, "snapshot: the single movable pages make at least one mixed cell (%d)" % mixed)

            shot = os.path.join(tmp, "arena.png")
            chromium(browser, profile, "--window-size=%d,%d" % (m["width"] + 40, m["height"] + 200),
                     "--virtual-time-budget=3000", "--screenshot=" + shot, url)
            img = ap.read_png(shot)
            check(img.width >= m["width"] and img.height >= m["height"],
                  "screenshot %dx%d holds the %dx%d map" % (img.width, img.height, m["width"], m["height"]))
            bad = ap.mismatched_cells(img, m)
            ncells = sum(len(zz["cells"]) for zz in m["zones"])
            check(not bad, "screenshot: all %d cells in the snapshot's colours (wrong: %s)" % (ncells, bad[:5]))
            for zz in m["zones"]:
                x, y, w, h = zz["frame"]
                corners = [img.pixel(x, y), img.pixel(x + w - 1, y + h - 1)]
                check(all(c == (0x60, 0x60, 0x60) for c in corners),
                      "screenshot: zone %s framed at %s (corners %s)" % (zz["name"], zz["frame"], corners))
                hx, hy = zz["heading"]["x"], zz["heading"]["y"]
                ink = [img.pixel(x2, y2) for x2 in range(hx, hx + 40) for y2 in range(hy, hy + 7 * m["text_scale"])]
                check(any(sum(p) < 300 for p in ink), "screenshot: zone %s named above its cells" % zz["name"])

            def dom():
                return chromium(browser, profile, "--virtual-time-budget=3500", "--dump-dom", url)

            def buddyinfo_of(page):
                found = re.search(r'<pre id="buddyinfo">(.*?)</pre>', page, re.S)
                return found.group(1) if found else None

            page = dom()
            refreshes = int(re.search(r'<span id="refreshes">(\d+)</span>', page).group(1))
            check(refreshes >= 2, "the page redrew %d times in 3.5 virtual seconds" % refreshes)
            before = ap.ctl(physmemctl, sock, "buddyinfo")
            check(buddyinfo_of(page) == before, "the page's buddyinfo is physmemctl buddyinfo's")
            ap.alloc(physmemctl, sock, lease, "GFP_KERNEL", 10)
            ap.alloc(physmemctl, sock, lease, "GFP_KERNEL", 10)
            after = ap.ctl(physmemctl, sock, "buddyinfo")
            check(after != before, "two order-10 allocations change buddyinfo")
            check(buddyinfo_of(dom()) == after, "after them the page shows the new buddyinfo")
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
