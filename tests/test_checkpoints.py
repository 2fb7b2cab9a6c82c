"""The checkpoint store, and each trainer's resume from its own checkpoints: a fit stopped after a checkpoint and
resumed from it ends where an uninterrupted fit ends (what holds: PyTorch on the CPU, the same model bytes;
LightGBM, the same per-round and final metrics)."""
from __future__ import annotations

from pathlib import Path

import pytest

from runners.checkpoints import CheckpointStore
from runners.trainers import CheckpointMismatch, TrainingCancelled, TrainSpec, trainer_for
from tests.test_trainers import RecordingReporter

CASES = [  # framework, task, dataset, params (small: the file stays fast)
    ("pytorch", "multiclass_classification", "builtin://wine", {"epochs": 12}),
    ("pytorch", "regression", "builtin://diabetes", {"epochs": 10}),
    ("lightgbm", "binary_classification", "builtin://breast_cancer", {"n_estimators": 40}),
    ("lightgbm", "multiclass_classification", "builtin://wine", {"n_estimators": 30}),
]


def test_the_store_keeps_the_last_checkpoints_and_finds_the_latest_across_attempts(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest("job") is None and store.starting_point("job") is None
    for step in (5, 10, 15):
        store.save("job", 1, step, f"a1-{step}".encode(), "pt")
    assert [(c.attempt, c.step) for c in store.all("job")] == [(1, 10), (1, 15)]
    store.save("job", 2, 20, b"a2-20", "pt")
    latest = store.latest("job")
    assert (latest.attempt, latest.step, latest.read(), latest.suffix) == (2, 20, b"a2-20", "pt")
    assert latest.path == tmp_path.resolve() / "checkpoints" / "job" / "attempt-2" / "ckpt-000000000020.pt"
    assert [(c.attempt, c.step) for c in store.all("job")] == [(1, 15), (2, 20)]
    assert not list(tmp_path.rglob(".ckpt-*"))  # no temporary file left behind


def test_a_retry_starts_from_its_originals_checkpoint_and_keeps_a_copy(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save("original", 3, 40, b"weights", "txt")
    start = store.starting_point("retry", resume_of="original")
    assert (start.job_id, start.step) == ("original", 40)
    adopted = store.adopt(start, "retry", 1)
    assert store.starting_point("retry", resume_of="original") == adopted  # later attempts find their own
    assert (adopted.job_id, adopted.attempt, adopted.step, adopted.read()) == ("retry", 1, 40, b"weights")


@pytest.mark.parametrize("job_id,attempt,step,suffix", [("../x", 1, 1, "pt"), ("a/b", 1, 1, "pt"), ("j", -1, 1, "pt"),
                                                        ("j", 1, -1, "pt"), ("j", 1, 10**12, "pt"),
                                                        ("j", 1, 1, "p/t"), ("j", 1, 1, ".."), ("j", True, 1, "pt")])
def test_the_store_refuses_names_that_could_leave_its_folder(tmp_path: Path, job_id, attempt, step, suffix) -> None:
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path).save(job_id, attempt, step, b"x", suffix)


@pytest.mark.parametrize("framework,task,uri,params", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_fit_resumed_from_its_checkpoint_ends_as_an_uninterrupted_fit(tmp_path: Path, framework: str, task: str,
                                                                       uri: str, params: dict) -> None:
    steps = params.get("epochs") or params["n_estimators"]
    spec = TrainSpec(framework, task, uri, None, params, seed=3)
    whole_steps = RecordingReporter()
    whole = trainer_for(framework).fit(spec, whole_steps)

    store = CheckpointStore(tmp_path)
    saving = TrainSpec(framework, task, uri, None, params, seed=3, checkpoint_every_steps=4, checkpoint_every_s=3600,
                       checkpoint=lambda step, data: store.save("job", 1, step, data))
    with pytest.raises(TrainingCancelled):
        trainer_for(framework).fit(saving, RecordingReporter(stop_after=steps // 2 + 1))
    checkpoint = store.latest("job")
    assert checkpoint.step == 4 * ((steps // 2 + 1) // 4) > 0

    resumed_steps = RecordingReporter()
    resumed = trainer_for(framework).fit(TrainSpec(framework, task, uri, None, params, seed=3,
                                                   resume_from=checkpoint.path), resumed_steps)
    assert [s for s, _, _ in resumed_steps.steps] == list(range(checkpoint.step + 1, steps + 1))
    assert resumed_steps.steps == whole_steps.steps[checkpoint.step:]
    assert resumed.final_metrics == whole.final_metrics
    if framework == "pytorch":
        assert resumed.model_bytes == whole.model_bytes


@pytest.mark.parametrize("framework,other", [("pytorch", {"hidden_sizes": [8]}), ("lightgbm", {})])
def test_a_checkpoint_of_another_model_fails_the_fit_saying_so(tmp_path: Path, framework: str, other: dict) -> None:
    store = CheckpointStore(tmp_path)
    params = {"epochs": 3} if framework == "pytorch" else {"n_estimators": 3}
    spec = TrainSpec(framework, "regression", "builtin://diabetes", None, params, checkpoint_every_steps=1,
                     checkpoint=lambda step, data: store.save("job", 1, step, data))
    trainer_for(framework).fit(spec, RecordingReporter())
    uri = "builtin://breast_cancer" if framework == "lightgbm" else "builtin://diabetes"
    task = "binary_classification" if framework == "lightgbm" else "regression"
    with pytest.raises(CheckpointMismatch):
        trainer_for(framework).fit(TrainSpec(framework, task, uri, None, {**params, **other},
                                             resume_from=store.latest("job").path), RecordingReporter())
