"""`trainyard retrain` and `trainyard retrains`, against scripted API answers."""
from __future__ import annotations

from typing import Any

import api.cli.retrains
from tests.support.cli import trainyard as run_trainyard
from tests.support.fakes import API, Script, Step

DEP = "/api/v1/deployments/bc"
RID = "6f1c2a9e-0000-4000-8000-000000000001"


def retrain(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": RID, "deployment": "bc", "variant": "control", "model": "bc", "model_version": 1,
            "job_id": "6f1c2a9e-0000-4000-8000-000000000002", "gate": {"metric": "auc", "max_regression": 0.0},
            "register_as": "bc", "challenger": None, "status": status, "reason": None, "figures": None,
            "registered_version": None, "export_id": None, "challenger_variant": None, "error": None,
            "created_by": "admin", "created_at": "2026-12-08T00:00:00Z", "updated_at": "2026-12-08T00:00:00Z",
            **fields}


REFUSED = ("test auc 0.8500 against the deployed version's 0.9100 on the same rows: a regression of 0.0600 "
           "(over the allowed 0.0000)")


def test_retrain_sends_the_gate_and_watches_until_the_refusal_with_its_figures(  # type: ignore[no-untyped-def]
        scripted_api, monkeypatch) -> None:
    monkeypatch.setattr(api.cli.retrains.time, "sleep", lambda _s: None)
    body = {"params": {"n_estimators": 1}, "gate": {"metric": "auc", "max_regression": 0.0}, "register_as": "bc"}
    script = scripted_api(Step("POST", f"{DEP}/retrain", body=body, answer=retrain("training")),
                          Step("GET", f"{DEP}/retrains/{RID}", answer=retrain("training")),
                          Step("GET", f"{DEP}/retrains/{RID}", answer=retrain("gate_failed", reason=REFUSED)))
    code, out = run_trainyard("retrain", "bc", "-p", "n_estimators=1", "--gate", "auc", "--max-regression", "0",
                              "--register-as", "bc", "--watch", "--api", API)
    script.done()
    assert code == 1, out
    text = " ".join(out.split())
    assert "gate_failed" in text and "0.8500" in text and "0.9100" in text


def test_retrains_lists_each_with_its_status_and_version(scripted_api) -> None:  # type: ignore[no-untyped-def]
    listed = {"items": [retrain("challenger_added", registered_version=2, challenger_variant="retrain-v2",
                                reason="test auc 0.9900 …")], "total": 1, "limit": 50, "offset": 0}
    script = scripted_api(Step("GET", f"{DEP}/retrains", answer=listed))
    code, out = run_trainyard("retrains", "bc", "--api", API)
    script.done()
    assert code == 0, out
    assert "6f1c2a9e" in out and "challenger_added" in out and "bc v1" in out
