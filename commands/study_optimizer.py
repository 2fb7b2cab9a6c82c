"""A study driver's Optuna state, rebuilt from the trials recorded in events: no Optuna database anywhere.

The driver records each trial it starts (its number and params), the intermediate values it reports and how it
ended. After a restart it builds a fresh `StudyOptimizer` from the study's spec and the seed it recorded, calls
`restore(records)` with those trials, and carries on asking. Pure: an in-memory Optuna study, no I/O.

Determinism, the key property: a rebuilt optimizer proposes the same next params as one that never restarted
(same seed, same trials recorded, whatever order they were told in). Optuna samplers keep random state that a
rebuild could not reproduce, so before trial n is asked for, the study gets a sampler whose randomness is
derived from (seed, n) alone (see `make_sampler(..., trial_number=n)`): a proposal depends only on the seed, the
trial number and the trials recorded so far. Restored trials are replayed as enqueued trials, which take their
recorded params without drawing anything. The grid sampler's bookkeeping (which grid point each trial took) is
replayed with them, and the QMC sampler takes point n of its scrambled sequence for trial n rather than counting
the points it drew.
One sampler is the exception: CMA-ES keeps its evolution state in Optuna's trial attributes, which a rebuild
does not recreate, so after a restart its search starts a new generation (proposals stay deterministic in
(seed, records), but differ from a never-restarted study's); and it needs the `cmaes` package.
The pruner is likewise rebuilt for every decision (its state derives from the recorded trials); successive
halving and hyperband replay their per-trial rung bookkeeping on restore, and with min_resource /
max_resource "auto" (estimated from the trials completed at the time) a decision after a restart can differ
from one made before it. The grid and QMC replay lean on Optuna internals (GridSampler's shuffled grid and
random state, QMCSampler._find_sample_id); tests/test_study_optimizer.py's property test guards them.

Params are always the real JSON values: list-valued categorical choices (PyTorch `hidden_sizes`), which Optuna
cannot hold, are JSON-encoded strings inside the Optuna study only.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from domain import vocabulary
from domain.search_space import pruner_settings, sampler_settings

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

_FINISHED = {vocabulary.TrialState.COMPLETED: TrialState.COMPLETE, vocabulary.TrialState.PRUNED: TrialState.PRUNED,
             vocabulary.TrialState.FAILED: TrialState.FAIL}
_SEED_SPACE = 2**32


@dataclass
class TrialRecord:
    """One trial as the driver recorded it. `params` are the searched params as JSON values (no fixed_params);
    `intermediate` maps step -> value (keys may be strings after a JSON round trip)."""

    number: int
    params: dict[str, Any]
    state: str  # a domain.vocabulary.TrialState
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)


def trial_seed(seed: int, trial_number: int) -> int:
    """The sampler seed of trial `trial_number` in a study of `seed`."""
    return (seed * 1_000_003 + trial_number) % _SEED_SPACE


# ---- search space -------------------------------------------------------------------------------------------
class _Codec:
    """How one param's JSON values are held in Optuna: list-valued choices as compact JSON strings."""

    def __init__(self, entry: dict[str, Any]) -> None:
        choices = entry.get("choices", ()) if entry.get("type") == "categorical" else ()
        self.json = any(isinstance(c, (list, dict)) for c in choices)

    def encode(self, value: Any) -> Any:
        return json.dumps(value, separators=(",", ":")) if self.json else value

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.json else value


def _codecs(search_space: dict[str, Any]) -> dict[str, _Codec]:
    return {name: _Codec(search_space[name]) for name in sorted(search_space)}


def _stepped_high(low: float, high: float, step: float) -> float:
    """The largest low + k * step <= high (what Optuna adjusts high to, computed the same way)."""
    d_low, d_step = Decimal(str(low)), Decimal(str(step))
    return float((Decimal(str(high)) - d_low) // d_step * d_step + d_low)


def distributions(search_space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched param, in name order (a stable order: the order params are
    drawn in must not depend on how the spec's JSON object was stored). A range's high is lowered to the last
    value its step reaches. Categorical choices are held as the codec encodes them."""
    out: dict[str, BaseDistribution] = {}
    for name, codec in _codecs(search_space).items():
        entry = search_space[name]
        kind, log = entry["type"], bool(entry.get("log", False))
        if kind == "categorical":
            out[name] = CategoricalDistribution(tuple(codec.encode(c) for c in entry["choices"]))
        elif kind == "int":
            low, high, step = int(entry["low"]), int(entry["high"]), int(entry.get("step", 1))
            out[name] = IntDistribution(low, low + (high - low) // step * step, log=log, step=step)
        elif entry.get("step") is not None:
            step = float(entry["step"])
            out[name] = FloatDistribution(float(entry["low"]), _stepped_high(entry["low"], entry["high"], step),
                                          step=step)
        else:
            out[name] = FloatDistribution(float(entry["low"]), float(entry["high"]), log=log)
    return out


def grid_values(search_space: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value a grid takes of each param (as held in Optuna): the choices, or a range expanded by its
    step. ValueError for a float range without a step."""
    out: dict[str, list[Any]] = {}
    for name, dist in distributions(search_space).items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            out[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif dist.step is None:
            raise ValueError(f"the grid sampler needs a step for the float range of {name!r}")
        else:
            d_low, d_step = Decimal(str(dist.low)), Decimal(str(dist.step))
            count = int((Decimal(str(dist.high)) - d_low) // d_step) + 1
            out[name] = [float(d_low + i * d_step) for i in range(count)]
    return out


def _inside(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` (as held in Optuna) is one `dist` can take."""
    if isinstance(dist, CategoricalDistribution):
        return any(isinstance(c, bool) == isinstance(value, bool) and c == value for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not dist.low <= value <= dist.high:
        return False
    if isinstance(dist, IntDistribution) and value != int(value):
        return False
    if dist.step is None:
        return True
    k = (value - dist.low) / dist.step
    return abs(k - round(k)) < 1e-8


# ---- samplers and pruners -----------------------------------------------------------------------------------
class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its end-of-grid `study.stop()`, which raises outside `optimize` (the driver reads
    `StudyOptimizer.exhausted` instead), that can find a grid point's index and copy itself cheaply."""

    def __init__(self, search_space: dict[str, list[Any]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self._index: dict[tuple[Any, ...], int] = {}
        for i, point in enumerate(self._all_grids):
            self._index.setdefault(tuple(point), i)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None

    def fresh(self) -> _GridSampler:
        """What constructing this sampler again would give (the same shuffled grid, its random state as it was
        right after the shuffle), without shuffling the grid again."""
        twin = copy.copy(self)
        twin._rng = copy.deepcopy(self._rng)
        return twin

    def grid_id(self, values: tuple[Any, ...], preferred: int) -> int | None:
        """The index of the grid point `values` (params in name order): `preferred` when that one matches."""
        if 0 <= preferred < len(self._all_grids) and tuple(self._all_grids[preferred]) == values:
            return preferred
        return self._index.get(values)

    @property
    def size(self) -> int:
        return len(self._all_grids)

    @property
    def space(self) -> dict[str, list[Any]]:
        return self._search_space


class _TrialQMCSampler(optuna.samplers.QMCSampler):
    """QMCSampler that gives trial n point n of its scrambled sequence. Optuna's own counts the points drawn in
    the study's attributes, a count that replayed trials (which draw nothing) would not reproduce."""

    def __init__(self, *, sample_id: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trial_sample_id = sample_id

    def _find_sample_id(self, study: Any, search_space: Any) -> int:
        return self._trial_sample_id


def _quietly(build: Callable[[], optuna.samplers.BaseSampler]) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return build()


def make_sampler(sampler_cfg: dict[str, Any] | None, search_space: dict[str, Any], seed: int | None,
                 trial_number: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of `sampler_cfg` ({"type": "tpe" | "random" | "grid" | "cmaes" | "qmc", ...}; its own
    "seed" is ignored for `seed`). Without `trial_number`: an ordinary sampler seeded with `seed`. With it: the
    sampler for that one trial, its randomness derived from (seed, trial_number) only, so a fresh one per ask
    makes proposals independent of what ran before (the grid's shuffle and the QMC scramble keep `seed` itself:
    they define the sequence every trial draws from). TPE is multivariate with the constant liar (open trials
    count as bad ones, so parallel trials spread out). RuntimeError when CMA-ES's `cmaes` package is missing."""
    kind, _ = sampler_settings(sampler_cfg)
    if trial_number is not None and seed is None:
        raise ValueError("a per-trial sampler needs the study's seed")
    derived = seed if trial_number is None else trial_seed(seed, trial_number)  # type: ignore[arg-type]
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=derived)
    if kind == "grid":
        return _GridSampler(grid_values(search_space), seed=seed)
    if kind == "qmc":
        independent = optuna.samplers.RandomSampler(seed=derived)
        if trial_number is None:
            return _quietly(lambda: optuna.samplers.QMCSampler(seed=seed, independent_sampler=independent,
                                                               warn_independent_sampling=False))
        return _quietly(lambda: _TrialQMCSampler(sample_id=trial_number, seed=seed, independent_sampler=independent,
                                                 warn_independent_sampling=False, warn_asynchronous_seeding=False))
    if kind == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise RuntimeError("the cmaes sampler needs the cmaes package, which is not installed")
        return _quietly(lambda: optuna.samplers.CmaEsSampler(seed=derived, warn_independent_sampling=False))
    try:
        return _quietly(lambda: optuna.samplers.TPESampler(seed=derived, multivariate=True, constant_liar=True))
    except TypeError:  # an Optuna without these options
        return optuna.samplers.TPESampler(seed=derived)


def make_pruner(pruner_cfg: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    """The Optuna pruner of `pruner_cfg` ({"type": "none" | "median" | "percentile" | "successive_halving" |
    "hyperband", ...options}), defaults as domain.search_space.pruner_settings fills them in."""
    kind, o = pruner_settings(pruner_cfg)
    if kind == "median":
        return optuna.pruners.MedianPruner(o["n_startup_trials"], o["n_warmup_steps"], o["interval_steps"])
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(o["percentile"], o["n_startup_trials"], o["n_warmup_steps"],
                                               o["interval_steps"])
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(o["min_resource"], o["reduction_factor"],
                                                      o["min_early_stopping_rate"])
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(o["min_resource"], o["max_resource"], o["reduction_factor"])
    return optuna.pruners.NopPruner()


# ---- the optimizer ------------------------------------------------------------------------------------------
class StudyOptimizer:
    """The Optuna side of one study: proposes trials, decides prunes, picks the best. Not thread-safe: one
    driver calls it. `study_id` also names the Optuna study (the hyperband pruner assigns brackets by study name
    and trial number), so a rebuild must pass the same one.

    `seed` is the sampler seed: `sampler_cfg["seed"]`, or when that is None one drawn at random here, once; the
    driver records it in the study's events and passes it back (as `sampler_cfg["seed"]`) when it rebuilds,
    which is what makes a rebuilt optimizer propose what this one would have.
    """

    def __init__(self, study_id: Any, objective_direction: str, search_space: dict[str, Any],
                 sampler_cfg: dict[str, Any] | None, pruner_cfg: dict[str, Any] | None) -> None:
        if objective_direction not in ("maximize", "minimize"):
            raise ValueError(f"objective_direction must be maximize or minimize, got {objective_direction!r}")
        self.study_id = study_id
        self.direction = objective_direction
        self.search_space = search_space
        self.sampler_cfg = dict(sampler_cfg or {})
        self.pruner_cfg = dict(pruner_cfg or {})
        self.sampler_type, seed = sampler_settings(self.sampler_cfg)
        self.pruner_type, _ = pruner_settings(self.pruner_cfg)
        self.seed: int = secrets.randbelow(_SEED_SPACE) if seed is None else seed
        self._codecs = _codecs(search_space)
        self._dists = distributions(search_space)
        self._grid = make_sampler(self.sampler_cfg, search_space, self.seed) if self.sampler_type == "grid" else None
        self._grid_seen: set[tuple[Any, ...]] = set()
        self._study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), study_name=str(study_id), direction=objective_direction,
            sampler=make_sampler(self.sampler_cfg, search_space, self.seed, trial_number=0),
            pruner=make_pruner(self.pruner_cfg))
        self._trials: list[optuna.Trial] = []
        self._states: list[str] = []  # "open" or a finished TrialRecord state, by trial number
        self._steps: dict[int, dict[int, bool | None]] = {}  # number -> reported step -> prune answer given

    # -- rebuilding
    def restore(self, records: list[TrialRecord]) -> None:
        """Replay recorded trials (numbers 0..k-1, any order given) into this fresh optimizer: each is enqueued
        with its params, asked, its intermediate values reported and, when it ended, told. Queued and running
        trials stay open (RUNNING in Optuna), so TPE's constant liar sees them. ValueError for a gap in the
        numbers, an unknown state or params outside the search space."""
        if self._trials:
            raise ValueError("restore needs a fresh StudyOptimizer")
        for expected, record in enumerate(sorted(records, key=lambda r: r.number)):
            if record.number != expected:
                raise ValueError(f"trial numbers must be 0..{len(records) - 1} without gaps; trial {expected} "
                                 "is missing")
            if record.state not in set(vocabulary.TrialState):
                raise ValueError(f"trial {record.number}: unknown state {record.state!r}")
            held = self._encode(record.params, record.number)
            attrs: dict[str, Any] = {"fixed_params": held}
            self._prepare(record.number)
            sampler = self._study.sampler
            if isinstance(sampler, _GridSampler):  # the grid point a live ask would have marked as taken
                grid_id = sampler.grid_id(tuple(held[name] for name in self._dists), record.number)
                if grid_id is not None:
                    attrs |= {"grid_id": grid_id, "search_space": sampler.space}
            self._study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
            trial = self._new_trial(record.number)
            previous, answer = None, False
            for step, value in sorted((int(s), float(v)) for s, v in record.intermediate.items()):
                trial.report(value, step)
                if self.pruner_type not in ("successive_halving", "hyperband"):
                    self._steps[record.number][step] = None  # stateless pruners: nothing to replay
                    continue
                # Halving pruners note each trial's value at each rung it reaches, as report did live: replay
                # their decisions, skipping the steps where one could not act (it would answer False).
                if answer or self._may_reach_rung(previous, step):
                    self._study.pruner = make_pruner(self.pruner_cfg)
                    answer = bool(trial.should_prune())
                else:
                    answer = False
                self._steps[record.number][step] = answer
                previous = step
            if record.state in _FINISHED:
                self.tell(record.number, record.state, record.value)

    # -- the driver's calls
    def ask(self) -> tuple[int, dict[str, Any]]:
        """(number, params) of a new trial: number is the count of trials so far, params JSON values."""
        number = len(self._trials)
        self._prepare(number)
        trial = self._new_trial(number)
        return number, self._decode(trial.params)

    def report(self, number: int, step: int, value: float) -> bool:
        """Record trial `number`'s intermediate objective value at `step` (>= 0); whether the pruner says to
        stop it now. A repeated step changes nothing and answers as before; a finished trial answers False."""
        trial = self._trial(number)
        if self._states[number] != "open":
            return False
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        steps = self._steps[number]
        if step in steps:
            answered = steps[step]
            if answered is not None:
                return answered
            if step != max(steps):
                return False  # a restored old step again: nothing to decide
        else:
            trial.report(float(value), step)
        self._study.pruner = make_pruner(self.pruner_cfg)
        steps[step] = answer = bool(trial.should_prune())
        return answer

    def tell(self, number: int, state: str, value: float | None = None) -> None:
        """Trial `number` ended: "completed" with `value` (a missing or non-finite value counts as failed),
        "pruned" (its value is its last intermediate one) or "failed". Telling a finished trial is a no-op."""
        if state not in _FINISHED:
            raise ValueError(f"state must be one of {', '.join(_FINISHED)}, got {state!r}")
        trial = self._trial(number)
        if self._states[number] != "open":
            return
        ok = value is not None and not isinstance(value, bool) and math.isfinite(float(value))
        if state == "completed" and ok:
            self._study.tell(trial, float(value), state=TrialState.COMPLETE)  # type: ignore[arg-type]
        elif state == "pruned":
            self._study.tell(trial, state=TrialState.PRUNED)
        else:
            self._study.tell(trial, state=TrialState.FAIL)
        self._states[number] = state if state != "completed" or ok else "failed"

    # -- results
    def best(self) -> tuple[int, float, dict[str, Any]] | None:
        """(number, value, params) of the best completed trial (the lowest number among equals), or None."""
        done = self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        sign = -1.0 if self.direction == "maximize" else 1.0
        top = min(done, key=lambda t: (sign * t.value, t.number))  # type: ignore[operator]
        return top.number, float(top.value), self._decode(top.params)  # type: ignore[arg-type]

    def importances(self) -> dict[str, float]:
        """optuna.importance.get_param_importances over the completed trials; {} with fewer than 2 of them or
        when Optuna cannot tell (e.g. every trial had the same params)."""
        if len(self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
            return {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(self._study)
        except Exception:  # noqa: BLE001 - importances are a nicety; Optuna raises many kinds here
            return {}
        return {name: float(v) for name, v in found.items() if math.isfinite(float(v))}

    @property
    def exhausted(self) -> bool:
        """True for a grid sampler once every grid point was taken by a trial (of any state); False for others."""
        return isinstance(self._grid, _GridSampler) and len(self._grid_seen) >= self._grid.size

    @property
    def n_trials(self) -> int:
        return len(self._trials)

    # -- internals
    def _prepare(self, number: int) -> None:
        """A sampler for trial `number` alone, and a fresh pruner (neither carries state between trials)."""
        if isinstance(self._grid, _GridSampler):  # the grid does not depend on the trial: copy, don't rebuild
            self._study.sampler = self._grid.fresh()
        else:
            self._study.sampler = make_sampler(self.sampler_cfg, self.search_space, self.seed, trial_number=number)
        self._study.pruner = make_pruner(self.pruner_cfg)

    def _new_trial(self, number: int) -> optuna.Trial:
        trial = self._study.ask(self._dists)
        if trial.number != number:
            raise RuntimeError(f"Optuna numbered the trial {trial.number}, expected {number}")
        self._trials.append(trial)
        self._states.append("open")
        self._steps[number] = {}
        if self.sampler_type == "grid":
            params = trial.params
            self._grid_seen.add(tuple(params[name] for name in self._dists))
        return trial

    def _may_reach_rung(self, previous: int | None, step: int) -> bool:
        """Whether a halving pruner could note a rung between the reported steps `previous` and `step`: rungs
        are at min_resource * reduction_factor**k (always possible with min_resource "auto")."""
        _, options = pruner_settings(self.pruner_cfg)
        rung_step, factor = options["min_resource"], options["reduction_factor"]
        if rung_step == "auto":
            return True
        while rung_step <= step:
            if previous is None or rung_step > previous:
                return True
            rung_step *= factor
        return False

    def _trial(self, number: int) -> optuna.Trial:
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < len(self._trials):
            raise ValueError(f"no trial {number!r}; trials are 0..{len(self._trials) - 1}")
        return self._trials[number]

    def _encode(self, params: dict[str, Any], number: int) -> dict[str, Any]:
        if set(params) != set(self._dists):
            raise ValueError(f"trial {number}: params {sorted(params)} are not the searched {sorted(self._dists)}")
        held = {name: self._codecs[name].encode(params[name]) for name in self._dists}
        for name, dist in self._dists.items():
            if not _inside(dist, held[name]):
                raise ValueError(f"trial {number}: {name}={params[name]!r} is outside the search space")
        return held

    def _decode(self, params: dict[str, Any]) -> dict[str, Any]:
        return {name: self._codecs[name].decode(params[name]) for name in self._dists}

