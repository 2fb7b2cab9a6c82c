"""The `trainyard` CLI run in-process, and what its errors must look like."""
from __future__ import annotations

from typer.testing import CliRunner

from api.cli import cli


def trainyard(*args: str, input: str | None = None) -> tuple[int, str]:
    """Run `trainyard ARGS` (with `input` on stdin); its exit code and output. A crash is a test failure."""
    result = CliRunner().invoke(cli, list(args), input=input)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        f"{result.exception!r}\n{result.output}"
    return result.exit_code, result.output


def one_error_line(code: int, output: str) -> str:
    """The output is one `error: ...` line, with exit code 1 and no traceback; returns the line."""
    lines = output.strip().splitlines()
    assert code == 1, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]
