"""Secrets kept in files of the data dir: created once with mode 0600 (never wider, even for a moment), read back
by every process of that data dir."""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (created 0600; an existing file is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_or_create(path: Path, nbytes: int = 48) -> str:
    """The secret in `path`; a new random one (url-safe text of `nbytes` random bytes) if there is none yet. Two
    processes starting at once agree: the file is created exclusively, the loser reads the winner's."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # the winner may not have written it yet
            if text := path.read_text().strip():
                return text
            time.sleep(0.02)
        raise RuntimeError(f"{path} stays empty") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()
