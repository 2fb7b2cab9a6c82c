"""Checkpoints of running jobs: where an attempt saves its progress and where the next attempt finds it.

Files lie beside the models (runners/artifacts.py), under the same root:
`<root>/checkpoints/<job_id>/attempt-<n>/ckpt-<step:012d>[.<suffix>]`. The name is the one the SDK gives a code job's
checkpoints (trainyard/sdk.py), so a file handed to a sandbox keeps its step. Every trainer writes through this store:
the built-in ones through `TrainSpec.checkpoint` (runners/trainers), a code job through its sink's `on_checkpoint`.

`latest(job_id)` is the newest checkpoint across the job's attempts, ordered by (attempt, step): a later attempt
starts from the latest checkpoint, so its own are always further on. A job keeps its last `keep` checkpoints (2 by
default); older ones are removed after each save. A retry started from its original's checkpoint first `adopt`s it:
a copy under the retry's own job, so every later attempt of the retry finds it there.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from runners.artifacts import _SAFE_NAME, write_atomically

KEEP = 2
_FILE = re.compile(r"^ckpt-(\d{12})(?:\.([A-Za-z0-9]{1,16}))?$")
_ATTEMPT = re.compile(r"^attempt-(\d{1,9})$")
_SUFFIX = re.compile(r"[A-Za-z0-9]{1,16}")
MAX_STEP = 10**12 - 1  # twelve digits, as the SDK names them


@dataclass(frozen=True, order=True)
class Checkpoint:
    """One saved checkpoint of `job_id`; ordered by (attempt, step)."""

    attempt: int
    step: int
    path: Path = field(compare=False)
    job_id: str = field(compare=False)

    @property
    def suffix(self) -> str:
        """The file's suffix without the dot ("pt", "txt"), "" for none."""
        return self.path.suffix[1:]

    def read(self) -> bytes:
        return self.path.read_bytes()


class CheckpointStore:
    """Checkpoints on the local filesystem (shared by the runners of one artifact root).

    `save` is atomic (a reader sees the whole file or none) and safe from several threads and processes for
    different (job, attempt) pairs; saving the same (job, attempt, step) again replaces it. Names are checked, so a
    job id or suffix can never reach outside `<root>/checkpoints`."""

    def __init__(self, root: Path, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = Path(root).resolve() / "checkpoints"
        self.keep = keep

    def save(self, job_id: str, attempt: int, step: int, data: bytes, suffix: str = "") -> Checkpoint:
        """Store `data` as the checkpoint of `job_id`'s `attempt` at `step`, then drop all but the last `keep`."""
        folder = self._folder(job_id) / f"attempt-{_count(attempt, 'attempt', 10**9 - 1)}"
        if suffix and not _SUFFIX.fullmatch(suffix):
            raise ValueError(f"suffix {suffix!r} is not a safe file suffix")
        name = f"ckpt-{_count(step, 'step', MAX_STEP):012d}" + (f".{suffix}" if suffix else "")
        folder.mkdir(parents=True, exist_ok=True)

        def one_file_a_step() -> None:  # another suffix for the same step goes
            for old in folder.glob(f"ckpt-{step:012d}*"):
                if old.name != name:
                    old.unlink(missing_ok=True)

        write_atomically(folder / name, data, before=one_file_a_step)
        self.prune(job_id)
        return Checkpoint(attempt, step, folder / name, str(job_id))

    def save_file(self, job_id: str, attempt: int, step: int, source: Path) -> Checkpoint:
        """`save` of a file's bytes, keeping its suffix when it has a plain one (a code job's checkpoint)."""
        suffix = source.suffix[1:]
        return self.save(job_id, attempt, step, Path(source).read_bytes(), suffix if _SUFFIX.fullmatch(suffix) else "")

    def all(self, job_id: str) -> list[Checkpoint]:
        """The job's checkpoints, oldest first; [] for a job with none."""
        folder = self._folder(job_id)
        found = []
        for attempt_dir in folder.iterdir() if folder.is_dir() else ():
            if not (a := _ATTEMPT.match(attempt_dir.name)):
                continue
            for f in attempt_dir.iterdir():
                if (m := _FILE.match(f.name)) and f.is_file():
                    found.append(Checkpoint(int(a.group(1)), int(m.group(1)), f, str(job_id)))
        return sorted(found)

    def latest(self, job_id: str) -> Checkpoint | None:
        """The newest checkpoint of the job, across its attempts; None when it has none."""
        found = self.all(job_id)
        return found[-1] if found else None

    def starting_point(self, job_id: str, resume_of: str | None = None) -> Checkpoint | None:
        """Where a new attempt of `job_id` starts: its own latest checkpoint, else (a retry with from_checkpoint)
        the latest of `resume_of`, else None (from the beginning)."""
        return self.latest(job_id) or (self.latest(resume_of) if resume_of else None)

    def adopt(self, source: Checkpoint, job_id: str, attempt: int) -> Checkpoint:
        """A copy of another job's checkpoint as `job_id`'s (a retry that starts from its original's)."""
        return self.save(job_id, attempt, source.step, source.read(), source.suffix)

    def prune(self, job_id: str) -> None:
        """Remove all but the job's last `keep` checkpoints (and attempt folders left empty)."""
        for old in self.all(job_id)[:-self.keep]:
            old.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty yet (a save in flight): the next prune removes it
                old.path.parent.rmdir()

    def _folder(self, job_id: str) -> Path:
        if not _SAFE_NAME.fullmatch(str(job_id)) or ".." in str(job_id):
            raise ValueError(f"job_id {job_id!r} is not a safe file name")
        return self.root / str(job_id)


def _count(value: int, name: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError(f"{name} must be an integer in 0..{high}, got {value!r}")
    return value
