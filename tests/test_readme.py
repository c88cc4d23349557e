"""The README's Python tour runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tour writes runs/ into the working directory
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        scope: dict = {}
        exec(compile(code, str(README), "exec"), scope)
    assert (tmp_path / "runs" / "mine" / "metrics.jsonl").exists()
    assert scope["history"][-1]["round"] == 100
    assert (tmp_path / "runs" / "qs2" / "comparison.png").exists() and len(scope["rows"]) == 2
