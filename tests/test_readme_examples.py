"""Every ``<!-- example: ... -->`` code block in README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", README, flags=re.S))


def test_the_documented_examples_are_there():
    assert {"adapter", "cf_source", "family", "reader", "recommend"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_runs(name):
    exec(compile(EXAMPLES[name], f"README.md:{name}", "exec"), {"__name__": f"readme_{name}"})
