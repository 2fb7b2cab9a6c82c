"""The README's "Use it" part runs as written: its ```bash blocks, in order, in one bash against a live stack (a block
right after `<!-- not run -->` is skipped). The README itself is the script, so it cannot drift from the service."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.stack import Stack, up_on_a_fresh_database

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
MARK = "::readme block {}::"
BUDGET_S = 240  # the whole part; its examples are sized to take a minute or two


def use_it_blocks(readme: str) -> list[str]:
    """The ```bash blocks of the "## Use it" section, in order, less those marked `<!-- not run -->`."""
    part = readme.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    found = re.finditer(r"(<!-- not run -->\s*\n)?```bash\n(.*?)\n```", part, re.S)
    return [m.group(2) for m in found if not m.group(1)]


def test_use_it_blocks_are_found() -> None:  # the extraction itself, without a stack
    blocks = use_it_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 5 and blocks[0].startswith("export PATH"), blocks[:1]
    assert any("trainyard deploy deploy.json" in b for b in blocks)
    assert use_it_blocks("x\n## Use it\n```bash\na\n```\n<!-- not run -->\n```bash\nb\n```\n## Next\n```bash\nc\n```") \
        == ["a"]


@pytest.fixture(scope="module")
def readme_stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # the policy's ramp is 300 s apart: it may evaluate during the run, never step; default interval kept
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-readme")) as s:
        yield s


def test_the_readme_runs_top_to_bottom(readme_stack: Stack, tmp_path: Path) -> None:
    blocks = use_it_blocks((ROOT / "README.md").read_text())
    endpoints = readme_stack.endpoints()
    script = ("set -euo pipefail\ntrap 'echo \"::failed (exit $?): $BASH_COMMAND\"' ERR\n"
              + "".join(f"echo '{MARK.format(i)}'\n{b}\n" for i, b in enumerate(blocks)))
    (tmp_path / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n")  # an HTTP error fails the command
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(API=endpoints["api"], INFERENCE=endpoints["inference"], CURL_HOME=str(tmp_path),
               TMPDIR=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"),  # `trainyard login` writes there
               # as on the machine that ran `./dev up`: the CLI finds the owner's token in the data dir
               TRAINYARD_DATA_DIR=str(readme_stack.data_dir),
               # the CLI runs this checkout's code, even where .venv is shared with another checkout
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    started = time.monotonic()
    try:
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=BUDGET_S)
        output, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as e:
        output, code = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), None
    took = time.monotonic() - started
    ran = [int(n) for n in re.findall(r"::readme block (\d+)::", output)]
    last = ran[-1] if ran else 0
    since = output.rsplit(MARK.format(last), 1)[-1]
    assert code == 0, (f"README block {last + 1} of {len(blocks)} "
                       f"{'ran past ' + str(BUDGET_S) + ' s' if code is None else f'failed (exit {code})'}:\n"
                       f"{blocks[last]}\n---- its output ----\n{since[-8000:]}")
    assert ran == list(range(len(blocks))), output[-4000:]
    print(output, f"\nthe README's {len(blocks)} blocks ran in {took:.0f} s")
    written = ("study.json", "deploy.json", "policy.json", "row.json", "torch.json", "upload.json", "answer.json",
               "churn.csv")
    assert not [f for f in written if (ROOT / f).exists()]  # nothing written into the checkout
