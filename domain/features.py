"""The feature recipe: how a training table's raw columns became a model's input vector, learned when the dataset
was loaded and kept with the model (the job's artifact, the version's lineage, the deployment's serving artifact),
so a caller sends rows as the file had them and the inference server encodes them as the loader did.

Columns, in the file's order, each one of:
  * `number`: the value as float32; null (or a missing cell) is NaN, handled as the model handled missing values
    in training (LightGBM's missing-value rules; the PyTorch MLP imputes the training mean).
  * `boolean`: true/false (or 1/0) as 1.0/0.0; null is NaN.
  * `category`: one-hot over `levels` (sorted, as seen in training): one input `name=level` per level. A null, or a
    value never seen in training, is all zeros, exactly what a missing value was in training. Numbers and booleans
    are compared by their text ("3", "True"), as the loader read a mixed column.
`ignored` names the columns the loader did not use (the target, text with too many distinct values, dates): a row
may carry them and they change nothing. An image model's recipe has no columns and an `image` (domain/images.py):
its input is an image's pixels. Pure functions over plain values; no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from domain.contract import FieldError
from domain.images import ImageInput

NUMBER, BOOLEAN, CATEGORY = "number", "boolean", "category"
COLUMN_TYPES = (NUMBER, BOOLEAN, CATEGORY)
UNSEEN_CATEGORY = "zeros"  # what an unseen or missing category becomes: the all-zero one-hot of a missing value


class RowError(FieldError):
    """A raw row the recipe cannot encode; `field` is the column at fault (or "" for the row)."""


@dataclass(frozen=True, slots=True)
class InputColumn:
    name: str
    type: str  # one of COLUMN_TYPES
    levels: tuple[str, ...] = ()  # category only, in one-hot order

    def feature_names(self) -> list[str]:
        return [f"{self.name}={level}" for level in self.levels] if self.type == CATEGORY else [self.name]


@dataclass(frozen=True, slots=True)
class FeatureRecipe:
    columns: tuple[InputColumn, ...]
    ignored: tuple[str, ...] = ()
    image: ImageInput | None = None  # an image model: how an image becomes its input row

    @property
    def feature_names(self) -> list[str]:
        """The model's inputs, in order: what the raw columns encode to."""
        return [name for column in self.columns for name in column.feature_names()]

    @property
    def is_identity(self) -> bool:
        """Every column is a number fed as it is: a raw row and an encoded row are the same thing."""
        return all(c.type == NUMBER for c in self.columns)

    def to_json(self) -> dict[str, Any]:
        return {"columns": [{"name": c.name, "type": c.type, **({"levels": list(c.levels)} if c.type == CATEGORY
                                                                   else {})} for c in self.columns],
                "ignored": list(self.ignored), "unseen_category": UNSEEN_CATEGORY,
                **({"image": self.image.to_json()} if self.image else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureRecipe:
        return cls(columns=tuple(InputColumn(str(c["name"]), str(c["type"]), tuple(str(x) for x in c.get("levels")
                                                                                   or ()))
                                 for c in data["columns"]),
                   ignored=tuple(str(x) for x in data.get("ignored") or ()),
                   image=ImageInput.from_json(data["image"]) if data.get("image") else None)

    def encode(self, row: dict[str, Any]) -> list[float]:
        """The model's input vector of a raw row {column: value} (any order). Every column must be named (null for a
        missing value); `ignored` columns may be; RowError for anything else."""
        missing = [c.name for c in self.columns if c.name not in row]
        if missing:
            raise RowError(missing[0], f"missing columns {missing[:10]}; send every column (null when missing)")
        if len(row) > len(self.columns):
            known = {c.name for c in self.columns} | set(self.ignored)
            unknown = [str(k)[:64] for k in row if k not in known]
            if unknown:
                raise RowError("", f"unknown columns {unknown[:10]}")
        out: list[float] = []
        for column in self.columns:
            out.extend(_encode_value(column, row[column.name]))
        return out


def _encode_value(column: InputColumn, value: Any) -> list[float]:
    t = type(value)
    if column.type == CATEGORY:
        if value is None:
            text = None
        elif t is str:
            text = value
        elif t in (int, float, bool):
            text = str(value)
        else:
            raise RowError(column.name, "a text value, a number or null")
        return [1.0 if text == level else 0.0 for level in column.levels]
    if value is None:
        return [math.nan]
    if column.type == BOOLEAN and (t is bool or (t in (int, float) and value in (0, 1))):
        return [float(value)]
    if column.type == NUMBER and t in (int, float):
        try:
            return [float(value)]
        except OverflowError:  # an int past float's range
            raise RowError(column.name, "out of range") from None
    raise RowError(column.name, "true, false or null" if column.type == BOOLEAN else "a number or null")
