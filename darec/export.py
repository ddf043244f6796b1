"""Export collaborative-filtering embeddings (SASRec, LightGCN) for DARec's knowledge injection.

An export is two files side by side: ``NAME.safetensors`` and the sidecar ``NAME.json``.

Tensors (row index = internal id; row 0 is padding and all-zero):

- ``item_emb`` float32 ``[num_items + 1, d]``: SASRec's tied item table, or LightGCN's propagated
  item representations. Items with no training interaction get a zero row and ``has_cf = False``.
- ``has_cf`` bool ``[num_items + 1]``: the item has at least one training interaction.
- LightGCN, with ``include_user_emb``: ``user_emb`` ``[num_users + 1, d]`` and ``user_has_cf``. A
  LightGCN user vector summarises the user's *whole* training history, so it is **not causal**
  (the sidecar says so) and must never feed a training position; it is for analysis only.
- SASRec: ``sasrec.*``, the full encoder weights (with the untrained rows of ``has_cf = False``
  items zeroed), so that :meth:`SasrecUserEncoder.from_export` rebuilds the encoder and
  :meth:`~darec.modules.sasrec.SasrecEncoder.causal_user_states` gives per-position user states
  in which position ``t`` sees only items ``≤ t``.

The sidecar JSON holds ``format``, ``kind``, the prepared dataset's ``fingerprint``, sizes,
``item_raw_ids`` (index = item id), the ``causal`` flags, the SASRec config, the source checkpoint
and the data directory. :func:`load_cf_embeddings` refuses an export made from another dataset.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darec import __version__
from darec.atomic import atomic_path, atomic_write_text
from darec.data.prepared import PreparedData
from darec.errors import ConfigError, DataError, FingerprintError
from darec.modules.base import checkpoint_model_class
from darec.modules.sasrec import SasrecConfig, SasrecEncoder

FORMAT = "darec-cf-embeddings"
FORMAT_VERSION = 1
SASREC_PREFIX = "sasrec."


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside an export: ``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def _safetensors_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


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
    def has_causal_user_states(self) -> bool:
        return self.meta["causal"]["user_states"] is not None

    def user_encoder(self) -> "SasrecUserEncoder":
        """The causal SASRec user encoder (SASRec exports only), in eval mode."""
        if self.kind != "sasrec":
            raise ConfigError(f"{self.path}: a {self.kind} export has no causal user encoder")
        return SasrecUserEncoder._from_tensors(self.meta, self.extra)


class SasrecUserEncoder(SasrecEncoder):
    """A SASRec encoder rebuilt from an export, for causal per-position user states.

    It starts frozen: no gradients and every dropout probability 0, so it computes the same function in
    train and eval mode and simply follows its parent's mode. :meth:`unfreeze` makes it trainable for joint
    fine-tuning and restores its dropout.
    """

    def _set_dropout(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = self.cfg.hidden_dropout if on else 0.0
            if isinstance(getattr(m, "attn_dropout", None), float):
                m.attn_dropout = self.cfg.attn_dropout if on else 0.0

    def freeze(self) -> "SasrecUserEncoder":
        """No gradients, no dropout."""
        self.requires_grad_(False)
        self._set_dropout(False)
        return self

    def unfreeze(self) -> "SasrecUserEncoder":
        """Make the weights trainable and restore the dropout of the SASRec they came from."""
        self.requires_grad_(True)
        self._set_dropout(True)
        return self

    @classmethod
    def from_export(cls, path: str | os.PathLike, expected_fingerprint: str | None) -> "SasrecUserEncoder":
        return load_cf_embeddings(path, expected_fingerprint).user_encoder()

    @classmethod
    def _from_tensors(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "SasrecUserEncoder":
        enc = cls(SasrecConfig(**meta["sasrec"]["config"]))
        n = len(SASREC_PREFIX)
        enc.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(SASREC_PREFIX)})
        return enc.freeze()


def _has_cf(data: PreparedData, num_items: int) -> torch.Tensor:
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
) -> Path:
    """Export a trained :class:`~darec.modules.sasrec.SASRec` or :class:`~darec.modules.lightgcn.LightGCN`.

    ``data`` must be the prepared dataset the model was trained on (checked by fingerprint).
    Returns the safetensors path; the sidecar is :func:`sidecar_path` of it.
    """
    from safetensors.torch import save_file

    from darec.data.windows import normalized_adjacency
    from darec.modules.lightgcn import LightGCN
    from darec.modules.sasrec import SASRec

    fp = getattr(module, "data_fingerprint", "")
    if fp:
        data.check_fingerprint(fp, "this model")
    num_items, num_users = int(module.num_items), int(module.num_users)
    if num_items != data.num_items or num_users != data.num_users:
        raise DataError(f"model has {num_items} items/{num_users} users, {data.path} has {data.num_items}/{data.num_users}")
    has_cf = _has_cf(data, num_items)
    tensors: dict[str, torch.Tensor] = {"has_cf": has_cf}
    meta: dict[str, Any] = {"causal": {"item_emb": True, "user_emb": None, "user_states": None}}
    with torch.no_grad():
        if isinstance(module, SASRec):
            kind = "sasrec"
            state = {k: v.detach().cpu().clone().float() for k, v in module.encoder.state_dict().items()}
            state["item_embedding.weight"][~has_cf] = 0.0
            item = state["item_embedding.weight"].clone()
            tensors.update({SASREC_PREFIX + k: v.contiguous() for k, v in state.items()})
            meta["causal"]["user_states"] = "sasrec_encoder"
            meta["sasrec"] = {
                "config": module.config.to_dict(),
                "tensor_prefix": SASREC_PREFIX,
                "usage": "darec.export.SasrecUserEncoder.from_export(path, fingerprint).causal_user_states(item_seq)",
            }
        elif isinstance(module, LightGCN):
            kind = "lightgcn"
            if not module.has_graph:
                module.set_graph(normalized_adjacency(data.train, num_users, num_items))
            module.refresh_representations()
            item = module.item_rep.detach().cpu().float().clone()
            if include_user_emb:
                user_has = torch.as_tensor(data.train.lengths[: num_users + 1] > 0)
                user = module.user_rep.detach().cpu().float().clone()
                user[~user_has] = 0.0
                tensors.update({"user_emb": user, "user_has_cf": user_has})
                meta["causal"]["user_emb"] = False
        else:
            raise ConfigError(f"cannot export embeddings from {type(module).__name__}; expected SASRec or LightGCN")
    item[~has_cf] = 0.0
    tensors["item_emb"] = item.contiguous()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": data.fingerprint,
        "num_items": num_items,
        "num_users": num_users,
        "dim": int(item.shape[1]),
        "num_items_with_cf": int(has_cf.sum()),
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        **meta,
        "item_raw_ids": data.item_raw_ids[: num_items + 1],
        "user_raw_ids": data.user_raw_ids if "user_emb" in tensors else None,
        "source_checkpoint": source_checkpoint,
        "data_dir": str(data.path),
        "darec_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = _safetensors_path(out)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "kind": kind, "fingerprint": data.fingerprint})
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=1))
    return path


def export_embeddings(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    include_user_emb: bool = False,
) -> Path:
    """Load a SASRec/LightGCN checkpoint and export it (see :func:`export_module`).

    ``data_dir`` defaults to the datamodule's ``data_dir`` recorded in the checkpoint.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"{ckpt_path}: no such checkpoint")
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


def load_cf_embeddings(path: str | os.PathLike, expected_fingerprint: str | None) -> CFEmbeddings:
    """Load an export. Raises :class:`FingerprintError` when it was built from another dataset.

    ``expected_fingerprint`` is the fingerprint of the prepared dataset it will be used with
    (``None`` skips the check, for inspection only).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = _safetensors_path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise ConfigError(f"{path}: export not found (need {path.name} and {side.name})")
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
    extra = {k: v for k, v in t.items() if k not in ("item_emb", "has_cf", "user_emb", "user_has_cf")}
    return CFEmbeddings(
        kind=meta["kind"], item_emb=t["item_emb"], has_cf=t["has_cf"], meta=meta, path=path,
        user_emb=t.get("user_emb"), user_has_cf=t.get("user_has_cf"), extra=extra,
    )
