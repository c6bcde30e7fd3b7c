"""SentencePiece tokenizers for the autoregressive language models.

Two sources, one wrapper (`Tokenizer`):

* `train_bpe`: a byte-fallback BPE trained on a corpus's training split
  (the Python docs), text kept as it is (no normalisation, whitespace and
  newlines preserved, digits split). Training is single-threaded, so the
  same corpus and vocabulary size give the same model on every machine; a
  run writes it to its workdir as `tokenizer.model`.
* `load`: a user-supplied SentencePiece model (LM1B: Llama-2's 32K
  tokenizer, which cannot be bundled).
"""

import io

import numpy as np

from dblocks_jax import errors
from dblocks_jax.errors import DataError

NEWLINE = "\n"


def _sentencepiece():
  return errors.optional_import(
    "sentencepiece", "the language models' tokenizer"
  )


class Tokenizer:
  """A SentencePiece model: text <-> ids.

  Attributes:
    proto: the serialised model (what `save` writes).
    source: where it came from, for messages.
  """

  def __init__(self, proto: bytes, source: str):
    sentencepiece = _sentencepiece()
    self.proto, self.source = proto, source
    self._model = sentencepiece.SentencePieceProcessor(model_proto=proto)

  @property
  def vocab_size(self) -> int:
    return int(self._model.get_piece_size())

  @property
  def bos_id(self) -> int:
    """The BOS id, or -1 when the model has none."""
    return int(self._model.bos_id())

  def encode(self, texts: list[str]) -> list[list[int]]:
    return self._model.encode(list(texts))

  def decode(self, ids) -> str:
    return self._model.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def save(self, path: str) -> str:
    with open(path, "wb") as f:
      f.write(self.proto)
    return path


def train_bpe(texts: list[str], vocab_size: int, *, source: str) -> Tokenizer:
  """A BPE of `vocab_size` pieces trained on `texts` (see the module
  docstring). `source` names the corpus in messages."""
  sentencepiece = _sentencepiece()
  lines = [line for text in texts for line in text.split(NEWLINE) if line]
  if not lines:
    raise DataError(f"{source} holds no text to train a tokenizer on.")
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      vocab_size=vocab_size,
      model_type="bpe",
      byte_fallback=True,
      character_coverage=1.0,
      split_digits=True,
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      normalization_rule_name="identity",
      user_defined_symbols=[NEWLINE],
      unk_id=0,
      bos_id=-1,
      eos_id=-1,
      pad_id=-1,
      num_threads=1,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise DataError(
      f"a {vocab_size}-piece BPE cannot be trained on {source} ({e});"
      " change model.vocab_size."
    ) from None
  return Tokenizer(model.getvalue(), source)


def load(path: str) -> Tokenizer:
  """The SentencePiece model at `path`."""
  try:
    with open(path, "rb") as f:
      proto = f.read()
    return Tokenizer(proto, path)
  except (OSError, RuntimeError) as e:
    raise DataError(
      f"data.tokenizer={path!r} is not a readable SentencePiece model ({e});"
      " point data.tokenizer at a tokenizer.model file."
    ) from None


def check_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
  """The model's vocabulary must be the tokenizer's."""
  if tokenizer.vocab_size != vocab_size:
    raise DataError(
      f"the tokenizer {tokenizer.source} has {tokenizer.vocab_size} pieces"
      f" but model.vocab_size={vocab_size}; set model.vocab_size="
      f"{tokenizer.vocab_size}."
    )
