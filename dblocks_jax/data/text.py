"""Character corpora for the language models: text8 and the Python docs.

Both are read as text over the text8 alphabet: space and a-z, 27 symbols,
encoded as 0 (space) and 1..26 (a..z). `normalize` maps any text onto it:
lowercase, every other character to a space, runs of spaces collapsed to
one.

* text8 (`text8.zip`, 100,000,000 characters, already normalised), read from
  a local file and split as MD4 does: the first 90M characters train, the
  next 5M validate, the last 5M test.
* The Python docs: the English reStructuredText sources that the Debian
  package `python3.11-doc` installs under
  `/usr/share/doc/python3.11/html/_sources` (497 `*.rst.txt` files, about
  11 MB), offline. Each file is normalised and assigned whole to a split
  (`assign_splits`: 90/5/5 of the characters, to within one file, the same
  on every machine), so no document is cut between splits; each split is
  its files, sorted by path, joined by one space.
"""

import dataclasses
import hashlib
import os
import re
import zipfile

import numpy as np
from absl import logging

from dblocks_jax.errors import DataError

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET)  # 27; a masked model adds its [MASK] token.
SPLITS = ("train", "validation", "test")
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_SPLIT = (90_000_000, 95_000_000)  # MD4's boundaries, in characters.
PYDOCS_ROOT = "/usr/share/doc/python3.11"
PYDOCS_SOURCES = os.path.join("html", "_sources")
PYDOCS_FIX = (
  "install it with `sudo apt-get install python3.11-doc`, or point data.dir"
  " at a folder that holds html/_sources/**/*.rst.txt"
)
_OUTSIDE = re.compile(f"[^{ALPHABET}]+")
_SPACES = re.compile(" {2,}")
_LOOKUP = np.full(256, 255, np.uint8)
_LOOKUP[np.frombuffer(ALPHABET.encode(), np.uint8)] = np.arange(VOCAB_SIZE)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The three splits of a corpus as token ids, and what normalising did.

  Attributes:
    splits: split name -> ids, `[characters]` uint8 in [0, 27).
    source: where it was read from.
    mapped: characters outside the alphabet that became spaces (before runs
      of spaces were collapsed).
  """

  splits: dict[str, np.ndarray]
  source: str
  mapped: int


def normalize(text: str) -> tuple[str, int]:
  """Maps `text` onto the alphabet; returns it and how many characters
  outside the alphabet (after lowercasing) became spaces."""
  text = text.lower()
  mapped = sum(len(m) for m in _OUTSIDE.findall(text))
  text = _SPACES.sub(" ", _OUTSIDE.sub(" ", text))
  return text, mapped


def encode(text: str) -> np.ndarray:
  """ids: [len(text)] uint8. `text` must be normalised already."""
  ids = _LOOKUP[np.frombuffer(text.encode("latin-1", "replace"), np.uint8)]
  if np.any(ids == 255):
    raise ValueError("encode() takes normalised text; call normalize() first.")
  return ids


def decode(ids) -> str:
  """ids: [n] ints in [0, 27) -> the text."""
  return "".join(ALPHABET[i] for i in np.asarray(ids).reshape(-1))


def chunk(ids: np.ndarray, length: int, *, name: str) -> np.ndarray:
  """The split as non-overlapping sequences: [len(ids) // length, length]
  (the tail shorter than `length` is dropped).

  Raises:
    DataError: the split is shorter than one sequence (names `name` and the
      field to change).
  """
  count = len(ids) // length
  if count < 1:
    raise DataError(
      f"the {name} split has {len(ids)} characters, fewer than one sequence"
      f" of data.seq_len={length}; lower data.seq_len or use a larger"
      " corpus."
    )
  return ids[: count * length].reshape(count, length)


def load_text8(path: str) -> Corpus:
  """text8 from `path` (`text8.zip`, or the unzipped `text8` file)."""
  if not os.path.isfile(path):
    raise DataError(
      f"text8 not found at {path}; download {TEXT8_URL} and set data.dir"
      " to the folder that holds text8.zip."
    )
  try:
    if path.endswith(".zip"):
      with zipfile.ZipFile(path) as archive:
        raw = archive.read(archive.namelist()[0])
    else:
      with open(path, "rb") as f:
        raw = f.read()
  except (OSError, zipfile.BadZipFile, IndexError, EOFError, ValueError) as e:
    raise DataError(
      f"{path} is damaged ({e}); download {TEXT8_URL} again."
    ) from None
  text, mapped = normalize(raw.decode("latin-1"))
  ids = encode(text)
  first, second = (
    TEXT8_SPLIT
    if len(ids) == 100_000_000
    else (len(ids) * 90 // 100, len(ids) * 95 // 100)
  )
  splits = dict(zip(SPLITS, np.split(ids, [first, second]), strict=True))
  return _report(Corpus(splits, path, mapped))


def pydocs_files(root: str = PYDOCS_ROOT) -> list[str]:
  """The reST sources under `root`, as paths relative to its sources
  folder, sorted."""
  sources = os.path.join(root, PYDOCS_SOURCES)
  if not os.path.isdir(sources):
    raise DataError(f"the Python docs are not in {root}; {PYDOCS_FIX}.")
  found = []
  for folder, _, names in os.walk(sources):
    for name in names:
      if name.endswith(".rst.txt"):
        full = os.path.join(folder, name)
        found.append(os.path.relpath(full, sources))
  if not found:
    raise DataError(f"no *.rst.txt files under {sources}; {PYDOCS_FIX}.")
  return sorted(found)


def assign_splits(sizes: dict[str, int]) -> dict[str, str]:
  """Document -> split, keeping documents whole: in an order fixed by a
  hash of their names (stable across machines and Python versions), the
  documents whose middle character falls within the first 5% of the
  characters go to test, those within the next 5% to validation, the rest
  to train.

  Args:
    sizes: document name -> its length in characters.
  """
  order = sorted(sizes, key=lambda name: hashlib.sha256(name.encode()).digest())
  total = sum(sizes.values())
  assigned, start = {}, 0
  for name in order:
    share = (start + sizes[name] / 2) / max(total, 1)  # Its midpoint.
    split = "test" if share < 0.05 else "validation" if share < 0.1 else "train"
    assigned[name] = split
    start += sizes[name]
  return assigned


def read_pydocs(root: str = PYDOCS_ROOT) -> dict[str, str]:
  """The raw reST sources under `root`: relative path -> text."""
  sources = os.path.join(root, PYDOCS_SOURCES)
  documents = {}
  for relative in pydocs_files(root):
    path = os.path.join(sources, relative)
    try:
      with open(path, encoding="utf-8", errors="replace") as f:
        documents[relative] = f.read()
    except OSError as e:
      raise DataError(f"{path} cannot be read ({e}); {PYDOCS_FIX}.") from None
  return documents


def pydocs_splits(root: str = PYDOCS_ROOT) -> dict[str, list[str]]:
  """The raw documents of each split, sorted by path, split as
  `load_pydocs` splits them (for a tokenizer that keeps the full text)."""
  raw = read_pydocs(root)
  normalized = {k: normalize(v)[0].strip() for k, v in raw.items()}
  kept = {k: v for k, v in normalized.items() if v}
  assigned = assign_splits({k: len(v) for k, v in kept.items()})
  splits = {
    split: [raw[k] for k in sorted(kept) if assigned[k] == split]
    for split in SPLITS
  }
  _check_splits(splits, root)
  return splits


def load_pydocs(root: str = PYDOCS_ROOT) -> Corpus:
  """The Python docs corpus (see the module docstring)."""
  documents, mapped = {}, 0
  for relative, raw in read_pydocs(root).items():
    text, count = normalize(raw)
    mapped += count
    if text.strip():
      documents[relative] = text.strip()
  assigned = assign_splits({k: len(v) for k, v in documents.items()})
  splits = {
    split: encode(
      " ".join(documents[k] for k in sorted(documents) if assigned[k] == split)
    )
    for split in SPLITS
  }
  _check_splits(splits, root)
  return _report(Corpus(splits, root, mapped))


def _check_splits(splits, root: str) -> None:
  for split, content in splits.items():
    if not len(content):
      raise DataError(
        f"the Python docs in {root} leave the {split} split empty (too few"
        f" files); {PYDOCS_FIX}."
      )


def _report(corpus: Corpus) -> Corpus:
  sizes = ", ".join(f"{k} {len(v):,}" for k, v in corpus.splits.items())
  logging.info(
    "Corpus %s: %s characters; %d characters outside a-z and space became"
    " spaces.",
    corpus.source,
    sizes,
    corpus.mapped,
  )
  return corpus
