"""Helpers for the arena-picture tests: a PNG reader (zlib and struct only: the tests run on Debian's
/usr/bin/python3 without PIL), the daemon's own snapshot from /arena.json, and the check that a
picture has every cell in the colour that snapshot gives it.

Who uses it: tests/picture/physmemctl_map_test.py, tests/picture/arena_page_chromium_test.py.
Thread-safety: plain functions.
"""
import json
import re
import struct
import subprocess
import urllib.request
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Image:
    """8-bit RGB(A) pixels: pixel(x, y) -> (r, g, b)."""

    def __init__(self, width, height, channels, rows):
        self.width, self.height, self.channels, self.rows = width, height, channels, rows

    def pixel(self, x, y):
        i = x * self.channels
        return tuple(self.rows[y][i:i + 3])


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path):
    """Decodes a non-interlaced 8-bit RGB or RGBA PNG (what libpng writes here and what Chromium's
    screenshots are); raises ValueError for anything else."""
    data = open(path, "rb").read()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("%s is not a PNG file" % path)
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = ihdr
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        raise ValueError("%s: depth %d colour type %d interlace %d not supported" % (path, depth, colour, interlace))
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xff
            elif f == 2:
                line[i] = (line[i] + b) & 0xff
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xff
            elif f == 4:
                line[i] = (line[i] + _paeth(a, b, c)) & 0xff
        rows.append(line)
        prev = line
    return Image(width, height, channels, rows)


def hex_rgb(h):
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


def arena_json(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/arena.json" % port, timeout=30) as r:
        return json.loads(r.read())


def cell_rect(m, zone, i):
    cols, pitch = m["columns"], m["pitch"]
    return zone["x0"] + (i % cols) * pitch, zone["y0"] + (i // cols) * pitch, m["cell_px"], m["cell_px"]


def legend_colour(m, label):
    for s in m["legend"]:
        if s["label"]["text"] == label:
            return s["colour"]
    raise KeyError(label)


def cell_of_pfn(m, pfn):
    """(zone, index) of the cell holding pfn: cell i of a zone covers pages_per_cell pages from
    first_pfn + i * pages_per_cell, within the zone's RAM range."""
    ppc = m["pages_per_cell"]
    for z in m["zones"]:
        i = (pfn - z["first_pfn"]) // ppc
        if z["first_pfn"] <= pfn < z["end_pfn"] and i < len(z["cells"]):
            return z, i
    raise KeyError("no cell holds pfn %#x" % pfn)


def mismatched_cells(img, m, dx=0, dy=0):
    """Cells whose centre pixel (the picture drawn at offset dx, dy) is not the snapshot's colour:
    [(zone, index, want, got)]."""
    bad = []
    for z in m["zones"]:
        for i, c in enumerate(z["cells"]):
            x, y, w, h = cell_rect(m, z, i)
            want = hex_rgb(m["palette"][c])
            got = img.pixel(dx + x + w // 2, dy + y + h // 2)
            if got != want:
                bad.append((z["name"], i, want, got))
    return bad


def ctl(physmemctl, sock, *args, timeout=60):
    r = subprocess.run([physmemctl, "--target=unix://" + sock] + list(args), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("physmemctl %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
    return r.stdout


def alloc(physmemctl, sock, lease, gfp, order):
    """Allocates one block; returns its pfn."""
    out = ctl(physmemctl, sock, "alloc", lease, "--gfp=" + gfp, "--order=%d" % order)
    return int(re.search(r"pfn=(0x[0-9a-f]+)", out).group(1), 16)


def metrics_port(daemon):
    return int(re.search(r" metrics=(\d+)", daemon.started_line).group(1))
