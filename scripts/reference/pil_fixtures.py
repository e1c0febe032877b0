"""Write tests/fixtures/pil/: small JPEG and PNG files with the pixels Pillow decodes them to, and
PIL bilinear resizes, so ctmask's readers and resize are checked byte for byte against PIL.

Needs only Pillow 13 (it bundles libjpeg-turbo), e.g.
    python3 -m venv .venv-ref && .venv-ref/bin/pip install "pillow>=13,<14"
    .venv-ref/bin/python scripts/reference/pil_fixtures.py
Deterministic: the source images come from a seeded generator, so re-running gives the same files.

Every expected image is `Image.open(f).convert('RGB')` (what the original feeds its model) saved as
an 8-bit RGB PNG. `manifest.txt` lists one case a line:
    decode <input> <expected.png>
    resize <source.png> <expected.png> <width> <height>
where a resize is `Image.open(source).convert('RGB').resize((width, height), Image.BILINEAR)`, what
torchvision's `Resize` does to a PIL image (the size rule is the test's own business).
"""
from __future__ import annotations

import io
import math
import random
import struct
import zlib
from pathlib import Path

import PIL
from PIL import Image, features

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "pil"


def scene(width: int, height: int, seed: int, colour: bool) -> Image.Image:
    """Gradients, a disc, sharp edges and noise: what a JPEG encoder rounds differently."""
    rng = random.Random(seed)
    cx, cy, r = width * 0.55, height * 0.45, min(width, height) * 0.3
    px = bytearray()
    for y in range(height):
        for x in range(width):
            base = 255 * x / max(width - 1, 1)
            inside = (x - cx) ** 2 + (y - cy) ** 2 < r * r
            stripe = 60 if (x // 3 + y // 5) % 2 else 0
            noise = rng.randint(-25, 25)
            g = base * 0.6 + (90 if inside else 0) + stripe + noise
            if colour:
                px += bytes(
                    max(0, min(255, int(v)))
                    for v in (g, 255 * y / max(height - 1, 1) + noise, 255 - g + (40 if inside else 0))
                )
            else:
                px.append(max(0, min(255, int(g))))
    return Image.frombytes("RGB" if colour else "L", (width, height), bytes(px))


def raw_png(width: int, height: int, colour_type: int, depth: int, rows: list[bytes]) -> bytes:
    """A minimal PNG of the given IHDR colour type and bit depth (variants Pillow cannot write)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_cases() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}

    def save(name: str, im: Image.Image, **opts) -> None:
        buf = io.BytesIO()
        im.save(buf, "JPEG", **opts)
        cases[name] = buf.getvalue()

    grey_odd, grey = scene(37, 23, 1, False), scene(64, 48, 2, False)
    rgb_odd, rgb = scene(37, 23, 3, True), scene(64, 48, 4, True)
    for q in (90, 30):
        save(f"grey_baseline_37x23_q{q}.jpg", grey_odd, quality=q)
    save("grey_progressive_64x48.jpg", grey, quality=85, progressive=True)
    save("grey_restart_64x48.jpg", grey, quality=85, restart_marker_blocks=2)
    save("grey_optimized_37x23.jpg", grey_odd, quality=75, optimize=True)
    for sub, tag in (("4:4:4", "444"), ("4:2:2", "422"), ("4:2:0", "420")):
        for size, im in (("37x23", rgb_odd), ("64x48", rgb)):
            save(f"ycc{tag}_baseline_{size}.jpg", im, quality=80, subsampling=sub)
            save(f"ycc{tag}_progressive_{size}.jpg", im, quality=80, subsampling=sub, progressive=True)
        save(f"ycc{tag}_restart_blocks_37x23.jpg", rgb_odd, quality=80, subsampling=sub, restart_marker_blocks=3)
        save(f"ycc{tag}_restart_rows_64x48.jpg", rgb, quality=80, subsampling=sub, restart_marker_rows=1)
    save("ycc420_q20_37x23.jpg", rgb_odd, quality=20, subsampling="4:2:0")
    save("rgb_adobe_keep_37x23.jpg", rgb_odd, quality=85, keep_rgb=True)
    # Pillow writes CMYK with an Adobe marker, inverted (Adobe's convention)
    save("cmyk_adobe_37x23.jpg", rgb_odd.convert("CMYK"), quality=85)
    save("cmyk_adobe_progressive_64x48.jpg", rgb.convert("CMYK"), quality=85, progressive=True)
    # a CT-sized grey slice, the common case
    save("grey_baseline_256x256.jpg", scene(256, 256, 5, False), quality=95)
    return cases


def png_cases() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}

    def save(name: str, im: Image.Image, **opts) -> None:
        buf = io.BytesIO()
        im.save(buf, "PNG", **opts)
        cases[name] = buf.getvalue()

    rgb, grey = scene(37, 23, 6, True), scene(37, 23, 7, False)
    save("grey8_37x23.png", grey)
    save("rgb8_37x23.png", rgb)
    rgba = rgb.copy()
    rgba.putalpha(grey)
    save("rgba8_37x23.png", rgba)
    la = grey.copy().convert("LA")
    la.putalpha(scene(37, 23, 8, False))
    save("greyalpha8_37x23.png", la)
    save("palette_37x23.png", rgb.quantize(colors=40, dither=Image.Dither.NONE))
    save("palette_trns_37x23.png", rgb.quantize(colors=16, dither=Image.Dither.NONE), transparency=3)
    save("bilevel_37x23.png", grey.convert("1"))
    # 16-bit grey: values both below and above 255 (PIL's I;16 -> RGB saturates)
    rng = random.Random(9)
    rows16 = [b"".join(struct.pack(">H", rng.choice((rng.randint(0, 300), rng.randint(0, 65535)))) for _ in range(37)) for _ in range(23)]
    cases["grey16_37x23.png"] = raw_png(37, 23, 0, 16, rows16)
    rows = [bytes(rng.randint(0, 255) for _ in range(37 * 6)) for _ in range(23)]
    cases["rgb16_37x23.png"] = raw_png(37, 23, 2, 16, rows)
    rows = [bytes(rng.randint(0, 255) for _ in range(37 * 8)) for _ in range(23)]
    cases["rgba16_37x23.png"] = raw_png(37, 23, 6, 16, rows)
    rows = [bytes(rng.randint(0, 255) for _ in range(37 * 4)) for _ in range(23)]
    cases["greyalpha16_37x23.png"] = raw_png(37, 23, 4, 16, rows)
    rows = [bytes(rng.randint(0, 255) for _ in range(math.ceil(37 * 2 / 8))) for _ in range(23)]
    cases["grey2_37x23.png"] = raw_png(37, 23, 0, 2, rows)
    return cases


# (source name, width, height, seed, colour) and the sizes each is resized to: up and down,
# square and not, odd sizes, strong reductions (the filter support grows with the scale)
RESIZE_SOURCES = [
    ("resize_src_37x23.png", 37, 23, 10, True, [(64, 64), (80, 50), (74, 46), (19, 12), (37, 64), (36, 23)]),
    ("resize_src_120x90.png", 120, 90, 11, False, [(64, 64), (33, 17), (12, 9), (120, 91), (200, 150), (68, 51)]),
    ("resize_src_61x97.png", 61, 97, 12, True, [(32, 50), (61, 33), (5, 7), (128, 128)]),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    lines = [
        f"# written by scripts/reference/pil_fixtures.py with Pillow {PIL.__version__} "
        f"(libjpeg-turbo {features.version('libjpeg_turbo')}, zlib {features.version('zlib')})"
    ]

    def expected(name: str, im: Image.Image) -> str:
        out = name.rsplit(".", 1)[0] + ".rgb.png"
        im.save(OUT / out, "PNG")
        return out

    for name, data in {**jpeg_cases(), **png_cases()}.items():
        (OUT / name).write_bytes(data)
        with Image.open(OUT / name) as im:
            lines.append(f"decode {name} {expected(name, im.convert('RGB'))}")
    for name, w, h, seed, colour, sizes in RESIZE_SOURCES:
        scene(w, h, seed, colour).save(OUT / name, "PNG")
        with Image.open(OUT / name) as im:
            src = im.convert("RGB")
        for tw, th in sizes:
            out = f"{name.rsplit('.', 1)[0]}_to_{tw}x{th}.png"
            src.resize((tw, th), Image.Resampling.BILINEAR).save(OUT / out, "PNG")
            lines.append(f"resize {name} {out} {tw} {th}")
    (OUT / "manifest.txt").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(lines) - 1} cases, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
