"""Code bundles (issue 19 item 1) through the API on real PostgreSQL: a good bundle is stored once per content with
its counts; every hostile bundle (traversal, absolute paths, links out, devices and fifos, bombs, 100,000 files,
not an archive) is a 422 naming the problem, fast, leaving nothing behind; access is per project and role; the
client packs a folder as git would and deterministically, `trainyard code push` uploads once per content, and
`unpack_bundle` gives back the files. Archives are built in memory."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.client import TrainyardClient
from api.code_pack import bundle_files, pack_directory
from entrypoints.bootstrap import build_services
from infra.code_bundles import BundleError, BundleLimits, unpack_bundle
from infra.settings import Settings
from tests.support.auth import admin_token, signed_in_client
from tests.support.cli import trainyard
from tests.support.tenants import make_tenants

pytestmark = pytest.mark.integration
CODE = "/api/v1/code"
MAX_CODE = 16 * 1024 * 1024  # above the 100,000-member zip (8.8 MB)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def world(module_database_url: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    code_root = tmp_path_factory.mktemp("code")
    services = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=clickhouse.path.parent, code_dir=code_root,
                                       max_code_bytes=MAX_CODE))
    with signed_in_client(services) as client:
        yield client, make_tenants(client), code_root
    services.close()


@pytest.fixture
def client(world: Any) -> Any:
    return world[0]


# ---- archives ----------------------------------------------------------------------------------------------------
def member(name: str, data: bytes | None = b"x = 1\n", *, kind: bytes = tarfile.REGTYPE, link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def tgz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def zipped(*entries: tuple[str, bytes, int]) -> bytes:
    """A zip made by a unix tool: each entry (name, data, st_mode)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, mode << 16
            z.writestr(info, data)
    return out.getvalue()


def deflated_zeros(size: int) -> bytes:
    """Raw deflate of `size` zero bytes (a multiple of 1 MiB), made from one compressed MiB repeated: a full flush
    makes each piece stand alone, so 2 GiB of zeros cost 2 MB and no time to build."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * (size // MIB) + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def zip_of(entries: list[tuple[bytes, bytes, int, int]], count: int | None = None) -> bytes:
    """A zip written by hand: each entry (name, deflated data, its declared size, its CRC-32); unix modes.
    `count`: the number of entries its end record claims (a lie, if given)."""
    local, central = [], []
    offset = 0
    for name, data, size, crc in entries:
        method = 8 if data else 0
        local.append(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size,
                                 len(name), 0) + name + data)
        central.append(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, 0, crc, len(data),
                                   size, len(name), 0, 0, 0, 0, 0o100644 << 16, offset) + name)
        offset += len(local[-1])
    directory = b"".join(central)
    count = min(len(entries), 0xFFFF) if count is None else count
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), offset, 0)
    return b"".join(local) + directory + end


def zip_bomb(size: int = 2 * 1024**3, declared: int | None = None) -> bytes:
    """One member of `size` zeros; `declared`: the size its headers claim instead (a lie). Its CRC-32 is never
    reached: a bomb is refused by its declared size, a liar after its declared bytes, whose CRC it is not."""
    return zip_of([(b"zeros.bin", deflated_zeros(size), size if declared is None else declared, 0)])


def tgz_bomb(size: int = 2 * 1024**3) -> bytes:
    """A gzip'd tar of one member of `size` zeros (its gzip trailer is never reached, so it is left out)."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(info.tobuf(tarfile.PAX_FORMAT)) + c.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + head + deflated_zeros(size)


def many_files(n: int) -> bytes:
    """A .tar.gz of `n` empty files, headers patched from one template (tarfile's own writer takes seconds)."""
    template = bytearray(tarfile.TarInfo("f0000000.py").tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum counts its own field as spaces
    base = sum(template) - sum(b"f0000000.py")
    headers = []
    for i in range(n):
        name = f"f{i:07d}.py".encode()
        header = bytearray(template)
        header[0:11] = name
        header[148:155] = b"%06o\0" % (base + sum(name))
        headers.append(bytes(header))
    return gzip.compress(b"".join(headers) + bytes(1024), compresslevel=1, mtime=0)


def upload(client: Any, archive: bytes, filename: str = "bundle.tar.gz", **kw: Any) -> Any:
    return client.post(CODE, files={"file": (filename, archive, "application/octet-stream")}, **kw)


def refused(r: Any, *words: str, status: int = 422) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["field"] == "file", body
    for word in words:
        assert word in body["detail"], body
    return body["detail"]


def stored_files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


# ---- a good bundle -----------------------------------------------------------------------------------------------
GOOD = tgz(member("./", kind=tarfile.DIRTYPE), member("./train.py", b"print('train')\n", mode=0o755),
           member("./prep.py", b"import pkg\n"), member("./pkg/__init__.py", b""),
           member("./pkg/model.py", b"W = [1, 2, 3]\n" * 100), member("./data", kind=tarfile.SYMTYPE, link="pkg"),
           member("./model_copy.py", kind=tarfile.LNKTYPE, link="pkg/model.py"))


def test_a_bundle_is_stored_with_its_counts_and_listed_and_shown(client: Any) -> None:
    r = upload(client, GOOD, "my project.tgz")
    assert r.status_code == 201, r.text
    b = r.json()
    sha = hashlib.sha256(GOOD).hexdigest()
    assert b["sha256"] == sha and b["code_id"] == sha[:32]
    assert b["files"] == 6  # 4 files, a symlink, a hard link; folders are not counted
    assert b["unpacked_bytes"] == len("print('train')\n") + len("import pkg\n") + 1400
    assert b["size_bytes"] == len(GOOD) and b["format"] == "tar.gz" and b["filename"] == "my project.tgz"
    assert b["entrypoints"] == ["model_copy.py", "prep.py", "train.py"]
    assert client.get(f"{CODE}/{b['code_id']}").json() == b
    assert b in client.get(CODE).json()["items"]


def test_the_same_bytes_again_are_the_same_bundle(client: Any) -> None:
    data = zipped(("run.py", b"print(1)\n", 0o100644))
    first = upload(client, data, "a.zip")
    again = upload(client, data, "b.zip", data={"name": "another name"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()  # immutable: the first name and time are kept
    assert first.json()["format"] == "zip"
    assert [i["code_id"] for i in client.get(CODE).json()["items"]].count(first.json()["code_id"]) == 1


def test_the_list_is_newest_first(client: Any) -> None:
    ids = [upload(client, tgz(member(f"v{i}.py"))).json()["code_id"] for i in range(3)]
    listed = [i["code_id"] for i in client.get(CODE).json()["items"]]
    assert [listed.index(i) for i in reversed(ids)] == sorted(listed.index(i) for i in ids)


# ---- hostile bundles ---------------------------------------------------------------------------------------------
def _dev(kind: bytes, name: str) -> Callable[[], bytes]:
    return lambda: tgz(member("train.py"), member(name, kind=kind))


HOSTILE: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "path traversal": (lambda: tgz(member("train.py"), member("../x.py")), ("'../x.py'", "'..'")),
    "deep traversal": (lambda: tgz(member("a/../../etc/cron.d/x")), ("'a/../../etc/cron.d/x'", "'..'")),
    "absolute path": (lambda: tgz(member("/etc/profile.d/evil.sh")), ("'/etc/profile.d/evil.sh'", "absolute")),
    "symlink to /etc/passwd": (lambda: tgz(member("train.py"), member("pw", kind=tarfile.SYMTYPE,
                                                                      link="/etc/passwd")), ("'pw'", "/etc/passwd")),
    "symlink up and out": (lambda: tgz(member("a/b.py"), member("a/up", kind=tarfile.SYMTYPE, link="../../etc")),
                           ("'a/up'", "outside the bundle")),
    "symlink out through another symlink": (
        lambda: tgz(member("train.py"), member("here", kind=tarfile.SYMTYPE, link="."),
                    member("out", kind=tarfile.SYMTYPE, link="here/..")), ("'out'", "outside the bundle")),
    "a file under a symlink": (lambda: tgz(member("pkg/m.py"), member("ln", kind=tarfile.SYMTYPE, link="pkg"),
                                           member("ln/evil.py")), ("'ln/evil.py'", "symlink")),
    "hard link out": (lambda: tgz(member("train.py"), member("h", kind=tarfile.LNKTYPE, link="/etc/shadow")),
                      ("'h'", "/etc/shadow")),
    "hard link up": (lambda: tgz(member("train.py"), member("h", kind=tarfile.LNKTYPE, link="../secret")),
                     ("'h'", "'..'")),
    "hard link to a missing file": (lambda: tgz(member("train.py"), member("h", kind=tarfile.LNKTYPE, link="nope")),
                                    ("'h'", "earlier file")),
    "character device": (_dev(tarfile.CHRTYPE, "null"), ("'null'", "device")),
    "block device": (_dev(tarfile.BLKTYPE, "sda"), ("'sda'", "device")),
    "fifo": (_dev(tarfile.FIFOTYPE, "pipe"), ("'pipe'", "fifo")),
    "control character in a name": (lambda: tgz(member("tr\x1bain.py")), ("control character U+001B",)),
    "overlong name": (lambda: tgz(member("d/" * 600 + "x.py")), ("longer than 1,024",)),
    "the same path twice": (lambda: tgz(member("train.py"), member("train.py")), ("'train.py'", "twice")),
    "zip slip": (lambda: zipped(("../../evil.py", b"x", 0o100644)), ("'../../evil.py'", "'..'")),
    "zip absolute": (lambda: zipped(("/tmp/evil.py", b"x", 0o100644)), ("'/tmp/evil.py'", "absolute")),
    "zip symlink to /etc": (lambda: zipped(("run.py", b"x", 0o100644), ("etc", b"/etc", 0o120777)),
                            ("'etc'", "/etc")),
    "zip fifo": (lambda: zipped(("run.py", b"x", 0o100644), ("p", b"", 0o010644)), ("'p'", "fifo")),
    "zip socket": (lambda: zipped(("run.py", b"x", 0o100644), ("s", b"", 0o140644)), ("'s'", "socket")),
    "not an archive": (lambda: b"print('hello')\n" * 10, ("not a .tar.gz or .zip",)),
    "gzip but not a tar": (lambda: gzip.compress(b"just text " * 100), ("not a readable tar.gz",)),
    "a truncated tar.gz": (lambda: GOOD[: len(GOOD) // 2], ("not a readable tar.gz",)),
    "an empty bundle": (lambda: tgz(member("./", kind=tarfile.DIRTYPE)), ("no files",)),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_bundle_is_a_422_naming_the_problem(world: Any, case: str) -> None:
    client, _, root = world
    build, words = HOSTILE[case]
    before = stored_files(root)
    refused(upload(client, build()), *words)
    assert stored_files(root) == before  # nothing kept, not even a temporary file


@pytest.mark.parametrize("bomb, words", [
    (lambda: zip_bomb(), ("'zeros.bin'", "2,147,483,648 bytes")),
    (lambda: zip_bomb(declared=1000), ("CRC",)),  # a size that lies: only the declared 1,000 bytes are inflated
    (lambda: tgz_bomb(), ("'zeros.bin'", "2,147,483,648 bytes")),
], ids=["zip", "zip lying about its size", "tar.gz"])
def test_a_bomb_is_refused_fast_and_leaves_no_big_file(world: Any, bomb: Callable[[], bytes],
                                                      words: tuple[str, ...]) -> None:
    client, _, root = world
    data = bomb()
    assert len(data) < 3 * MIB  # 2 GiB of zeros on the wire
    before = stored_files(root)
    started = time.monotonic()
    refused(upload(client, data, "bomb.zip"), *words)
    assert time.monotonic() - started < 5
    assert stored_files(root) == before


@pytest.mark.parametrize("fmt", ["tar.gz", "zip", "zip claiming 1 member"])
def test_100000_files_are_refused(client: Any, fmt: str) -> None:
    if fmt == "tar.gz":
        data = many_files(100_000)
    else:  # the central directory is counted, whatever the end record claims
        data = zip_of([(b"f%07d.py" % i, b"", 0, 0) for i in range(100_000)], count=1 if "claiming" in fmt else None)
    started = time.monotonic()
    refused(upload(client, data), "more than 10,000 members")
    assert time.monotonic() - started < 10


def test_a_bundle_over_max_code_bytes_is_413(world: Any) -> None:
    client, _, root = world
    before = stored_files(root)
    r = upload(client, b"\x1f\x8b" + os.urandom(MAX_CODE))  # inside the body cap (the form's framing), over the file's
    refused(r, f"{MAX_CODE:,} bytes", status=413)
    r = upload(client, os.urandom(MAX_CODE + 256 * 1024))  # over the request body cap itself
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    assert stored_files(root) == before


# ---- access ------------------------------------------------------------------------------------------------------
def test_a_viewer_reads_but_cannot_upload_and_another_project_sees_nothing(world: Any) -> None:
    client, tenants, _ = world
    data = tgz(member("alpha_only.py", b"SECRET = 'alpha'\n"))
    refused_r = upload(client, data, headers=tenants.headers("alpha", "viewer"))
    assert refused_r.status_code == 403, refused_r.text
    r = upload(client, data, headers=tenants.headers("alpha", "engineer"))
    assert r.status_code == 201, r.text
    code_id = r.json()["code_id"]
    assert client.get(f"{CODE}/{code_id}", headers=tenants.headers("alpha", "viewer")).status_code == 200
    for role in ("viewer", "admin"):
        beta = tenants.headers("beta", role)
        gone = client.get(f"{CODE}/{code_id}", headers=beta)
        assert gone.status_code == 404 and gone.json()["field"] == "code_id", gone.text
        assert code_id not in client.get(CODE, headers=beta).text
        assert client.get(CODE, headers=tenants.headers("beta", role, acting_in="alpha")).status_code == 404
    # beta uploading the same bytes makes beta's own bundle (same id: the content's), alpha's untouched
    again = upload(client, data, headers=tenants.headers("beta", "engineer"))
    assert again.status_code == 201 and again.json()["code_id"] == code_id
    assert client.get(f"{CODE}/{'0' * 32}").status_code == 404
    assert client.get(f"{CODE}/not-an-id").status_code == 422


# ---- the client side: packing, pushing once, unpacking ----------------------------------------------------------
def project_folder(root: Path) -> Path:
    files = {
        "train.py": "print('train')\n", "lib/util.py": "X = 1\n", "lib/util.pyc": "junk", "notes.log": "log",
        "keep.log": "kept by a negation", "build/out.bin": "artifact", "data/raw/big.csv": "a,b\n",
        "data/README.md": "kept", "sub/.gitignore": "*.tmp\n!important.tmp\n", "sub/a.tmp": "x",
        "sub/important.tmp": "y", "sub/deep/b.tmp": "z", "docs/only/here.txt": "t",
        ".git/config": "x", "lib/__pycache__/util.cpython-311.pyc": "x", ".venv/bin/python": "x",
        ".gitignore": "# comments and blank lines are ignored\n\n*.py[co]\n*.log\n!keep.log\nbuild/\n/data/raw\n"
                      "docs/**/here.txt\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "train.py").chmod(0o755)
    return root


def test_pack_directory_honours_gitignore_and_is_deterministic(tmp_path: Path) -> None:
    folder = project_folder(tmp_path / "proj")
    assert bundle_files(folder) == [".gitignore", "data/README.md", "keep.log", "lib/util.py", "sub/.gitignore",
                                    "sub/important.tmp", "train.py"]
    first = pack_directory(folder)
    time.sleep(0.01)
    for path in folder.rglob("*"):
        os.utime(path, (1, 1))  # other times, the same content: the same bytes
    assert pack_directory(folder) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == bundle_files(folder)
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}
    assert {m.name: m.mode for m in members}["train.py"] == 0o755


def test_code_push_uploads_once_per_content_and_unpack_gives_the_files_back(world: Any, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             cli_env: None) -> None:
    client, _, root = world
    import api.cli.app

    token = admin_token(client.app.state.services.settings.data_dir)
    monkeypatch.setattr(api.cli.app, "TrainyardClient", lambda *a, **kw: TrainyardClient(
        "http://testserver", transport=client._transport, token=token, project="default"))
    folder = project_folder(tmp_path / "proj")
    code, out = trainyard("code", "push", str(folder))
    assert code == 0, out
    code_id = out.splitlines()[0]
    assert "uploaded: 7 files" in out and "train.py" in out
    code, out = trainyard("code", "push", str(folder))
    assert code == 0 and out.splitlines()[0] == code_id and "already uploaded" in out, out
    code, out = trainyard("code", "show", code_id[:8])
    assert code == 0 and code_id in out, out
    code, out = trainyard("code", "list")
    assert code == 0 and code_id in out, out

    stored = next(root.glob(f"default/{code_id}*.tar.gz"))
    dest = tmp_path / "unpacked"
    assert unpack_bundle(stored, dest, BundleLimits()) == bundle_files(folder)
    for rel in bundle_files(folder):
        assert (dest / rel).read_bytes() == (folder / rel).read_bytes()
    assert (dest / "train.py").stat().st_mode & 0o777 == 0o755
    assert (dest / "lib/util.py").stat().st_mode & 0o777 == 0o644


def test_unpack_refuses_what_upload_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    """A bundle that got into the store some other way is checked again by the runner's unpack."""
    bad = tmp_path / ("0" * 64 + ".tar.gz")
    bad.write_bytes(tgz(member("train.py"), member("evil", kind=tarfile.SYMTYPE, link="/etc/passwd")))
    with pytest.raises(BundleError, match="'evil'"):
        unpack_bundle(bad, tmp_path / "out", BundleLimits())
    assert not (tmp_path / "out").exists()
    small = BundleLimits(max_unpacked_bytes=1000)
    big = tmp_path / ("1" * 64 + ".tar.gz")
    big.write_bytes(tgz(member("train.py", b"x" * 600), member("more.py", b"y" * 600)))
    with pytest.raises(BundleError, match="1,000"):
        unpack_bundle(big, tmp_path / "out", small)
    assert not (tmp_path / "out").exists()
