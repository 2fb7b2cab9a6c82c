"""Study overhead: a seeded TPE study of LightGBM trials through Trainyard vs plain Optuna in-process.

Trainyard path (end to end, what a user gets): `trainyard up` as a subprocess (serve with the relay, the study
driver and the projections; N runner processes) on a fresh PostgreSQL database, its own embedded nats-server
(temp dir, free port) and chDB in a temp dir; the study is created with `POST /api/v1/studies` and the clock
stops when `GET /api/v1/studies/{id}` says `completed` (both through the API, as a user sees it), asked once the
public `trainyard.v1.study.completed` event is heard (polling the API all along cost the service CPU the trials
need).
Baseline, in the same run: `optuna.create_study(sampler=TPESampler(seed)).optimize(objective, n_trials)` with
in-memory storage, where `objective` trains with the same trainer code (runners/trainers, LightGBM) on the same
data and params and returns the same final metric.

    python -m bench.study_overhead [--trials 50] [--n-estimators 100]

Runs twice: 2 runners with max_parallel 2 (`ratio=` optuna seconds ÷ trainyard seconds; > 1: Trainyard is
faster), then 1 runner with max_parallel 1 (`overhead_ms_per_trial=`: (trainyard − optuna) seconds ÷ trials).
Goals (issue 6): ratio ≥ 1.5 with 2 runners; overhead under 30 ms a trial with 1 runner.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


from infra.embedded import EmbeddedNats, free_port
from infra.postgres import create_database, drop_database

from bench.harness import PG_SERVER, ROOT, parser, print_ratio, work_dir
SPACE = {"num_leaves": {"type": "int", "low": 4, "high": 64},
         "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
         "min_data_in_leaf": {"type": "int", "low": 5, "high": 50},
         "feature_fraction": {"type": "float", "low": 0.5, "high": 1.0}}


def study_body(trials: int, n_estimators: int, parallel: int, seed: int) -> dict[str, Any]:
    return {"name": "bench", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "objective": {"metric": "auc", "direction": "maximize"},
            "search_space": SPACE, "fixed_params": {"n_estimators": n_estimators, "num_threads": 1},
            "sampler": {"type": "tpe", "seed": seed}, "n_trials": trials, "max_parallel": parallel}


def optuna_baseline(trials: int, n_estimators: int, seed: int) -> tuple[float, float]:
    """(seconds, best auc) of the same study run by Optuna in-process with the same trainer."""
    import optuna

    from commands.study_optimizer import distributions
    from runners.reporting import JobReporter
    from runners.trainers import TrainSpec, trainer_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(SPACE)
    trainer = trainer_for("lightgbm")

    def objective(trial: optuna.Trial) -> float:
        params = {name: trial._suggest(name, dist) for name, dist in dists.items()}
        spec = TrainSpec(framework="lightgbm", task="binary_classification", dataset_uri="builtin://breast_cancer",
                         target=None, params={"n_estimators": n_estimators, "num_threads": 1, **params})
        import threading

        return trainer.fit(spec, JobReporter(threading.Event())).final_metrics["auc"]

    objective_warm = optuna.create_study(direction="maximize")  # import and data-loading costs outside the clock
    objective_warm.optimize(objective, n_trials=1)
    t, cpu = time.perf_counter(), time.process_time()
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True))
    study.optimize(objective, n_trials=trials)
    print(f"  optuna in-process CPU per trial: {(time.process_time() - cpu) / trials * 1000:.1f} ms")
    return time.perf_counter() - t, study.best_value


def trainyard(args: argparse.Namespace, work: Path, runners: int, parallel: int) -> tuple[float, float, dict]:
    """(seconds from POST to completed as the API shows it, best value, the study) with `runners` runners."""
    import httpx

    db_url = create_database(args.pg, "trainyard_bench")
    nats = EmbeddedNats(work / f"nats-{runners}", preferred_port=free_port(0), accounts=False)
    nats_url = nats.start()
    port = free_port(0)
    data_dir = work / f"data-{runners}"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(TRAINYARD_DATABASE_URL=db_url, TRAINYARD_NATS_URL=nats_url, TRAINYARD_DATA_DIR=str(data_dir),
               TRAINYARD_API_PORT=str(port), TRAINYARD_RUNNERS=str(runners))
    log = open(data_dir / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        # warm-up: one plain job, so every runner process has imported LightGBM and loaded the data once
        for i in range(runners):
            http.post("/api/v1/training/jobs", json={"name": f"warm-{i}", "framework": "lightgbm",
                                                     "task": "binary_classification",
                                                     "dataset": {"uri": "builtin://breast_cancer"},
                                                     "params": {"n_estimators": 5}})
        time.sleep(3.0)
        ended = StudyEnds(nats_url)  # the study's end is heard on the bus; the API is asked only then
        cpu0 = cpu_by_part(proc.pid, nats.proc.pid if nats.proc else None, db_url)
        t = time.perf_counter()
        r = http.post("/api/v1/studies", json=study_body(args.trials, args.n_estimators, parallel, args.seed))
        assert r.status_code == 202, r.text
        study_id = r.json()["study_id"]
        ended.wait(study_id, timeout_s=600)
        while True:  # then the read model, as a user sees it (a few ms behind the event)
            st = http.get(f"/api/v1/studies/{study_id}").json()
            if st["status"] in ("completed", "cancelled", "failed"):
                break
            time.sleep(0.002)
        elapsed = time.perf_counter() - t
        ended.close()
        cpu1 = cpu_by_part(proc.pid, nats.proc.pid if nats.proc else None, db_url)
        assert st["status"] == "completed" and st["counts"]["completed"] == args.trials, st
        print(breakdown(db_url, study_id, sequential=parallel == 1))
        per = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / args.trials * 1000 for k in cpu1}
        total = sum(per.values())
        print("  CPU per trial: " + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items()) +
              f"; all {total:.1f} ms, of which outside the runners {total - per.get('runners', 0.0):.1f} ms")
        return elapsed, st["best_trial"]["value"], st
    finally:
        http.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        nats.stop()
        drop_database(args.pg, db_url)


class StudyEnds:
    """A subscriber to `trainyard.v1.study.{completed,cancelled,failed}` on its own thread: the bench learns that a
    study ended from the public event instead of polling the API every few ms (which cost serve several ms of CPU
    a trial, on the cores the trials share)."""

    def __init__(self, nats_url: str) -> None:
        import asyncio
        import json
        import threading

        self.ended: set[str] = set()
        self.changed = threading.Condition()
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        async def listen() -> None:
            import nats as nats_py

            self.nc = await nats_py.connect(nats_url)

            async def on(msg: Any) -> None:
                with self.changed:
                    self.ended.add(json.loads(msg.data)["aggregate_id"])
                    self.changed.notify_all()

            for kind in ("completed", "cancelled", "failed"):
                await self.nc.subscribe(f"trainyard.v1.study.{kind}", cb=on)
            await self.nc.flush()
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(listen(), self.loop).result(30)
        ready.wait(30)

    def wait(self, study_id: str, timeout_s: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: study_id in self.ended, timeout_s), "the study did not end"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def cpu_by_part(up_pid: int, nats_pid: int | None, db_url: str) -> dict[str, float]:
    """CPU seconds so far of each part of the service: the runner processes, the serve process (API, relay,
    driver, report handlers, metric projectors), the read-model projection process, nats-server and the PostgreSQL
    backends of the bench's database."""
    import psutil

    out = {"runners": 0.0, "serve": 0.0, "projections": 0.0, "nats-server": 0.0, "postgres": 0.0}

    def add(part: str, p: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[part] += t.user + t.system

    up = psutil.Process(up_pid)
    for p in up.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            add("runners" if " runner" in cmd else "projections" if "multiprocessing" in cmd else "serve", p)
    if nats_pid:
        add("nats-server", psutil.Process(nats_pid))
    db = db_url.rpartition("/")[2]
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "postgres" and db in " ".join(p.info["cmdline"] or ()):
            add("postgres", p)
    return out


def breakdown(db_url: str, study_id: str, sequential: bool) -> str:
    """Where a trial's time goes, from the recorded events' timestamps (medians over the trials, ms); the wait for
    the next ask only when trials run one at a time (in parallel, the next ask follows another trial's end)."""
    import statistics
    from uuid import UUID

    from commands.training import TrainingApplication
    from infra.postgres import eventsourcing_env

    app = TrainingApplication(env=eventsourcing_env(db_url))
    try:
        at: dict[tuple[str, Any], float] = {}
        for n in app.recorder.select_notifications(start=1, limit=1_000_000):
            e = app.mapper.to_domain_event(n)
            kind, ts = type(e).__name__, e.timestamp.timestamp()
            if n.originator_id == UUID(study_id):
                if kind in ("TrialAsked", "TrialStarted", "TrialFinished"):
                    at[(kind, e.number)] = ts
            elif kind in ("Submitted", "Started", "Completed"):
                at[(kind, n.originator_id)] = ts
        study = app.repository.get(UUID(study_id))
    finally:
        app.close()
    steps: dict[str, list[float]] = {}
    for number, trial in sorted(study.trials.items()):
        job = UUID(str(trial.job_id))
        chain = [("ask → job submitted", ("TrialAsked", number), ("Submitted", job)),
                 ("submitted → claimed by a runner", ("Submitted", job), ("Started", job)),
                 ("claimed → completed (training)", ("Started", job), ("Completed", job)),
                 ("completed → trial finished (driver)", ("Completed", job), ("TrialFinished", number)),
                 ("trial finished → next ask", ("TrialFinished", number), ("TrialAsked", number + 1))]
        if not sequential:
            chain = chain[:-1]
        for name, a, b in chain:
            if a in at and b in at:
                steps.setdefault(name, []).append((at[b] - at[a]) * 1000)
    return "\n".join(f"  {k:<38} median {statistics.median(v):7.1f} ms  mean {statistics.fmean(v):7.1f} ms"
                     for k, v in steps.items())


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pg", default=PG_SERVER, help="a PostgreSQL server URL (its database part is ignored)")
    args = ap.parse_args()
    with work_dir("trainyard-bench-study-") as work:
        os.chmod(work, 0o755)
        for runners in (2, 1):
            o_s, o_best = optuna_baseline(args.trials, args.n_estimators, args.seed)
            t_s, t_best, _ = trainyard(args, work, runners, runners)
            print(f"optuna:    {args.trials} trials in-process (TPE seed {args.seed}, LightGBM n_estimators "
                  f"{args.n_estimators}, num_threads 1): {o_s:.2f} s ({o_s / args.trials * 1000:.0f} ms a trial), "
                  f"best auc {o_best:.4f}")
            print(f"trainyard: {args.trials} trials, {runners} runner(s), max_parallel {runners}: {t_s:.2f} s "
                  f"({t_s / args.trials * 1000:.0f} ms a trial), best auc {t_best:.4f}")
            if runners == 2:
                print_ratio(o_s / t_s)
            else:
                print_ratio(o_s / t_s, name="ratio_1_runner")
                print(f"overhead_ms_per_trial={(t_s - o_s) / args.trials * 1000:.1f}")


if __name__ == "__main__":
    main()
