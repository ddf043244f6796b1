"""How much better SASRec predicts a training target than a held-out one: the gap DARec's CF inputs carry.

DARec feeds SASRec's causal user vector ``u_t`` and item vectors ``c_j`` into the language model, at training time
for the training targets and at evaluation time for the validation and test targets. SASRec was fitted on the
training targets, so if it predicts them much better than held-out ones, the CF inputs are more informative while
DARec trains than when it is evaluated (the stacking problem: a second-stage model trained on a first-stage model's
in-sample outputs learns to trust them too much).

For each SASRec export of ``benchmarks/darec_ml100k.py`` (seeds 0, 1, 2; history length 50; the shipped patience),
this scores every user's

- last training item, from the training items before it (a target SASRec trained on);
- middle training item, from the items before it (also trained on, further from the held-out ones);
- validation item, from the whole training sequence (held out; the one model selection reads),

with SASRec's own score ``<u_t, c_j>``, full ranking over the catalogue, the history masked. It prints NDCG@10 per seed
and the paired difference (last training target minus validation) with a bootstrap CI over users.

    python benchmarks/sasrec_fit_gap.py [--seeds 0 1 2] [--work-dir benchmarks/_work/darec_ml100k]

Writes ``benchmarks/sasrec_fit_gap.json`` (machine, command, commit). Needs the SASRec runs of ``darec_ml100k.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, machine, paired_bootstrap  # noqa: E402
from runs import ndcg10, run_dir, sasrec_name, shipped_sasrec_patience  # noqa: E402

TARGETS = ("last training item", "middle training item", "validation item")


@torch.no_grad()
def sasrec_ranks(encoder: Any, items: torch.Tensor, prefixes: list[np.ndarray], targets: np.ndarray,
                 batch: int = 256) -> np.ndarray:
    """0-based rank of each target under SASRec's score after its prefix, the prefix's items masked."""
    length = encoder.cfg.max_len
    out = []
    for i in range(0, len(prefixes), batch):
        chunk = prefixes[i : i + batch]
        x = torch.zeros(len(chunk), length, dtype=torch.long)
        for k, p in enumerate(chunk):
            p = np.asarray(p[-length:], dtype=np.int64)
            x[k, length - len(p) :] = torch.from_numpy(p)
        scores = encoder.last_state(x) @ items.T
        scores[:, 0] = float("-inf")
        for k, p in enumerate(chunk):
            t = int(targets[i + k])
            seen = torch.from_numpy(np.setdiff1d(np.asarray(p, dtype=np.int64), [t]))
            scores[k, seen] = float("-inf")
            out.append(int((scores[k] > scores[k, t]).sum()))
    return np.asarray(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sasrec-len", type=int, default=50)
    p.add_argument("--sasrec-patience", type=int, default=None, help="default: the shipped SASRec config's")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from darec.data.dataset import PreparedData
    from darec.modules.cf import load_cf_embeddings
    from darec.modules.sasrec import SasrecUserEncoder

    data = PreparedData(a.data_dir)
    seqs = data.train_sequences()
    val = data.eval_split("validation")
    by_user = dict(zip(val.users.tolist(), val.targets.tolist()))
    users = [u for u in range(1, data.num_users + 1) if u in by_user and len(seqs[u - 1]) >= 2]
    cases = {
        TARGETS[0]: ([seqs[u - 1][:-1] for u in users], np.array([seqs[u - 1][-1] for u in users])),
        TARGETS[1]: ([seqs[u - 1][: len(seqs[u - 1]) // 2] for u in users],
                     np.array([seqs[u - 1][len(seqs[u - 1]) // 2] for u in users])),
        TARGETS[2]: ([seqs[u - 1] for u in users], np.array([by_user[u] for u in users])),
    }
    pat = a.sasrec_patience if a.sasrec_patience is not None else shipped_sasrec_patience()
    per_user: dict[str, list[np.ndarray]] = {t: [] for t in TARGETS}
    for s in a.seeds:
        path = run_dir(Path(a.work_dir), sasrec_name(a.sasrec_len, s, pat)) / "cf" / "sasrec.safetensors"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing; run benchmarks/darec_ml100k.py first (it trains the SASRec runs)")
        cf = load_cf_embeddings(path, data.fingerprint)
        encoder, items = SasrecUserEncoder.from_cf(cf).eval(), cf.item_emb.float()
        for t, (prefixes, targets) in cases.items():
            per_user[t].append(ndcg10(sasrec_ranks(encoder, items, prefixes, targets)))
        print(f"seed {s}: " + ", ".join(f"{t} {per_user[t][-1].mean():.4f}" for t in TARGETS), flush=True)
    rows = {t: {"ndcg@10_per_seed": [float(x.mean()) for x in v], "ndcg@10_mean": float(np.mean([x.mean() for x in v]))}
            for t, v in per_user.items()}
    gap = paired_bootstrap(np.mean(per_user[TARGETS[0]], 0) - np.mean(per_user[TARGETS[2]], 0))
    ratio = rows[TARGETS[0]]["ndcg@10_mean"] / rows[TARGETS[2]]["ndcg@10_mean"]
    result = {"benchmark": "SASRec on training against held-out targets (ml-100k)", "machine": machine(),
              "command": command("benchmarks/sasrec_fit_gap.py", argv), "git": git_commit((a.out,)),
              "seeds": a.seeds, "sasrec_len": a.sasrec_len, "sasrec_patience": pat, "users": len(users),
              "targets": rows, "last_training_minus_validation": gap, "last_training_over_validation": ratio}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'target':<22}{'NDCG@10 (mean over seeds)':>28}")
    for t, r in rows.items():
        print(f"{t:<22}{r['ndcg@10_mean']:>28.4f}")
    print(f"last training item - validation item: {gap['mean']:+.4f} [{gap['bootstrap_95ci'][0]:+.4f}, "
          f"{gap['bootstrap_95ci'][1]:+.4f}] over {gap['users']} users ({ratio:.2f}x)")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
