"""The two code bundle formats read member by member, as `RawMember`s, for infra/bundle_archive.py to check.

`read_members(path, fmt, limits)` yields each member of a gzip'd tar (read as a stream: tarfile's `r|` mode over a
gzip stream capped at the unpacked limit plus its headers' room) or a zip, in archive order, with its raw name, kind,
declared size, link target and mode, and for a file an open stream of its data, to be read before the next member
is asked for. What no later check could catch is refused here, as `BundleError`: a tar metadata header over 64 KiB
(tarfile reads one whole), a sparse tar member, an encrypted zip member, a zip symlink target over 1,024 bytes, a
zip whose central directory lists more members than allowed (counted before zipfile parses it into memory), and,
as a second opinion on links, whatever the standard library's `data` extraction filter refuses. Errors of a
malformed archive are any of `READ_ERRORS`, raised while members are read or their data is.
"""
from __future__ import annotations

import gzip
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from domain.contract import FieldError, printable

CHUNK_BYTES = 1024 * 1024
MAX_LINK_TARGET_CHARS = 1024
MAX_TAR_META_BYTES = 64 * 1024  # a pax or GNU long-name header, read whole by tarfile
FORMATS = ("tar.gz", "zip")
# BundleError is a ValueError too: catch it before these
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, gzip.BadGzipFile,
               NotImplementedError, RuntimeError, struct.error, ValueError)


class BundleError(FieldError):
    """A bundle refused: `field` is the request field ("file"), `reason` names the member and what is wrong."""


@dataclass(frozen=True)
class BundleLimits:
    max_bytes: int = 100 * 1024 * 1024  # the archive as uploaded
    max_files: int = 10_000  # members: files, links and folders
    max_unpacked_bytes: int = 1024 ** 3  # file data once decompressed
    max_name_chars: int = 1024  # a member's whole path


@dataclass(frozen=True)
class RawMember:
    name: str  # as the archive spells it
    kind: str  # "file", "dir", "symlink", "hardlink", or what it is instead ("a fifo", "a device file", ...)
    size: int  # declared data bytes (files only)
    link: str | None  # a link's target as the archive spells it
    mode: int  # permission bits
    data: BinaryIO | None  # a file's data
    second_opinion: Callable[[], None] | None = None  # another check, to run after ours (BundleError)


def shown(name: str) -> str:
    """A member's name as an error message quotes it: printable, bounded."""
    return repr(printable(name, 200))


def detect_format(head: bytes) -> str | None:
    """The bundle format from its first bytes: gzip ("tar.gz"; the tar inside is checked when read) or zip."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    return None


def read_members(path: Path, fmt: str, limits: BundleLimits) -> Iterator[RawMember]:
    if fmt == "tar.gz":
        return _tar_members(path, limits)
    if fmt == "zip":
        return _zip_members(path, limits)
    raise BundleError("file", "not a .tar.gz or .zip archive")


def _tar_members(path: Path, limits: BundleLimits) -> Iterator[RawMember]:
    slack = (limits.max_files + 2) * 2 * tarfile.BLOCKSIZE + 16 * 1024 * 1024  # headers and padding
    with path.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
        stream = _Capped(unzipped, limits.max_unpacked_bytes + slack, limits.max_unpacked_bytes)
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:  # type: ignore[arg-type]
            for member in tar:
                kind = _tar_kind(member)
                link = member.linkname if kind in ("symlink", "hardlink") else None
                data = tar.extractfile(member) if kind == "file" else None
                yield RawMember(member.name, kind, member.size if kind == "file" else 0, link, member.mode,
                                data, _stdlib_filter(member) if link is not None else None)  # type: ignore[arg-type]


def _zip_members(path: Path, limits: BundleLimits) -> Iterator[RawMember]:
    _check_zip_directory(path, limits.max_files)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            kind, mode = _zip_kind(info)
            if info.flag_bits & 0x1:
                raise BundleError("file", f"member {shown(info.filename)} is encrypted")
            link = None
            if kind == "symlink":
                if info.file_size > MAX_LINK_TARGET_CHARS:
                    raise BundleError("file", f"symlink {shown(info.filename)} has an overlong target")
                link = zf.read(info).decode("utf-8", "surrogateescape")
            if kind == "file":
                with zf.open(info) as data:
                    yield RawMember(info.filename, kind, info.file_size, None, mode, data)  # type: ignore[arg-type]
            else:
                yield RawMember(info.filename, kind, 0, link, mode, None)


class _Capped:
    """A read-only stream over `inner` that refuses to yield more than `limit` bytes in all (a tar's headers and
    padding as well as its data: the gzip stream cannot grow without bound under tarfile)."""

    def __init__(self, inner: BinaryIO, limit: int, unpacked_cap: int) -> None:
        self.inner, self.limit, self.unpacked_cap, self.read_bytes = inner, limit, unpacked_cap, 0

    def read(self, n: int = -1) -> bytes:
        want = CHUNK_BYTES if n is None or n < 0 else n
        chunk = self.inner.read(min(want, self.limit - self.read_bytes + 1))
        self.read_bytes += len(chunk)
        if self.read_bytes > self.limit:
            raise BundleError("file", f"unpacks to more than {self.unpacked_cap:,} bytes")
        return chunk


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory: refuse one over MAX_TAR_META_BYTES before
    it is read, and sparse members (whose declared size is not what they unpack to) outright."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        meta = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)
        if self.type in meta and self.size > MAX_TAR_META_BYTES:
            raise BundleError("file", f"a tar metadata header of {self.size:,} bytes (at most {MAX_TAR_META_BYTES:,})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise BundleError("file", f"member {shown(self.name)} is a sparse file; only plain files are allowed")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file" if not member.issparse() else "a sparse file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a fifo"
    return "an unsupported member type"


def _stdlib_filter(member: tarfile.TarInfo) -> Callable[[], None]:
    return lambda: _check_with_stdlib_filter(member)


def _check_with_stdlib_filter(member: tarfile.TarInfo) -> None:
    """The standard library's own `data` extraction filter as a second opinion on a link (its raw name and target
    against an imaginary destination), run after infra/bundle_archive.py's own checks; not for plain members,
    whose names those checks cover (it resolves paths on the disk: a cost per member)."""
    try:
        tarfile.data_filter(member, "/bundle")
    except tarfile.FilterError as e:
        raise BundleError("file", f"member {shown(member.name)} refused: {printable(e, 300)}") from None


def _zip_kind(info: zipfile.ZipInfo) -> tuple[str, int]:
    """(kind, permission bits) of a zip member: unix modes when a unix tool made it, else from the name."""
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    fmt = stat.S_IFMT(mode)
    if info.is_dir() or fmt == stat.S_IFDIR:
        return "dir", 0o755
    if fmt == stat.S_IFLNK:
        return "symlink", 0o777
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        return "a device file", 0
    if fmt == stat.S_IFIFO:
        return "a fifo", 0
    if fmt == stat.S_IFSOCK:
        return "a socket", 0
    if fmt not in (0, stat.S_IFREG):
        return "an unsupported member type", 0
    return "file", stat.S_IMODE(mode)


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # a central directory entry's fixed part (46 bytes)


def _check_zip_directory(path: Path, max_files: int) -> None:
    """Count the central directory's entries (stopping past `max_files`) before zipfile parses them all into
    memory; the directory's own size and entry count, as the end record states them, must agree."""
    size = path.stat().st_size
    with path.open("rb") as f:
        tail_len = min(size, _EOCD.size + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            raise BundleError("file", "not a readable zip archive: no end of central directory")
        _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        if entries > max_files:
            raise BundleError("file", f"more than {max_files:,} members (files, links and folders)")
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
            return  # zip64: its counts are 64-bit; members are counted one by one as they are admitted
        start = size - tail_len + at - cd_size  # as zipfile finds it (data may precede the archive)
        if start < 0:
            raise BundleError("file", "not a readable zip archive: a central directory larger than the file")
        f.seek(start)
        for i in _entries(f, cd_size):
            if i >= max_files:
                raise BundleError("file", f"more than {max_files:,} members (files, links and folders)")


def _entries(f: BinaryIO, cd_size: int) -> Iterator[int]:
    """Yield 0, 1, … for each central directory entry in the `cd_size` bytes at `f`'s position."""
    seen, i = 0, 0
    while seen < cd_size:
        head = f.read(_CENTRAL.size)
        if len(head) < _CENTRAL.size or not head.startswith(b"PK\x01\x02"):
            return  # zipfile says what is wrong with it
        fields = _CENTRAL.unpack(head)
        skip = fields[12] + fields[13] + fields[14]  # name, extra, comment lengths
        f.seek(skip, os.SEEK_CUR)
        seen += _CENTRAL.size + skip
        yield i
        i += 1
