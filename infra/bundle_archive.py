"""Reading a code bundle (a gzip'd tar or a zip) member by member, refusing anything unsafe, to check it or unpack it.

Both `inspect_archive` (at upload) and `extract_archive` (before a job runs: defence in depth) go through one
`_Members` walk over infra/bundle_members.py's readers, so they refuse exactly the same things, each as
`BundleError("file", reason)` naming the member:
- names: empty, absolute, with a `..` component, a backslash, a control character or an undecodable byte, longer
  than `max_name_chars` (or a component over 255 bytes), the same path twice, a path under a file or a link;
- types: anything but files, folders, symlinks and hard links (devices, fifos, sockets, sparse or unknown members);
- links: a symlink whose target, resolved through the bundle's own symlinks, leaves the bundle (`/etc/passwd`,
  `../x`, `d/..` where `d` links to `.`); a hard link to anything but an earlier file of the bundle;
- sizes: more than `max_files` members (files, links and folders), more than `max_unpacked_bytes` of file data
  counted as it is decompressed (a declared size over it is refused before any byte is read), and what the
  readers refuse (oversized tar headers, a zip directory listing too many members, encrypted zip members);
- a bundle with no files, and anything that is not a well-formed archive.
Nothing here follows a link or writes through one: extraction writes files and folders first (with O_EXCL and
O_NOFOLLOW, modes 0644 or 0755), hard links next, symlinks last, into a folder it made itself.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from domain.contract import printable, unsafe_char
from infra.bundle_members import (CHUNK_BYTES, MAX_LINK_TARGET_CHARS, READ_ERRORS, BundleError, BundleLimits,
                                  read_members, shown)

MAX_COMPONENT_BYTES = 255  # a file name on every common filesystem
MAX_LINK_HOPS = 40  # as the kernel's ELOOP


@dataclass
class Contents:
    """What a bundle holds: its files (regular files, symlinks and hard links; folders not counted), their
    decompressed bytes and the `.py` files at its top level."""
    files: list[str] = field(default_factory=list)
    unpacked_bytes: int = 0

    @property
    def entrypoints(self) -> list[str]:
        return sorted(f for f in self.files if "/" not in f and f.endswith(".py"))


def inspect_archive(path: Path, fmt: str, limits: BundleLimits) -> Contents:
    """Read every member of the bundle at `path` (data decompressed and counted, never written); BundleError."""
    def consume(_: str, _mode: int, data: BinaryIO, count: Callable[[int], None]) -> None:
        while chunk := data.read(CHUNK_BYTES):
            count(len(chunk))
    walk = _Members(limits)
    walk.run(path, fmt, consume)
    return walk.contents


def walk_archive(path: Path, fmt: str, limits: BundleLimits, consume: Consume) -> Contents:
    """Call `consume(name, mode, data, count)` for each file of the archive at `path` after the same checks as
    `inspect_archive` (what `consume` reads it must `count`); links are checked but not handed over. BundleError."""
    walk = _Members(limits)
    walk.run(path, fmt, consume)
    return walk.contents


def extract_archive(path: Path, fmt: str, dest: Path, limits: BundleLimits) -> list[str]:
    """Unpack the bundle at `path` into `dest` (which must not exist: it is made here, and removed again when the
    bundle is refused); returns the files written (sorted). BundleError."""
    dest = Path(dest)
    dest.mkdir(mode=0o755)
    walk = _Members(limits)
    root = dest.resolve()

    def write(name: str, mode: int, data: BinaryIO, count: Callable[[int], None]) -> None:
        target = _inside(root, name)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _file_mode(mode))
        with os.fdopen(fd, "wb") as out:
            while chunk := data.read(CHUNK_BYTES):
                count(len(chunk))
                out.write(chunk)
    try:
        walk.run(path, fmt, write)
        for name in walk.folders:
            _inside(root, name).mkdir(mode=0o755, parents=True, exist_ok=True)
        for name, target in walk.hard_links.items():
            _inside(root, name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.link(_inside(root, target), _inside(root, name), follow_symlinks=False)
        for name, target in walk.symlinks.items():
            _inside(root, name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.symlink(target, _inside(root, name))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # rmtree removes links, never follows them
        raise
    return sorted(walk.contents.files)


def _inside(root: Path, name: str) -> Path:
    """`root/name` for a name `_Members` accepted; checked once more, lexically."""
    path = root.joinpath(*name.split("/"))
    if not path.is_relative_to(root) or ".." in name.split("/"):
        raise BundleError("file", f"member {shown(name)} would be written outside the bundle")
    return path


def _file_mode(mode: int) -> int:
    return 0o755 if mode & 0o100 else 0o644  # no setuid, setgid, sticky or group/world write


Consume = Callable[[str, int, BinaryIO, Callable[[int], None]], None]


class _Members:
    """One pass over a bundle's members: `admit` checks each as it comes, `consume` reads a file's data (counted
    against the unpacked cap), `finish` checks what needs every member (symlink targets)."""

    def __init__(self, limits: BundleLimits) -> None:
        self.limits = limits
        self.contents = Contents()
        self.members = 0
        self.kinds: dict[str, str] = {}  # path -> "file" | "dir" | "symlink" | "hardlink"
        self.parents: set[str] = set()  # folders implied by the paths seen
        self.folders: list[str] = []
        self.symlinks: dict[str, str] = {}
        self.hard_links: dict[str, str] = {}

    def run(self, path: Path, fmt: str, consume: Consume) -> None:
        try:
            for m in read_members(path, fmt, self.limits):
                name = self.admit(m.name, m.kind, m.size, m.link)
                if m.second_opinion is not None:
                    m.second_opinion()
                if m.data is not None and name is not None:
                    consume(name, m.mode, m.data, self.count)
        except BundleError:
            raise
        except READ_ERRORS as e:
            raise BundleError("file", f"not a readable {fmt} archive: {printable(e, 300)}") from None
        self._finish()

    # ---- the checks ------------------------------------------------------------------------------------------
    def count(self, n: int) -> None:
        self.contents.unpacked_bytes += n
        if self.contents.unpacked_bytes > self.limits.max_unpacked_bytes:
            raise BundleError("file", f"unpacks to more than {self.limits.max_unpacked_bytes:,} bytes")

    def admit(self, raw: str, kind: str, size: int = 0, link: str | None = None) -> str | None:
        """The member's normalized path (None for the bundle's own root folder `./`), after every check that
        one member allows; its data has not been read yet."""
        self.members += 1
        if self.members > self.limits.max_files:
            raise BundleError("file", f"more than {self.limits.max_files:,} members (files, links and folders)")
        name = self._name(raw)
        if name is None:
            if kind != "dir":
                raise BundleError("file", f"member {shown(raw)} has no name")
            return None
        if kind not in ("file", "dir", "symlink", "hardlink"):
            raise BundleError("file", f"member {shown(name)} is {kind}; only files, folders and links are allowed")
        if name in self.kinds or (name in self.parents and kind != "dir"):
            raise BundleError("file", f"member {shown(name)} appears twice")
        parts = name.split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if self.kinds.get(above, "dir") != "dir":
                raise BundleError("file", f"member {shown(name)} lies under {shown(above)}, which is a "
                                  f"{self.kinds[above]}, not a folder")
            self.parents.add(above)
        if size > self.limits.max_unpacked_bytes - self.contents.unpacked_bytes:
            raise BundleError("file", f"member {shown(name)} declares {size:,} bytes: the bundle would unpack to "
                              f"more than {self.limits.max_unpacked_bytes:,}")
        if kind == "symlink":
            if link is None or not link or len(link) > MAX_LINK_TARGET_CHARS or unsafe_char(link):
                raise BundleError("file", f"symlink {shown(name)} has an empty, overlong or unprintable target")
            if link.startswith("/"):
                raise BundleError("file", f"symlink {shown(name)} points to the absolute path {shown(link)}")
            self.symlinks[name] = link
            self._resolve(name, link)  # with the links seen so far; again with all of them at the end
        elif kind == "hardlink":
            try:
                target = self._name(link or "")
            except BundleError as e:
                raise BundleError("file", f"hard link {shown(name)} -> {e.reason}") from None
            if target is None or self.kinds.get(target) != "file":
                raise BundleError("file", f"hard link {shown(name)} must point to an earlier file of the bundle, "
                                  f"not {shown(link or '')}")
            self.hard_links[name] = target
        elif kind == "dir":
            self.folders.append(name)
        self.kinds[name] = kind
        if kind != "dir":
            self.contents.files.append(name)
        return name

    def _name(self, raw: str) -> str | None:
        """`raw` as a relative path without `.` or empty components, or None for the root itself."""
        if len(raw) > self.limits.max_name_chars:
            raise BundleError("file", f"member {shown(raw[:100] + '…')} has a name longer than "
                              f"{self.limits.max_name_chars:,} characters")
        if reason := unsafe_char(raw):
            raise BundleError("file", f"member {shown(raw)}: {reason} in its name")
        if not raw:
            raise BundleError("file", "a member has an empty name")
        if "\\" in raw:
            raise BundleError("file", f"member {shown(raw)} has a backslash in its name (use '/' between folders)")
        if raw.startswith("/"):
            raise BundleError("file", f"member {shown(raw)} has an absolute path")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise BundleError("file", f"member {shown(raw)} has a '..' in its path")
        if any(len(p.encode("utf-8")) > MAX_COMPONENT_BYTES for p in parts):
            raise BundleError("file", f"member {shown(raw)} has a name component over {MAX_COMPONENT_BYTES} bytes")
        return "/".join(parts) or None

    def _finish(self) -> None:
        if not self.contents.files:
            raise BundleError("file", "the bundle holds no files")
        for name, target in self.symlinks.items():
            self._resolve(name, target)

    def _resolve(self, name: str, target: str) -> None:
        """Refuse the symlink `name` -> `target` if following it, through the bundle's own symlinks, ever goes
        above the bundle's root (a lexical check alone would miss `d/..` where `d` links to `.`)."""
        where = name.split("/")[:-1]
        pending = [p for p in reversed(target.split("/"))]
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    raise BundleError("file", f"symlink {shown(name)} points outside the bundle ({shown(target)})")
                where.pop()
                continue
            path = "/".join([*where, part])
            if path in self.symlinks:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise BundleError("file", f"symlink {shown(name)}: too many levels of links")
                pending.extend(reversed(self.symlinks[path].split("/")))  # relative to the link's folder: `where`
                continue
            where.append(part)
