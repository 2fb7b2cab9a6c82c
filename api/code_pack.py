"""Packing a local project folder as a code bundle (the client and `trainyard code push` use it).

`pack_directory(folder)` makes a deterministic .tar.gz: members in sorted order, mtimes, owners and the gzip header
zeroed, modes reduced to 0644 or 0755, so the same files always give the same bytes, the same sha256 and the same
code_id (and are uploaded once). Folders are implied by their files (git does not keep empty ones either); symlinks
are kept as symlinks (the service refuses one that leaves the bundle). `.git/`, `__pycache__/` and `.venv/` are
always left out, and so is whatever the `.gitignore` files say, in git's common subset: blank lines and `#`
comments, `!` negation, a trailing `/` for folders only, `*`, `?`, `[...]`, `**`, and a `/` at the start or in the
middle anchoring a pattern to its .gitignore's folder; the last matching line wins, deeper files after shallower
ones; a folder left out is not looked into, as in git.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

ALWAYS_SKIPPED = frozenset({".git", "__pycache__", ".venv"})


@dataclass(frozen=True)
class IgnoreRule:
    base: str  # the .gitignore's folder, relative to the packed folder ("" for the top)
    pattern: re.Pattern[str]
    negated: bool
    folders_only: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.folders_only and not is_dir:
            return False
        if self.base:
            if not path.startswith(self.base + "/"):
                return False
            path = path[len(self.base) + 1:]
        return self.pattern.fullmatch(path) is not None


def parse_gitignore(text: str, base: str = "") -> list[IgnoreRule]:
    rules = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        elif line.startswith("\\"):
            line = line[1:]  # `\#x`, `\!x`: a literal first character
        folders_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        body = _translate(line.lstrip("/"))
        rules.append(IgnoreRule(base, re.compile(body if anchored else f"(?:.*/)?{body}"), negated, folders_only))
    return rules


def _translate(pattern: str) -> str:
    """A gitignore glob as a regular expression over a '/'-separated relative path."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            inner = pattern[i + 1:end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def ignored(rules: list[IgnoreRule], path: str, is_dir: bool) -> bool:
    verdict = False
    for rule in rules:
        if rule.matches(path, is_dir):
            verdict = not rule.negated
    return verdict


def bundle_files(folder: Path) -> list[str]:
    """The relative paths (files and symlinks, sorted) that `pack_directory(folder)` packs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    found: list[str] = []

    def walk(rel: str, rules: list[IgnoreRule]) -> None:
        here = folder / rel if rel else folder
        gitignore = here / ".gitignore"
        if gitignore.is_file() and not gitignore.is_symlink():
            rules = rules + parse_gitignore(gitignore.read_text(errors="replace"), rel)
        with os.scandir(here) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{rel}/{entry.name}" if rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if (is_dir and entry.name in ALWAYS_SKIPPED) or ignored(rules, path, is_dir):
                    continue
                if is_dir:
                    walk(path, rules)
                elif entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    found.append(path)
    walk("", [])
    return sorted(found)


def pack_directory(folder: Path) -> bytes:
    """`folder`'s files as a deterministic .tar.gz (see the module)."""
    folder = Path(folder)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in bundle_files(folder):
            path = folder / rel
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o100 else 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
