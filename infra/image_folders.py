"""Image datasets: an ImageFolder archive (one folder per class of PNG/JPEG images, as a .zip or .tar.gz) or
`builtin://digits` (scikit-learn's 8 x 8 handwritten digits, no download), as a matrix of pixel rows.

An archive is read member by member through infra/bundle_archive.py's checks, exactly as a code bundle is (no
absolute paths, no `..`, no links out, no devices, member count and unpacked bytes capped, data counted as it
decompresses); links are refused outright, hidden files and `__MACOSX/` are skipped. Images lie at `class/name.png`,
or all under one top folder (`top/class/name.png`). Each image is bounded before it is decoded (`ImageLimits`):
its file's bytes, its width x height from the header (a decompression bomb never decodes), and the bytes every
image decodes to, summed; Pillow opens only PNG and JPEG, and a truncated or corrupt file is refused. Every refusal
is a `DatasetError(field, reason)` naming the member ("file" at upload, "dataset.uri" for a job).

The matrix: images sorted by path; grayscale when every image is, else RGB; all resized (bilinear) to the most
common size (ties: the larger), scaled down when a side is over MAX_SIDE; pixels as they are (0..255). Rows are
domain/images.py's: channels first, flattened. `to_pixels` prepares any image that way, for training and serving.
"""
from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domain.images import ImageInput, training_size
from infra.bundle_archive import walk_archive
from infra.bundle_members import BundleError, BundleLimits, detect_format, shown
from infra.dataset_files import IMAGE_ARCHIVE_SUFFIXES, DatasetError, resolve_file_uri

IMAGE_FORMATS = ("PNG", "JPEG")
_GRAY_MODES = ("1", "L", "LA")
_SKIPPED = "__MACOSX"


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 50_000
    max_pixels: int = 4096 * 4096  # one image's width x height, read from its header before it is decoded
    max_decoded_bytes: int = 512 * 1024**2  # width x height x channels of every image, summed
    max_file_bytes: int = 32 * 1024**2  # one image file
    archive: BundleLimits = field(default_factory=lambda: BundleLimits(max_files=60_000,
                                                                      max_unpacked_bytes=4 * 1024**3))


@dataclass
class ImageFolder:
    """An archive's images (uint8 arrays, H x W or H x W x 3, kept only when asked), sorted by path."""
    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    decoded_bytes: int = 0

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def read_image_folder(path: Path, limits: ImageLimits = ImageLimits(), keep: bool = True) -> ImageFolder:
    """Every image of the ImageFolder archive at `path`, checked (see the module); BundleError("file") with a
    reason naming the member. Refusals raised inside the walk are BundleErrors so that it passes them on."""
    with path.open("rb") as handle:
        fmt = detect_format(handle.read(8))
    if fmt is None:
        raise _refused("not a .zip or .tar.gz archive")
    found: dict[str, tuple[str, np.ndarray | None]] = {}
    seen = ImageFolder()

    def consume(name: str, _mode: int, data: Any, count: Any) -> None:
        parts = name.split("/")
        if any(p.startswith(".") or p == _SKIPPED for p in parts):
            while chunk := data.read(1 << 20):
                count(len(chunk))
            return
        if len(found) >= limits.max_images:
            raise _refused(f"more than {limits.max_images:,} images")
        raw = bytearray()
        while chunk := data.read(1 << 20):
            count(len(chunk))
            raw += chunk
            if len(raw) > limits.max_file_bytes:
                raise _refused(f"{shown(name)} is over {limits.max_file_bytes:,} bytes")
        image = decode_image(bytes(raw), limits.max_pixels, shown(name))
        seen.decoded_bytes += image.width * image.height * (1 if image.mode in _GRAY_MODES else 3)
        if seen.decoded_bytes > limits.max_decoded_bytes:
            raise _refused(f"the images decode to more than {limits.max_decoded_bytes:,} bytes")
        pixels = np.asarray(image.convert("L" if image.mode in _GRAY_MODES else "RGB")) if keep else None
        found[name] = (name, pixels)

    contents = walk_archive(path, fmt, limits.archive, consume)
    links = [f for f in contents.files if f not in found and not _hidden(f)]
    if links:
        raise _refused(f"{shown(links[0])} is a link; an image dataset holds images only")
    names = sorted(found)
    top = {n.split("/")[0] for n in names}
    strip = 1 if len(top) == 1 and all(n.count("/") == 2 for n in names) else 0
    for name in names:
        parts = name.split("/")[strip:]
        if len(parts) != 2:
            raise _refused(f"{shown(name)}: images lie in one folder per class (class/image.png)")
        seen.paths.append(name)
        seen.labels.append(parts[0])
        if keep:
            seen.images.append(found[name][1])
    return seen


def decode_image(data: bytes, max_pixels: int, what: str = "the image") -> Any:  # -> PIL.Image.Image, loaded
    """`data` decoded as a PNG or JPEG image of at most `max_pixels` pixels; BundleError("file") otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise _refused(f"{what} is {width} x {height} pixels; at most {max_pixels:,} per image")
            image.load()
    except BundleError:
        raise
    except UnidentifiedImageError:
        raise _refused(f"{what} is not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refused(f"{what} declares too many pixels (a decompression bomb)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, TypeError):
        raise _refused(f"{what} cannot be decoded: truncated or corrupt") from None
    return image


def to_pixels(image: Any, shape: ImageInput) -> np.ndarray:
    """A PIL image as the model's input row: converted, resized and scaled as domain/images.py says."""
    from PIL import Image

    mode = "L" if shape.channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (shape.width, shape.height):
        image = image.resize((shape.width, shape.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[None] if shape.channels == 1 else pixels.transpose(2, 0, 1)
    return (pixels * np.float32(shape.pixel_max / 255.0)).reshape(-1)


def folder_matrix(folder: ImageFolder) -> tuple[np.ndarray, np.ndarray, list[str], ImageInput]:
    """(X float32 (n, C*H*W), y int64 class indices, class labels, the input shape) of a kept folder."""
    from PIL import Image

    sizes = Counter((a.shape[1], a.shape[0]) for a in folder.images)
    (width, height), _ = max(sizes.items(), key=lambda item: (item[1], item[0][0] * item[0][1]))
    width, height = training_size(width, height)
    channels = 1 if all(a.ndim == 2 for a in folder.images) else 3
    shape = ImageInput(height, width, channels, 255.0)
    X = np.stack([to_pixels(Image.fromarray(a), shape) for a in folder.images]) if folder.images else np.zeros(
        (0, shape.n_inputs), np.float32)
    classes = folder.classes
    index = {c: i for i, c in enumerate(classes)}
    return X, np.array([index[c] for c in folder.labels], dtype=np.int64), classes, shape


def digits() -> tuple[np.ndarray, np.ndarray, list[str], ImageInput]:
    """builtin://digits: 1,797 grayscale 8 x 8 images of 0..9, pixels 0..16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data.astype(np.float32), bunch.target.astype(np.int64), [str(t) for t in bunch.target_names],
            ImageInput(8, 8, 1, 16.0))


def load_images(uri: str, roots: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, list[str], ImageInput]:
    """builtin://digits, or the ImageFolder archive a `file://` URI names inside `roots`; DatasetError."""
    if uri == "builtin://digits":
        return digits()
    return load_image_archive(resolve_file_uri(uri, roots, IMAGE_ARCHIVE_SUFFIXES), "dataset.uri")


def load_image_archive(path: Path, field: str, limits: ImageLimits = ImageLimits()
                       ) -> tuple[np.ndarray, np.ndarray, list[str], ImageInput]:
    """`folder_matrix` of the archive at `path`; DatasetError(field) for anything refused."""
    try:
        return folder_matrix(read_image_folder(path, limits))
    except BundleError as e:
        raise DatasetError(field, e.reason) from None


def _refused(reason: str) -> BundleError:
    return BundleError("file", reason)


def _hidden(name: str) -> bool:
    return any(p.startswith(".") or p == _SKIPPED for p in name.split("/"))
