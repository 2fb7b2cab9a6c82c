"""The read models serve runs, as (application, projection, view) classes."""
from __future__ import annotations

from commands.training import TrainingApplication
from projections.read_models import READ_MODELS


def read_models() -> list[tuple[type, type, type]]:
    return [(TrainingApplication, rm.projection, rm.view) for rm in READ_MODELS]
