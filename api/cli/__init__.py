"""The `trainyard` command's client side, one module per resource: jobs (`submit`, `watch`, `jobs`, `job`,
`cancel`), `status`, the queue and its capacity (`stats`), studies (`study create|watch|cancel`, `studies`), code bundles (`code push|list|show`),
the model registry (`models`, `model register|show|alias`, `export`), deployments (`deploy`, `deployments`, `deployment`, `traffic`, `promote`,
`rollback`, `undeploy`, `retrain`, `retrains`), the online comparison (`ab`, `feedback`, `policy`), keys (`api-key create|list|revoke`,
`predict`), schedules (`schedule create|list|show|runs|update|pause|resume|trigger|delete`) and identity (`login`, `logout`, `whoami`, `project`, `member`, `user`, `service-account`, `token`). `app` holds the typer app and the shared options, `ids` the ids commands take (whole or short),
`output` how things are shown, `watching` the one polling loop of every live view. entrypoints/cli.py adds the
process commands (`up`, `serve`, ...)."""
# Each module registers its commands on import; this order is the order `trainyard --help` lists them in.
from api.cli import jobs, evaluation, status, stats, studies, code, models, deployments, ab, keys, schedules, identity, retrains  # noqa: F401,I001
from api.cli.app import cli

__all__ = ["cli"]
