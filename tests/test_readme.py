"""The README's example runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(capsys):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "README.md has no python example"
  for code in blocks:
    exec(compile(code, str(README), "exec"), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  assert "reconstruction error" in out and "mean log p(v):" in out
