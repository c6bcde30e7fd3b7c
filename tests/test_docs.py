"""Every Python code block of the README and docs/library.md runs.

A block runs alone, in a fresh namespace, as a reader would paste it into
a new session; a block whose first line is a comment starting with
`# Continues` runs after the blocks before it, in their namespace. A line
`STEPS = <n>` and every `total_steps=<n>` are shortened to a few steps (the
documents' figures come from the full runs; here the code must only work).
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", os.path.join("docs", "library.md"))
CONTINUES = "# Continues"


def python_blocks(path: str) -> list[str]:
  with open(os.path.join(ROOT, path)) as f:
    text = f.read()
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def shortened(block: str) -> str:
  code = re.sub(r"^STEPS = \d+", "STEPS = 40", block, flags=re.M)
  return re.sub(r"total_steps=\d+", "total_steps=40", code)


def sessions(path: str) -> list[list[str]]:
  """The document's blocks grouped by session: a block and the `#
  Continues` blocks after it."""
  groups = []
  for block in python_blocks(path):
    if block.startswith(CONTINUES):
      assert groups, f"{path}: the first block continues?"
      groups[-1].append(block)
    else:
      groups.append([block])
  return groups


# The library example's first session trains two models on the 8 fake CPU
# devices, whose all-reduces crawl on 2 busy cores (minutes): the slow tier.
SLOW = {(os.path.join("docs", "library.md"), 0)}
CASES = [
  pytest.param(
    document, i, marks=[pytest.mark.slow] if (document, i) in SLOW else []
  )
  for document in DOCUMENTS
  for i in range(len(sessions(document)))
]


def test_each_document_has_python_blocks():
  for document in DOCUMENTS:
    assert python_blocks(document), f"{document} has no python code block"


@pytest.mark.parametrize("document, session", CASES)
def test_code_blocks_run(document, session, monkeypatch, capsys):
  """One session's blocks run in one namespace, as a reader would paste
  them (the sessions of a document are independent tests)."""
  monkeypatch.chdir(ROOT)
  namespace = {"__name__": "__main__"}
  blocks = sessions(document)[session]
  first = sum(len(g) for g in sessions(document)[:session])
  for i, block in enumerate(blocks):
    where = f"{document}, block {first + i + 1}"
    exec(compile(shortened(block), where, "exec"), namespace)
  if any("print(" in block for block in blocks):
    assert capsys.readouterr().out  # What the example prints, it prints.
