"""The CF-source contract and its file: collaborative vectors that DARec injects, from any model that has them.

A **CF source** is a :class:`~darec.modules.base.RecModule` whose :meth:`~darec.modules.base.RecModule.cf_export`
returns a :class:`CFExport`: one vector per item (``item_emb``), and optionally what DARec needs for causal
per-position user states (named in ``meta["causal"]["user_states"]``, for example SASRec's own encoder) or a
non-causal user table for analysis. :func:`export_module` writes any CF source's export without knowing its class,
and ``darec export-embeddings`` does so from a checkpoint; SASRec, LightGCN and any model of your own that
implements ``cf_export`` can be injected (``injection.sources``).

An export is two files side by side: ``NAME.safetensors`` and the sidecar ``NAME.json``.

Tensors (row index = internal id; row 0 is padding and all-zero):

- ``item_emb`` float32 ``[num_items + 1, d]``: the source's item vectors (SASRec's tied item table, LightGCN's
  propagated item representations, ...). Items with no training interaction get a zero row and ``has_cf = False``.
- ``has_cf`` bool ``[num_items + 1]``: the item has at least one training interaction.
- optionally ``user_emb`` ``[num_users + 1, d]`` and ``user_has_cf``: vectors that summarise a user's *whole*
  training history, so **not causal** (the sidecar says so); they must never feed a training position.
- any further tensors the source adds (SASRec: ``sasrec.*``, its encoder weights with the untrained rows of
  ``has_cf = False`` items zeroed, so that :meth:`~darec.modules.sasrec.SasrecUserEncoder.from_export` rebuilds the
  encoder, whose :meth:`~darec.modules.sasrec.SasrecEncoder.causal_user_states` sees only items ``<= t`` at ``t``).

The sidecar JSON holds ``format``, ``kind``, the prepared dataset's ``fingerprint``, sizes, ``item_raw_ids``
(index = item id), the ``causal`` flags, what the source adds to ``meta``, the source checkpoint and the data
directory. :func:`load_cf_embeddings` refuses an export made from another dataset.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from darec import __version__
from darec.atomic import atomic_path, atomic_write_text
from darec.data.dataset import PreparedData
from darec.errors import ConfigError, DataError, FingerprintError
from darec.modules.base import checkpoint_model_class

FORMAT = "darec-cf-embeddings"
FORMAT_VERSION = 1


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside an export: ``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def _safetensors_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


@dataclass
class CFExport:
    """What a CF source gives for its export (:meth:`~darec.modules.base.RecModule.cf_export`).

    ``item_emb`` [num_items + 1, d]: one vector per item id (rows of items without training interactions are
    zeroed on export). ``user_emb`` [num_users + 1, d]: an optional, non-causal user table. ``tensors``: further
    tensors stored beside them (names must not clash with the standard ones). ``meta``: JSON-able facts for the
    sidecar; ``meta["causal"]["user_states"]`` names how causal per-position user states are rebuilt (None: the
    source has none, and DARec's user vector is then the running mean of its item vectors).
    """

    kind: str
    item_emb: torch.Tensor
    user_emb: torch.Tensor | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


STANDARD_TENSORS = ("item_emb", "has_cf", "user_emb", "user_has_cf")


@dataclass
class CFEmbeddings:
    """A loaded export; see the module docstring for the meaning of each field."""

    kind: str
    item_emb: torch.Tensor
    has_cf: torch.Tensor
    meta: dict[str, Any]
    path: Path
    user_emb: torch.Tensor | None = None
    user_has_cf: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def causal_user_states(self) -> str | None:
        """How causal per-position user states are rebuilt from this export (None: it has none)."""
        return self.meta["causal"]["user_states"]


def items_with_training_interactions(data: PreparedData, num_items: int) -> torch.Tensor:
    """``has_cf`` [num_items + 1]: True where the item has at least one training interaction (row 0 False)."""
    counts = torch.as_tensor(data.train_item_counts()[: num_items + 1])
    has = counts > 0
    has[0] = False
    return has


def export_module(
    module: torch.nn.Module,
    data: PreparedData,
    out: str | os.PathLike,
    include_user_emb: bool = False,
    source_checkpoint: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Export any CF source (a model implementing ``cf_export``) trained on ``data``.

    ``data`` must be the prepared dataset the model was trained on (checked by fingerprint). ``meta``: further
    JSON-able facts for the sidecar (for example ``cross_fit``, read by ``injection.sasrec_folds``).
    Returns the safetensors path; the sidecar is :func:`sidecar_path` of it.
    """
    from safetensors.torch import save_file

    fp = getattr(module, "data_fingerprint", "")
    if fp:
        data.check_fingerprint(fp, "this model")
    num_items, num_users = int(module.num_items), int(module.num_users)
    if num_items != data.num_items or num_users != data.num_users:
        raise DataError(f"model has {num_items} items/{num_users} users, {data.path} has {data.num_items}/{data.num_users}")
    has_cf = items_with_training_interactions(data, num_items)
    cf_export = getattr(module, "cf_export", None)
    if cf_export is None:
        raise ConfigError(f"cannot export embeddings from {type(module).__name__}: it is not a RecModule CF source")
    with torch.no_grad():
        got: CFExport = cf_export(data, has_cf, include_user_emb)
    item = got.item_emb.detach().cpu().float().clone()
    if item.shape[0] != num_items + 1:
        raise ConfigError(f"{type(module).__name__}.cf_export gave {item.shape[0]} item rows, expected {num_items + 1}")
    item[~has_cf] = 0.0
    clash = sorted(set(got.tensors) & set(STANDARD_TENSORS))
    if clash:
        raise ConfigError(f"{type(module).__name__}.cf_export: extra tensors {clash} clash with the standard names")
    tensors: dict[str, torch.Tensor] = {"has_cf": has_cf, "item_emb": item.contiguous(),
                                        **{k: v.detach().cpu().contiguous() for k, v in got.tensors.items()}}
    causal = {"item_emb": True, "user_emb": None, "user_states": None, **got.meta.get("causal", {})}
    if got.user_emb is not None and include_user_emb:
        user_has = torch.as_tensor(data.train.lengths[: num_users + 1] > 0)
        user = got.user_emb.detach().cpu().float().clone()
        user[~user_has] = 0.0
        tensors.update({"user_emb": user.contiguous(), "user_has_cf": user_has})
        causal["user_emb"] = False
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": got.kind,
        "fingerprint": data.fingerprint,
        "num_items": num_items,
        "num_users": num_users,
        "dim": int(item.shape[1]),
        "num_items_with_cf": int(has_cf.sum()),
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        **{k: v for k, v in got.meta.items() if k != "causal"},
        "causal": causal,
        "item_raw_ids": data.item_raw_ids[: num_items + 1],
        "user_raw_ids": data.user_raw_ids if "user_emb" in tensors else None,
        "source_checkpoint": source_checkpoint,
        "data_dir": str(data.path),
        "darec_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    path = _safetensors_path(out)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "kind": got.kind, "fingerprint": data.fingerprint})
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1))
    return path


def best_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a file; for a run directory (``logs/<name>/version_N``, or its ``checkpoints/``),
    the one ``best*.ckpt`` that ``darec fit`` kept in it (the shipped configs name the best checkpoint so)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"{path}: no such checkpoint or run directory")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best*.ckpt"))
    if len(best) != 1:
        found = ", ".join(p.name for p in sorted(folder.glob("*.ckpt"))) or "no .ckpt files"
        raise ConfigError(f"{folder}: expected exactly one best*.ckpt, found {found}; pass --ckpt the checkpoint file")
    return best[0]


def export_embeddings(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    include_user_emb: bool = False,
) -> Path:
    """Load a CF source's checkpoint and export it (see :func:`export_module`).

    ``data_dir`` defaults to the datamodule's ``data_dir`` recorded in the checkpoint.
    """
    ckpt_path = best_checkpoint(Path(ckpt_path))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cls = checkpoint_model_class(ckpt, str(ckpt_path))
    if data_dir is None:
        data_dir = ckpt.get("datamodule_hyper_parameters", {}).get("data_dir")
        if data_dir is None:
            raise ConfigError(f"{ckpt_path} does not record its data directory; pass --data DIR")
    data = PreparedData(data_dir)
    module = cls.load_from_checkpoint(ckpt_path, map_location="cpu")
    module.eval()
    return export_module(module, data, out, include_user_emb, source_checkpoint=str(ckpt_path))


def require_exports(paths: list[str | os.PathLike]) -> None:
    """Raise one :class:`ConfigError` that names every export of ``paths`` missing its ``.safetensors`` file or its
    JSON sidecar, and how to write it."""
    missing = [p for p in map(_safetensors_path, paths) if not p.is_file() or not sidecar_path(p).is_file()]
    if missing:
        lines = "; ".join(f"darec export-embeddings --ckpt <its run directory or checkpoint> --out {p}" for p in missing)
        raise ConfigError(f"CF export not found: {', '.join(map(str, missing))} (each needs its .safetensors file and "
                          f".json sidecar). Train each CF model (darec fit --config ...) and export it: {lines}")


def load_cf_embeddings(path: str | os.PathLike, expected_fingerprint: str | None) -> CFEmbeddings:
    """Load an export. Raises :class:`FingerprintError` when it was built from another dataset.

    ``expected_fingerprint`` is the fingerprint of the prepared dataset it will be used with
    (``None`` skips the check, for inspection only).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    require_exports([path])
    path = _safetensors_path(path)
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{side}: not a {FORMAT} v{FORMAT_VERSION} sidecar")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("fingerprint") != meta["fingerprint"]:
        raise FingerprintError(f"{path} and {side} disagree on the dataset fingerprint; re-export")
    if expected_fingerprint is not None and expected_fingerprint != meta["fingerprint"]:
        raise FingerprintError(
            f"{path} was exported from a different prepared dataset (fingerprint "
            f"{meta['fingerprint'][:12]}…, expected {expected_fingerprint[:12]}…); re-export it from this dataset"
        )
    t = load_file(str(path))
    extra = {k: v for k, v in t.items() if k not in STANDARD_TENSORS}
    return CFEmbeddings(
        kind=meta["kind"], item_emb=t["item_emb"], has_cf=t["has_cf"], meta=meta, path=path,
        user_emb=t.get("user_emb"), user_has_cf=t.get("user_has_cf"), extra=extra,
    )
