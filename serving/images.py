"""Images in a predict request, for a model trained on images (its feature recipe has an `image`,
domain/images.py): each instance is `{"image": "<base64 PNG or JPEG>"}` (a `data:image/...;base64,` prefix is
allowed) or `{"pixels": [[...], ...]}` (H x W, or H x W x C, on the training data's pixel scale). An image is
prepared as the training images were (infra/image_folders.py `to_pixels`: grayscale or RGB, resized, scaled).

Bounds, besides the server's body limit: MAX_IMAGES instances per request, MAX_PIXELS pixels per image read from its
header before it is decoded (a decompression bomb is refused, not decoded); only PNG and JPEG are opened.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from domain.contract import FieldError
from domain.images import ImageInput, PixelsError
from infra.bundle_members import BundleError
from infra.image_folders import decode_image, to_pixels

MAX_IMAGES = 64  # instances per request
MAX_PIXELS = 1024 * 1024  # width x height of one image


class ImageRowError(FieldError):
    """An instance that is not an image of the model's kind: `field` is where, `reason` why (the server's 422)."""


def image_rows(instances: list[Any], shape: ImageInput) -> np.ndarray:
    """The model's input rows (float32, n x C*H*W) of `instances`; ImageRowError naming the instance otherwise."""
    if len(instances) > MAX_IMAGES:
        raise ImageRowError("instances", f"at most {MAX_IMAGES} images per request")
    X = np.empty((len(instances), shape.n_inputs), dtype=np.float32)
    for i, instance in enumerate(instances):
        where = f"instances.{i}"
        if not isinstance(instance, dict) or len(instance) != 1 or not {"image", "pixels"} & set(instance):
            raise ImageRowError(where, 'an object with one of "image" (base64 PNG or JPEG) or "pixels" '
                                       f"({shape.height} x {shape.width}{f' x {shape.channels}' if shape.channels > 1 else ''})")
        if "pixels" in instance:
            try:
                X[i] = shape.pixel_row(instance["pixels"])
            except PixelsError as e:
                raise ImageRowError(f"{where}.pixels{'.' + e.field if e.field else ''}", e.reason) from None
        else:
            X[i] = to_pixels(_decoded(instance["image"], f"{where}.image"), shape)
    return X


def _decoded(text: Any, where: str) -> Any:
    if not isinstance(text, str) or not text:
        raise ImageRowError(where, "a base64 PNG or JPEG image")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ImageRowError(where, "a data URL must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRowError(where, "not valid base64") from None
    try:
        return decode_image(data, MAX_PIXELS)
    except BundleError as e:
        raise ImageRowError(where, e.reason) from None
