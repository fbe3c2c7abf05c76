"""README's "Library" section runs as it stands (load → generate → cache → patch)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_library_example_runs(monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Library\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(code, "README.md#Library", "exec"), scope)  # noqa: S102 - our own README
    assert scope["beta"].shape[0] == 2 and scope["text"].startswith("The cat")
