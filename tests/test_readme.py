"""README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn


def test_readme_python_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    plain = namespace["plain"]
    assert isinstance(plain, nn.Module) and type(plain).__name__ == "VisionTransformer"
