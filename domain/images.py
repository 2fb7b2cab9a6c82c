"""What an image model takes: the geometry and pixel scale its training images had, recorded with the model (its
feature recipe's `image`, domain/features.py) so the inference server prepares a caller's image exactly as the
loader prepared the training ones.

A model's input row is the image's pixels flattened channels-first (C x H x W, row by row), float32, on the
dataset's own pixel scale: 0..255 for uploaded PNG/JPEG images, 0..16 for `builtin://digits` (`pixel_max`). An
image file is decoded, converted to grayscale ("L") or RGB by `channels`, resized to `width` x `height` (bilinear)
when it is another size, and scaled by pixel_max / 255. A caller may instead send `pixels`: H x W numbers
(grayscale) or H x W x C, on the dataset's scale, which `pixel_row` flattens. Pure; no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from domain.contract import FieldError

MAX_SIDE = 128  # training images are resized so that neither side exceeds this: a small CNN, bounded inputs
RESAMPLE = "bilinear"


class PixelsError(FieldError):
    """`pixels` that are not an image of the model's shape: `field` is the path inside them ("" for the whole)."""


@dataclass(frozen=True, slots=True)
class ImageInput:
    height: int
    width: int
    channels: int  # 1 (grayscale) or 3 (RGB)
    pixel_max: float  # the value of a white pixel on the dataset's scale

    @property
    def n_inputs(self) -> int:
        return self.channels * self.height * self.width

    def to_json(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "channels": self.channels, "pixel_max": self.pixel_max,
                "layout": "chw", "resample": RESAMPLE}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInput:
        return cls(int(data["height"]), int(data["width"]), int(data["channels"]), float(data["pixel_max"]))

    def pixel_row(self, pixels: Any) -> list[float]:
        """The model's input row of `pixels` (H x W, or H x W x C), channels first; PixelsError otherwise."""
        h, w, c = self.height, self.width, self.channels
        shape = f"{h} x {w}" + (f" x {c}" if c > 1 else "") + " numbers"
        if not isinstance(pixels, list) or len(pixels) != h:
            raise PixelsError("", f"{shape} in 0..{self.pixel_max:g} ({h} rows)")
        out = [0.0] * (c * h * w)
        for r, row in enumerate(pixels):
            if not isinstance(row, list) or len(row) != w:
                raise PixelsError(str(r), f"a row of {w} {'pixels' if c > 1 else 'numbers'}")
            for x, value in enumerate(row):
                values = value if c > 1 else [value]
                if c > 1 and (not isinstance(value, list) or len(value) != c):
                    raise PixelsError(f"{r}.{x}", f"{c} numbers (one per channel)")
                for k, v in enumerate(values):
                    if type(v) not in (int, float) or not math.isfinite(v) or not 0 <= v <= self.pixel_max:
                        raise PixelsError(f"{r}.{x}", f"a number in 0..{self.pixel_max:g}")
                    out[k * h * w + r * w + x] = float(v)
        return out


def training_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) a dataset whose most common image size is `width` x `height` trains at: that size, scaled
    down (aspect kept, each side at least 1) when a side is over MAX_SIDE."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
