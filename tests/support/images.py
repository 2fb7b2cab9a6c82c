"""Images and ImageFolder archives made in memory for the image tests."""
from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """`pixels` (uint8, H x W or H x W x 3) encoded as an image file."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out, format=fmt)
    return out.getvalue()


def digit_png(index: int, size: int = 8) -> bytes:
    """Digit number `index` of scikit-learn's digits as a grayscale PNG (0..16 scaled to 0..255), `size` pixels."""
    image = Image.fromarray(np.round(load_digits().images[index] * 255 / 16).astype(np.uint8))
    out = io.BytesIO()
    (image if size == 8 else image.resize((size, size), Image.Resampling.BILINEAR)).save(out, format="PNG")
    return out.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def tarred(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return out.getvalue()


def digit_folder(per_class: int = 12, classes: tuple[int, ...] = (0, 1, 7), size: int = 16,
                 top: str = "") -> dict[str, bytes]:
    """An ImageFolder of digits: `<top>/<digit>/<n>.png`, `per_class` images of each digit in `classes`."""
    digits = load_digits()
    members = {}
    for digit in classes:
        for n, index in enumerate(np.flatnonzero(digits.target == digit)[:per_class]):
            members[f"{top}{digit}/{n}.png"] = digit_png(int(index), size)
    return members


def declared_huge_png(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    data = bytearray(png(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)
