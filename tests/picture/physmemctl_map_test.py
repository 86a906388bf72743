#!/usr/bin/python3
"""physmemctl map against the real daemon, at 512 MiB and at 64 GiB (x86_64).

With a known pattern allocated (GFP_KERNEL pageblocks, single movable pages), for each size:
  * `physmemctl map --out=arena.png` writes a PNG whose every cell has the colour, at the position,
    that the daemon's own snapshot (/arena.json, same layout defaults) gives it; the GFP_KERNEL
    pageblocks are Unmovable cells at 512 MiB (at 64 GiB a cell covers several pageblocks and
    is mixed);
  * `--out=arena.svg` is well-formed XML (Python's XML parser) with one titled <rect> a cell in
    the same colours and order;
  * `-o json map` is the GetArenaMap reply, whose pages add up to the target's;
  * bad arguments exit 2 with the reason and write nothing.

Usage: physmemctl_map_test.py PHYSMEMD PHYSMEMCTL   (run by ctest)
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from physmemd_process import Physmemd  # noqa: E402
import arena_picture as ap  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def run_size(physmemd, physmemctl, tmp, mem_mb, check):
    with Physmemd(physmemd, tmp, "--mem_mb=%d" % mem_mb) as d:
        sock, port = d.sock, ap.metrics_port(d)
        lease = re.search(r"\d+", ap.ctl(physmemctl, sock, "lease", "create", "--ttl_ms=600000")).group(0)
        kernel = [ap.alloc(physmemctl, sock, lease, "GFP_KERNEL", 9) for _ in range(3)]
        ap.ctl(physmemctl, sock, "alloc", lease, "--count=200", "--gfp=GFP_HIGHUSER_MOVABLE")
        m = ap.arena_json(port)
        ncells = sum(len(z["cells"]) for z in m["zones"])
        check(ncells <= 4096, "%d MiB: %d cells of %d pageblocks" % (mem_mb, ncells, m["pageblocks_per_cell"]))

        png = os.path.join(tmp, "arena.png")
        out = ap.ctl(physmemctl, sock, "map", "--out=" + png)
        check(out.startswith("wrote %s: %dx%d pixels" % (png, m["width"], m["height"])), "%d MiB: %s" % (mem_mb, out.strip()))
        img = ap.read_png(png)
        check((img.width, img.height) == (m["width"], m["height"]), "%d MiB: PNG is %dx%d" % (mem_mb, img.width, img.height))
        bad = ap.mismatched_cells(img, m)
        check(not bad, "%d MiB: every PNG cell in the snapshot's colour (wrong: %s)" % (mem_mb, bad[:5]))
        want = ap.legend_colour(m, "Unmovable") if m["pageblocks_per_cell"] == 1 else ap.legend_colour(m, "mixed")
        for pfn in kernel:
            z, i = ap.cell_of_pfn(m, pfn)
            x, y, w, h = ap.cell_rect(m, z, i)
            check(img.pixel(x + w // 2, y + h // 2) == ap.hex_rgb(want),
                  "%d MiB: GFP_KERNEL pageblock %#x drawn %s (%s cell %d)" % (mem_mb, pfn, want, z["name"], i))

        svg = os.path.join(tmp, "arena.svg")
        ap.ctl(physmemctl, sock, "map", "--out=" + svg)
        root = ET.parse(svg).getroot()
        check(root.tag == SVG + "svg" and root.get("width") == str(m["width"]), "%d MiB: SVG parses" % mem_mb)
        groups = [g for g in root.iter(SVG + "g") if g.get("class") == "zone"]
        check([g.get("id") for g in groups] == ["zone-" + z["name"] for z in m["zones"]], "%d MiB: one SVG group a zone" % mem_mb)
        for g, z in zip(groups, m["zones"]):
            fills = [r.get("fill") for r in g.findall(SVG + "rect") if r.find(SVG + "title") is not None]
            check(fills == [m["palette"][c] for c in z["cells"]], "%d MiB: SVG zone %s cells in order and colour" % (mem_mb, z["name"]))

        reply = json.loads(ap.ctl(physmemctl, sock, "-o", "json", "map"))
        pages = sum(f + a for z in reply["zones"] for f, a in zip(z["freePages"], z["allocatedPages"]))
        target = ap.ctl(physmemctl, sock, "target")
        total = int(re.search(r"total_pages=(\d+)", target).group(1))
        check(pages == total, "%d MiB: the reply's pages add up to the target's %d (%d)" % (mem_mb, total, pages))

        for args, reason in [(["map"], "map needs --out"), (["map", "--out=" + os.path.join(tmp, "a.gif")], ".png or .svg"),
                             (["map", "--out=" + png, "--columns=0"], "at least 1"),
                             (["map", "--out=" + png, "--max_cells=x"], "is not a number")]:
            r = subprocess.run([physmemctl, "--target=unix://" + sock] + args, capture_output=True, text=True, timeout=60)
            check(r.returncode == 2 and reason in r.stderr, "%s: exit 2, %r (%d: %s)" % (" ".join(args[1:]), reason, r.returncode,
                                                                                       r.stderr.strip()[:200]))
        check(not os.path.exists(os.path.join(tmp, "a.gif")), "nothing written for a refused name")
        os.remove(png)
        os.remove(svg)


def main():
    physmemd, physmemctl = sys.argv[1], sys.argv[2]
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    for mem_mb in (512, 65536):
        with tempfile.TemporaryDirectory(prefix="physmemctl-map-") as tmp:
            run_size(physmemd, physmemctl, tmp, mem_mb, check)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
