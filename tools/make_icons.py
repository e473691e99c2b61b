"""Draw the web client's icons: ``icon.svg`` and the same drawing as ``icon-192.png`` and
``icon-512.png`` (what a phone's home screen and the manifest want), into
``daemon/web/static/app/``. Run once when the drawing changes; the files are committed.

    python3 tools/make_icons.py

The PNGs are written with zlib and struct alone (no image library): each pixel's colour is
the cover of the drawing's round-capped strokes over it, worked out from its distance to each
stroke (anti-aliased edges without supersampling). The drawing is a terminal prompt, ``>_``, on
a full-bleed square whose strokes keep within the middle 80 % circle, so a launcher's mask
(circle, squircle) never cuts them ("maskable").
"""

from __future__ import annotations

import math
import struct
import zlib
from itertools import pairwise
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "daemon" / "web" / "static" / "app"
VIEW = 512  # the drawing's units
BACKGROUND = (0x0D, 0x11, 0x17)
WIDTH = 48  # stroke width, in the drawing's units
# (colour, polyline) per stroke
STROKES: list[tuple[tuple[int, int, int], list[tuple[float, float]]]] = [
    ((0xE6, 0xED, 0xF3), [(150, 170), (250, 256), (150, 342)]),
    ((0x3F, 0xB9, 0x50), [(286, 342), (370, 342)]),
]


def svg() -> str:
    def hex_colour(rgb: tuple[int, int, int]) -> str:
        return "#" + "".join(f"{c:02x}" for c in rgb)

    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {VIEW} {VIEW}">',
        f'<rect width="{VIEW}" height="{VIEW}" fill="{hex_colour(BACKGROUND)}"/>',
    ]
    for colour, points in STROKES:
        path = " ".join(f"{x:g},{y:g}" for x, y in points)
        lines.append(
            f'<polyline points="{path}" fill="none" stroke="{hex_colour(colour)}" '
            f'stroke-width="{WIDTH}" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _distance(px: float, py: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    """From point (px, py) to the segment a-b."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - ax - t * dx, py - ay - t * dy)


def pixels(size: int) -> bytes:
    """The drawing at ``size`` × ``size`` pixels: RGB rows, each led by PNG's filter byte 0."""
    unit = VIEW / size  # one pixel, in the drawing's units
    rows = bytearray()
    for j in range(size):
        rows.append(0)
        for i in range(size):
            x, y = (i + 0.5) * unit, (j + 0.5) * unit
            colour = [float(c) for c in BACKGROUND]
            for stroke_colour, points in STROKES:
                near = min(_distance(x, y, a, b) for a, b in pairwise(points))
                cover = max(0.0, min(1.0, (WIDTH / 2 - near) / unit + 0.5))
                if cover:
                    colour = [c + (s - c) * cover for c, s in zip(colour, stroke_colour, strict=True)]
            rows.extend(round(c) for c in colour)
    return bytes(rows)


def png(size: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels(size), 9))
        + chunk(b"IEND", b"")
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "icon.svg").write_text(svg())
    for size in (192, 512):
        (OUT / f"icon-{size}.png").write_bytes(png(size))
    print(f"wrote icon.svg, icon-192.png, icon-512.png into {OUT}")


if __name__ == "__main__":
    main()
