"""Checks a screenshot of a kiln diagnose report: inside each chart's
rectangle (data-rect, written by the page) enough pixels differ from the
white background. Standard library only (PNG decoded with zlib).
   check_screenshot.py DOM.html SHOT.png"""
import re
import struct
import sys
import zlib


def read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), f"unsupported PNG: depth {depth} color {color}"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def main():
    dom = open(sys.argv[1]).read()
    width, height, bpp, rows = read_png(sys.argv[2])
    charts = re.findall(r'<svg id="(\w+)"[^>]*data-rect="(\d+),(\d+),(\d+),(\d+)"', dom)
    if len(charts) != 3:
        # Attribute order is the browser's: fall back to any order.
        charts = []
        for tag in re.findall(r"<svg[^>]*>", dom):
            i, r = re.search(r'id="(\w+)"', tag), re.search(r'data-rect="(\d+),(\d+),(\d+),(\d+)"', tag)
            if i and r:
                charts.append((i.group(1),) + r.groups())
    assert len(charts) == 3, f"expected 3 drawn charts in the DOM, found {charts}"
    for name, x, y, w, h in charts:
        x, y, w, h = int(x), int(y), int(w), int(h)
        assert y + h <= height and x + w <= width, f"{name} lies outside the {width}x{height} shot"
        drawn = total = 0
        for yy in range(y, y + h, 2):
            row = rows[yy]
            for xx in range(x, x + w, 2):
                px = row[xx * bpp:xx * bpp + 3]
                total += 1
                if min(px) < 235:
                    drawn += 1
        frac = drawn / total
        print(f"{name}: {100 * frac:.1f}% of the chart area drawn")
        # Axes and labels alone are under 1%; the stacked areas fill more
        # (a warm-up step's spike sets the scale, so not most of it).
        need = 0.04 if name == "breakdown" else 0.015
        assert frac >= need, f"{name}: only {100 * frac:.1f}% drawn (< {100 * need:.1f}%)"


main()
