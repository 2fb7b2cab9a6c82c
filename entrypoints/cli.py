"""The `trainyard` command: the process commands (`up`, `serve`, `serve-inference`, `runner`) on top of the client
commands of api/cli.py. The console script and `python -m entrypoints.cli` start here."""
from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.cli import cli


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _service() -> None:
    """A process `up` supervises: it logs to stderr, and SIGUSR2 prints every thread's stack there (the
    supervisor sends it to a child that ignores SIGTERM, so its log says where the child was stuck)."""
    _logging()
    faulthandler.register(signal.SIGUSR2, all_threads=True)


@cli.command()
def up(data_dir: Annotated[Optional[Path], typer.Option(help="data dir (default ./.trainyard)")] = None,
       runners: Annotated[Optional[int], typer.Option(help="runner processes (default 2)")] = None) -> None:
    """Start the whole service on embedded defaults (or the TRAINYARD_*_URL servers) until Ctrl-C."""
    from infra.settings import Settings
    from entrypoints.up import run_up

    _logging()
    overrides = {k: v for k, v in {"data_dir": data_dir, "runners": runners}.items() if v is not None}
    raise typer.Exit(run_up(Settings(**overrides)))


@cli.command()
def serve() -> None:
    """API + relay + projectors + report handlers (started by `up`)."""
    from entrypoints.serve import serve as run_serve
    from infra.settings import Settings

    _service()
    asyncio.run(run_serve(Settings()))


@cli.command("serve-inference")
def serve_inference() -> None:
    """The inference server: deployed ONNX models behind /v1/deployments/{name}/predict (started by `up`)."""
    from entrypoints.inference import serve_inference as run_inference
    from infra.settings import Settings

    _service()
    import uvloop

    uvloop.run(run_inference(Settings()))


@cli.command()
def runner() -> None:
    """One runner process (started by `up`)."""
    from infra.settings import Settings
    from entrypoints.runner import run_runner

    _service()
    asyncio.run(run_runner(Settings()))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
