#!/usr/bin/env python3
"""Writes the tray's four icons (32x32 RGBA PNG, standard library only) and
the window's icon (icon.png, 128x128).

Run from anywhere: `python3 icons/make.py`. The PNGs are committed; the tray
embeds them with include_bytes!.
"""
import math
import os
import struct
import zlib

SIZE = 32
HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (fill colour, mark drawn in white)
ICONS = {
    "idle": ((46, 160, 67), "check"),
    "available": ((31, 111, 235), "arrow"),
    "busy": ((219, 140, 20), "dots"),
    "error": ((207, 34, 46), "cross"),
}


def mark(kind, x, y):
    """Whether pixel (x, y), centred coordinates in -1..1, belongs to the white mark."""
    if kind == "check":
        return (abs(y - (x + 0.1)) < 0.13 and -0.45 < x < -0.05) or (
            abs(y + 1.4 * x - 0.05) < 0.15 and -0.1 < x < 0.5
        )
    if kind == "arrow":
        shaft = abs(x) < 0.12 and -0.2 < y < 0.5
        head = y <= -0.1 and y > -0.55 and abs(x) < (y + 0.55)
        return shaft or head
    if kind == "dots":
        return any(math.hypot(x - cx, y) < 0.13 for cx in (-0.38, 0.0, 0.38))
    if kind == "cross":
        return abs(abs(x) - abs(y)) < 0.16 and abs(x) < 0.42
    raise ValueError(kind)


def pixels(colour, kind, size=SIZE):
    rows = []
    for py in range(size):
        row = bytearray([0])  # filter: none
        for px in range(size):
            x = (px + 0.5) / size * 2 - 1
            y = (py + 0.5) / size * 2 - 1
            r = math.hypot(x, y)
            if r > 0.94:
                row += bytes([0, 0, 0, 0])
            elif mark(kind, x, y):
                row += bytes([255, 255, 255, 255])
            else:
                row += bytes([*colour, 255])
        rows.append(bytes(row))
    return b"".join(rows)


def png(raw, size=SIZE):
    def chunk(tag, data):
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


for name, (colour, kind) in ICONS.items():
    with open(os.path.join(HERE, f"tray-{name}.png"), "wb") as f:
        f.write(png(pixels(colour, kind)))

# The window's icon (tauri.conf.json): the "update" arrow, larger.
with open(os.path.join(HERE, "icon.png"), "wb") as f:
    f.write(png(pixels(ICONS["available"][0], "arrow", 128), 128))
