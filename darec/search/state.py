"""Search state on disk: the Ax client (JSON), the trial journal (``trials.jsonl``) and the search identity.

Order of writes per finished trial: the journal line first (flushed and fsynced), then the Ax JSON. On
resume the journal is the truth: an Ax trial still RUNNING that the journal has finished is completed from the
journal; one the journal lacks is run again under the same index. Nothing finished is lost or repeated.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from darec.atomic import atomic_write_text
from darec.errors import ConfigError
from darec.search.config import COSTS, DEFAULT_METRIC, SearchConfig
from darec.search.space import SearchSpace

log = logging.getLogger(__name__)

NDCG = "ndcg10"  # Ax metric name of the search's metric; the costs keep their config names (config.COSTS)
ADDED_LATER = {"metric": DEFAULT_METRIC}  # identity keys newer than some saved searches, with the value those ran with


class Journal:
    """``trials.jsonl``: one complete JSON line per finished trial (search or re-run), appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            lines = path.read_text().split("\n")
            complete, tail = lines[:-1], lines[-1]
            if tail.strip():  # a line cut off by a kill: drop it, and rewrite the file without it
                log.warning("dropping an incomplete last line of %s", path)
                atomic_write_text(path, "".join(ln + "\n" for ln in complete))
            self.records = [json.loads(ln) for ln in complete if ln.strip()]

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def search(self) -> dict[int, dict[str, Any]]:
        return {r["trial"]: r for r in self.records if r["phase"] == "search"}

    def reference(self) -> dict[str, Any] | None:
        """The finished reference run of ``early_stopping.reference``, if any."""
        return next((r for r in self.records if r["phase"] == "reference"), None)

    def reruns(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(r["candidate_key"], r["seed"]): r for r in self.records if r["phase"] == "rerun"}


def _identity(cfg: SearchConfig, space: SearchSpace) -> dict[str, Any]:
    """What must not change between a search and its resumption."""
    return {"space": space.describe(), "metric": cfg.metric, "multi_objective": cfg.multi_objective, "costs": cfg.costs,
            "early_stopping": _without_unset(asdict(cfg.early_stopping), "reference"), "method": cfg.method,
            "seed": cfg.seed, "init_trials": cfg.init_trials, "budget": asdict(cfg.budget),
            "base_config": cfg.base_config, "overrides": cfg.overrides}


def _without_unset(data: dict[str, Any], *later: str) -> dict[str, Any]:
    """``data`` less the ``later`` keys that are None: keys added after some searches were saved, which those ran
    without."""
    return {k: v for k, v in data.items() if not (k in later and v is None)}


class SearchState:
    """The Ax client plus the journal of one output directory."""

    def __init__(self, out_dir: Path, client: Any, journal: Journal, seed: int) -> None:
        self.out_dir = out_dir
        self.client = client
        self.journal = journal
        self.seed = seed

    @property
    def ax_path(self) -> Path:
        return self.out_dir / "ax_state.json"

    @classmethod
    def open(cls, cfg: SearchConfig, space: SearchSpace, resume: bool) -> "SearchState":
        out = Path(cfg.out_dir)
        ident_path, ax_path = out / "search.json", out / "ax_state.json"
        identity = json.loads(json.dumps(_identity(cfg, space)))
        if ident_path.is_file() or ax_path.is_file():
            if not resume:
                raise ConfigError(f"{out} already holds a search; pass --resume to continue it, or choose another out_dir")
            saved = json.loads(ident_path.read_text())
            saved = {**ADDED_LATER, **saved}  # searches started before a key existed ran with its default
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            if changed:
                raise ConfigError(f"cannot resume {out}: {changed} changed since the search started "
                                  "(only trials, parallel, rerun and refit may change); use a new out_dir")
            if ax_path.is_file():
                from ax import Client

                client = Client.load_from_json_file(str(ax_path))
                client._random_seed = cfg.seed  # the snapshot does not store the client's seed
                return cls(out, client, Journal(out / "trials.jsonl"), cfg.seed)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ident_path, json.dumps(identity, indent=1))
        state = cls(out, _new_client(cfg, space), Journal(out / "trials.jsonl"), cfg.seed)
        state.save_ax()
        return state

    def save_ax(self) -> None:
        """Snapshot the Ax client to ``ax_state.json`` (written beside it, then swapped in atomically)."""
        tmp = self.ax_path.with_name(".ax_state.json.writing")
        self.client.save_to_json_file(str(tmp))
        atomic_write_text(self.ax_path, tmp.read_text())
        tmp.unlink()

    def ax_trials(self) -> list[dict[str, Any]]:
        """Every Ax trial: index, status and parameters."""
        df = self.client.summarize()
        if df is None or len(df) == 0:
            return []
        names = [c for c in df.columns if c.startswith(("layer_", "size_")) or c in ("lr", "lambda_mc")]
        out = []
        for row in df.to_dict("records"):
            params = {n: (int(row[n]) if n.startswith("size_") else row[n]) for n in names}
            out.append({"index": int(row["trial_index"]), "status": str(row["trial_status"]), "params": params})
        return out

    def reconcile(self) -> list[tuple[int, dict[str, Any]]]:
        """Bring Ax in line with the journal; return the RUNNING trials to run again (index, parameters)."""
        finished = self.journal.search()
        rerun = []
        for trial in self.ax_trials():
            if trial["status"] != "RUNNING":
                continue
            record = finished.get(trial["index"])
            if record is None:
                rerun.append((trial["index"], trial["params"]))
            else:
                self.tell(trial["index"], record)
        if finished or rerun:
            self.save_ax()
        return rerun

    def tell(self, index: int, record: dict[str, Any]) -> None:
        """Report a finished trial to Ax; a pruned one as early-stopped with its best value so far."""
        if record["status"] == "completed":
            data = {NDCG: float(record["ndcg@10"])}
            for cost in COSTS:
                if record.get(cost) is not None:
                    data[cost] = float(record[cost])
            if record.get("pruned"):
                self.client.attach_data(index, data)
                self.client.mark_trial_early_stopped(index)
            else:
                self.client.complete_trial(index, data)
        else:
            self.client.mark_trial_failed(index, failed_reason=str(record.get("reason")))


def _new_client(cfg: SearchConfig, space: SearchSpace) -> Any:
    from ax import Client

    client = Client(random_seed=cfg.seed)
    client.configure_experiment(parameters=space.ax_parameters(), name="darec_adapter_search")
    objective = ", ".join([NDCG, *(f"-{c}" for c in cfg.costs)]) if cfg.multi_objective else NDCG
    client.configure_optimization(objective=objective)
    if cfg.method == "bo":
        client.set_generation_strategy(bo_strategy(cfg.init_trials, cfg.seed))
    else:
        client.configure_generation_strategy(method="random_search", initialization_random_seed=cfg.seed)
    return client


def bo_strategy(init_trials: int, seed: int) -> Any:
    """Sobol for ``init_trials`` trials, then Ax's ``BO_MIXED``.

    Ax's default ("fast") one-hot encodes unordered choices and optimises a continuous relaxation: on a layer x
    type space its proposals round to arms already tried, and after 5 such attempts it falls back to Sobol,
    so it searched no better than random here. ``BO_MIXED`` keeps each layer one categorical input (a GP with a
    categorical kernel) and enumerates (or locally searches) the discrete space for the acquisition maximum.
    """
    from ax.adapter.registry import Generators
    from ax.generation_strategy.generation_node import GenerationStep
    from ax.generation_strategy.generation_strategy import GenerationStrategy

    return GenerationStrategy(name=f"Sobol+BO_MIXED:{init_trials}", nodes=[
        GenerationStep(generator=Generators.SOBOL, num_trials=init_trials, generator_kwargs={"seed": seed}),
        GenerationStep(generator=Generators.BO_MIXED, num_trials=-1),
    ])
