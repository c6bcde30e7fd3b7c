"""The character corpora: the text8 alphabet, text8 and the Python docs."""

import os
import zipfile

import numpy as np
import pytest

from dblocks_jax.data import text
from dblocks_jax.errors import DataError


def test_normalize_maps_onto_the_alphabet_and_counts():
  normalized, mapped = text.normalize("Hello, World!\n\tThe  END 42")
  assert normalized == "hello world the end "
  # ",", "!", "\n", "\t", "4", "2" became spaces; case folding is free.
  assert mapped == 6


def test_encode_decode_round_trip():
  ids = text.encode("the quick brown fox")
  assert ids.dtype == np.uint8 and ids.max() < text.VOCAB_SIZE == 27
  assert ids[0] == 20 and ids[3] == 0  # "t", " "
  assert text.decode(ids) == "the quick brown fox"
  with pytest.raises(ValueError, match="normalize"):
    text.encode("Not normalised.")


def test_chunk_drops_the_tail_and_refuses_a_short_split():
  ids = np.arange(10, dtype=np.uint8)
  np.testing.assert_array_equal(
    text.chunk(ids, 4, name="train"),
    [
      [0, 1, 2, 3],
      [4, 5, 6, 7],
    ],
  )
  with pytest.raises(DataError) as error:
    text.chunk(ids, 11, name="test")
  message = str(error.value)
  assert "test split has 10 characters" in message
  assert "data.seq_len=11" in message


def _text8_zip(path, body):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("text8", body)


def test_text8_is_read_from_its_zip_and_split_as_md4_does(tmp_path):
  body = ("anarchism originated as a term of abuse " * 25)[:1000]
  _text8_zip(tmp_path / "text8.zip", body)
  corpus = text.load_text8(str(tmp_path / "text8.zip"))
  sizes = [len(corpus.splits[s]) for s in text.SPLITS]
  assert sizes == [900, 50, 50]
  joined = np.concatenate([corpus.splits[s] for s in text.SPLITS])
  assert text.decode(joined) == body
  assert corpus.mapped == 0


def test_text8_missing_or_damaged_is_one_line(tmp_path):
  with pytest.raises(DataError, match="mattmahoney.net/dc/text8.zip"):
    text.load_text8(str(tmp_path / "text8.zip"))
  _text8_zip(tmp_path / "text8.zip", "some text " * 100)
  data = (tmp_path / "text8.zip").read_bytes()
  (tmp_path / "text8.zip").write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError) as error:
    text.load_text8(str(tmp_path / "text8.zip"))
  assert "is damaged" in str(error.value) and "\n" not in str(error.value)


def _docs_tree(root, count=60):
  sources = root / "html" / "_sources"
  rng = np.random.default_rng(0)
  words = ["python", "list", "Dict", "yield", "__init__", "os.path", "ok"]
  for i in range(count):
    folder = sources / ("library" if i % 2 else "reference")
    folder.mkdir(parents=True, exist_ok=True)
    body = " ".join(rng.choice(words, size=int(rng.integers(20, 200))))
    (folder / f"doc{i:02d}.rst.txt").write_text(f"Doc {i}\n=====\n\n{body}\n")
  (sources / "ignored.html").write_text("<p>not a source</p>")
  return sources


def test_pydocs_splits_whole_documents_90_5_5(tmp_path):
  sources = _docs_tree(tmp_path)
  corpus = text.load_pydocs(str(tmp_path))
  assert text.load_pydocs(str(tmp_path)).splits.keys() == corpus.splits.keys()
  decoded = {s: text.decode(ids) for s, ids in corpus.splits.items()}
  # Every document lands whole in exactly one split.
  for path in sources.rglob("*.rst.txt"):
    document = text.normalize(path.read_text())[0].strip()
    assert sum(document in decoded[s] for s in text.SPLITS) == 1, path
  total = sum(len(ids) for ids in corpus.splits.values())
  largest = max(
    len(text.normalize(p.read_text())[0]) for p in sources.rglob("*.rst.txt")
  )
  for split, share in (("test", 0.05), ("validation", 0.05)):
    assert abs(len(corpus.splits[split]) - share * total) <= largest
  # The same on every run (the order is a hash of the names).
  again = text.load_pydocs(str(tmp_path))
  for split in text.SPLITS:
    np.testing.assert_array_equal(again.splits[split], corpus.splits[split])
  assert corpus.mapped > 0  # "=", "_", "." and newlines became spaces.


def test_pydocs_missing_says_how_to_install_it(tmp_path):
  with pytest.raises(DataError) as error:
    text.load_pydocs(str(tmp_path))
  assert "sudo apt-get install python3.11-doc" in str(error.value)
  assert "data.dir" in str(error.value)


@pytest.mark.skipif(
  not os.path.isdir(os.path.join(text.PYDOCS_ROOT, text.PYDOCS_SOURCES)),
  reason="needs the Debian package python3.11-doc (.ci/run installs it)",
)
def test_the_installed_python_docs():
  corpus = text.load_pydocs()
  sizes = {s: len(ids) for s, ids in corpus.splits.items()}
  total = sum(sizes.values())
  assert total > 8_000_000
  assert 0.87 < sizes["train"] / total < 0.92
  assert 0.03 < sizes["validation"] / total < 0.07
  assert 0.03 < sizes["test"] / total < 0.07
  sample = text.decode(corpus.splits["test"][:5000])
  assert "  " not in sample and set(sample) <= set(text.ALPHABET)
