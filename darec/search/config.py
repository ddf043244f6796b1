"""Typed configuration of ``darec search``, read from YAML (``configs/search_*.yaml`` documents every key)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from darec.errors import ConfigError
from darec.search.stopping import EarlyStoppingConfig

COSTS = ("seconds_per_epoch", "trainable_params")  # second objectives a multi-objective search can minimise
DEFAULT_METRIC = "val/ndcg@10"  # what a trial is scored by unless the config says otherwise


@dataclass
class SpaceConfig:
    """What each layer may choose, plus optional shared knobs."""

    types: list[str] | None = None  # adapter types per layer; None = every registered type
    extra_types: list[str] = field(default_factory=list)  # class paths of user adapter types, added to the choices
    sizes: dict[str, list[int]] = field(default_factory=dict)  # ordered size levels per type (same count per type)
    lr: list[float] | None = None  # [low, high]: search the learning rate on a log scale
    lambda_mc: list[float] | None = None  # [low, high]: search the masked-context weight


@dataclass
class BudgetConfig:
    """Training budget of one search trial (and of each fresh-seed re-run unless ``rerun.epochs`` is set)."""

    epochs: int = 1  # trainer.max_epochs
    steps: int | None = None  # training batches per epoch (trainer.limit_train_batches); None = whole epochs
    minutes: float | None = None  # wall-clock cap of training (trainer.max_time); validation still runs
    timeout_minutes: float | None = None  # kill a trial running longer than this and mark it failed


@dataclass
class RerunConfig:
    """Fresh-seed re-runs that decide the winner."""

    top_k: int = 2  # re-run this many of the best assignments (Pareto points when multi-objective)
    seeds: int = 2  # fresh seeds per re-run
    baseline: str = "serial"  # the uniform baseline: this type on every layer, re-run on the same seeds
    # max_epochs of each re-run, trained as whole epochs without the budget's steps and minutes caps (the base config's
    # early stopping still ends it): full training for the comparison that declares the winner. None = the search budget
    epochs: int | None = None
    # multi-objective only, which Pareto points are re-run: "quality" takes the best search values first; "cost" takes
    # the cheapest by the first cost among the points within `tolerance` of the best search value
    prefer: str = "quality"
    tolerance: float = 0.005  # for prefer "cost": NDCG@10 points a Pareto point may lie below the best search value
    # also re-run the uniform baseline at the winner's searched knobs (learning rate, masked-context weight) on the same
    # seeds, so that a win the knobs alone explain is seen as such
    knob_control: bool = False


@dataclass
class RefitConfig:
    """The full retraining of the winner (``--refit``) and its ready-to-run config."""

    epochs: int | None = None  # trainer.max_epochs of best.yaml; None keeps the base config's


@dataclass
class SearchConfig:
    """Everything ``darec search`` needs; see ``configs/search_darec_ml100k.yaml``."""

    base_config: str = "configs/darec_ml100k.yaml"  # the DARec fit config every trial starts from
    out_dir: str = "runs/search"  # state, trials, configs and plots
    trials: int = 12  # search trials (completed + failed)
    parallel: int = 1  # trials at once, each in its own process
    seed: int = 0  # seeds Ax; search trial i trains with seed + i
    method: str = "bo"  # bo | random
    init_trials: int = 5  # quasi-random trials before Bayesian optimisation
    # the validation metric every trial is scored by (its best epoch); "val/lm_ndcg@10" scores DARec's language-model
    # path alone, without SASRec's residual score, which otherwise dominates the differences between adapter choices
    metric: str = DEFAULT_METRIC
    multi_objective: bool = False  # also minimise the costs below and report the Pareto front
    costs: list[str] = field(default_factory=lambda: ["seconds_per_epoch", "trainable_params"])  # see COSTS
    share_cache: bool = False  # share DARec's token/hard-negative cache across trials
    top_fraction: float = 0.25  # share of completed trials the choice-frequency plot counts
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted fit-config keys set in every trial
    space: SpaceConfig = field(default_factory=SpaceConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    rerun: RerunConfig = field(default_factory=RerunConfig)
    refit: RefitConfig = field(default_factory=RefitConfig)

    def validate(self) -> "SearchConfig":
        _positive("trials", self.trials)
        _positive("parallel", self.parallel)
        _positive("budget.epochs", self.budget.epochs)
        if self.budget.steps is not None:
            _positive("budget.steps", self.budget.steps)
        for key in ("minutes", "timeout_minutes"):
            value = getattr(self.budget, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"budget.{key} must be a positive number of minutes or null, got {value!r}")
        self.early_stopping.validate()
        if not (isinstance(self.metric, str) and self.metric.startswith("val/") and len(self.metric) > 4):
            raise ConfigError(f"metric must be a logged validation metric such as {DEFAULT_METRIC!r} or "
                              f"'val/lm_ndcg@10', got {self.metric!r}")
        unknown = [c for c in self.costs if c not in COSTS]
        if unknown or len(set(self.costs)) != len(self.costs) or (self.multi_objective and not self.costs):
            raise ConfigError(f"costs must be distinct names from {list(COSTS)} (at least one with multi_objective), "
                              f"got {self.costs!r}")
        if self.method not in ("bo", "random"):
            raise ConfigError(f"method must be 'bo' or 'random', got {self.method!r}")
        if self.init_trials < 1:
            raise ConfigError(f"init_trials must be at least 1, got {self.init_trials}")
        if self.rerun.top_k < 1 or self.rerun.seeds < 1:
            raise ConfigError("rerun.top_k and rerun.seeds must be at least 1: winners are always re-run on fresh seeds")
        if self.rerun.prefer not in ("quality", "cost"):
            raise ConfigError(f"rerun.prefer must be 'quality' or 'cost', got {self.rerun.prefer!r}")
        if self.rerun.prefer == "cost" and not self.multi_objective:
            raise ConfigError("rerun.prefer 'cost' needs multi_objective: true (the costs are only measured and "
                              "compared in a multi-objective search)")
        tol = self.rerun.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"rerun.tolerance must be a finite number >= 0, got {tol!r}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        for key, value in (("rerun.epochs", self.rerun.epochs), ("refit.epochs", self.refit.epochs)):
            if value is not None:
                _positive(key, value)
        levels = {len(v) for v in self.space.sizes.values()}
        if len(levels) > 1:
            raise ConfigError(f"space.sizes must give every type the same number of levels, got {self.space.sizes}")
        for name, sizes in self.space.sizes.items():
            if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
                raise ConfigError(f"space.sizes.{name} must be a list of positive integers, got {sizes!r}")
        for key in ("lr", "lambda_mc"):
            bounds = getattr(self.space, key)
            if bounds is not None and not (
                len(bounds) == 2 and all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
                and 0 <= bounds[0] < bounds[1] and (key != "lr" or bounds[0] > 0)
            ):
                raise ConfigError(f"space.{key} must be [low, high] with 0 {'<' if key == 'lr' else '<='} low < high, "
                                  f"got {bounds!r}")
        return self


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the search config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'the search config'}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = {"space": SpaceConfig, "budget": BudgetConfig, "rerun": RerunConfig, "refit": RefitConfig,
               "early_stopping": EarlyStoppingConfig}.get(name)
        kwargs[name] = _build(sub, value, f"{where}{name}.") if sub and cls is SearchConfig else value
    return cls(**kwargs)


def load_search_config(path: str | Path, **overrides: Any) -> SearchConfig:
    """Read and validate a search config; ``overrides`` (non-None values) replace top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"search config {str(path)!r} is not valid YAML: {err}") from err
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(SearchConfig, data, "").validate()


def config_from_dict(data: dict[str, Any]) -> SearchConfig:
    """A validated :class:`SearchConfig` from a plain mapping (as YAML would give)."""
    return _build(SearchConfig, data, "").validate()
