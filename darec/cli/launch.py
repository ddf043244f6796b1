"""Entry script for launchers that start the processes themselves: ``fabric run`` and ``torchrun``.

    fabric run --accelerator cpu --devices 2 --strategy ddp darec/cli/launch.py fit --config configs/sasrec_ml100k.yaml
    torchrun --nproc-per-node 2 darec/cli/launch.py test --config configs/pop_ml100k.yaml --trainer.strategy ddp

``fabric run`` (the successor of ``lightning run model``) records its choices in ``LT_*`` environment
variables; this script turns them into the matching ``--trainer.*`` arguments, unless given explicitly,
so the Trainer joins the launched world instead of starting processes of its own. Multi-node:
``fabric run --num-nodes 2 --node-rank R --main-address HOST --main-port PORT ...`` on every node.
"""

from __future__ import annotations

import os
import sys

_FROM_ENV = {
    "LT_ACCELERATOR": "--trainer.accelerator",
    "LT_STRATEGY": "--trainer.strategy",
    "LT_DEVICES": "--trainer.devices",
    "LT_NUM_NODES": "--trainer.num_nodes",
    "LT_PRECISION": "--trainer.precision",
}


def launcher_args(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` plus the ``--trainer.*`` values a launcher recorded, for those not already given."""
    env = dict(os.environ if env is None else env)
    out = list(argv)
    if env.get("LT_CLI_USED") != "1" or not out or out[0] not in ("fit", "validate", "test", "predict"):
        return out
    for var, flag in _FROM_ENV.items():
        value = env.get(var)
        if value and not any(a == flag or a.startswith(flag + "=") for a in out):
            out += [flag, value]
    return out


def main() -> int:
    from darec.cli.main import main as darec_main

    return darec_main(launcher_args(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
