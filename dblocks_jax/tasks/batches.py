"""What a task reads from a batch, and the checks at the trainer's boundary.

A task declares its fields with `batch_fields(parts, example) -> {name:
Field}` (`parts`: the modules one block runs with, `example`: the batch's
shapes, so a task may read the number of classes off its target table or
its logits). `check_fields` compares one batch with them and with the
shapes the run was given or first saw (`spec`); `check_values` range-checks
the class ids and token ids on the host. Every mismatch is one line that
names the field, what was expected and what came:

  batch field 'label' holds 10; DiffusionClassification needs class ids in
  [0, 10) (they index the model's 10 rows); fix the data.

Rows are examples: every field has the same leading size. Fields a task
does not declare (a `mask` of padding rows) pass unchecked.
"""

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np

KINDS = ("float", "int", "number")
MODES = ("train", "predict", "evaluate")


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of a batch as a task reads it.

  Attributes:
    kind: "float" (a floating dtype), "int" (an integer dtype: class ids,
      tokens) or "number" (either, e.g. uint8 images a stem converts).
    rank: dimensions of one example (after the batch axis); None: any.
    num_classes: integer values must lie in [0, num_classes) (None:
      unchecked); checked on the host for every batch.
    meaning: what the values are, for messages ("class ids", "token ids").
    in_predict: `predict` reads it (False: training and evaluation only,
      e.g. the labels of a classifier).
    varying: the axes of one example whose size may change from batch to
      batch (e.g. (0,), the length of a causal LM's token windows); the
      others must keep the size of the run's batches.
  """

  kind: str
  rank: int | None = None
  num_classes: int | None = None
  meaning: str = ""
  in_predict: bool = True
  varying: tuple[int, ...] = ()

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r} is unknown; choose one of {KINDS}.")


def shapes_of(batch: Mapping) -> dict[str, jax.ShapeDtypeStruct]:
  """{name: ShapeDtypeStruct} of a batch's array fields."""
  out = {}
  for name, value in batch.items():
    if hasattr(value, "shape") and hasattr(value, "dtype"):
      out[name] = jax.ShapeDtypeStruct(np.shape(value), np.dtype(value.dtype))
  return out


def per_example(spec: Mapping) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{name: (shape after the batch axis, dtype)} of a batch spec: a mapping
  of ShapeDtypeStructs (or arrays) of one batch, the leading axis ignored."""
  out = {}
  for name, value in spec.items():
    shape = tuple(int(d) for d in np.shape(value))
    if not shape:
      raise ValueError(
        f"batch_spec[{name!r}] has no batch axis; give the shape of a"
        " batch, e.g. jax.ShapeDtypeStruct((batch, 8, 8, 1), jnp.float32)."
      )
    out[name] = (shape[1:], np.dtype(value.dtype))
  return out


def check_fields(
  batch: Mapping,
  fields: Mapping[str, Field],
  *,
  mode: str = "train",
  spec: Mapping | None = None,
  owner: str = "the task",
) -> None:
  """Checks a batch's fields, shapes and dtypes; raises on the first
  mismatch.

  Args:
    batch: {name: array [b, ...]}.
    fields: what the task reads (`Field`s).
    mode: "train" and "evaluate" need every field, "predict" the fields
      with `in_predict`.
    spec: {name: (shape after the batch axis, dtype)} the batch must match
      (`per_example`), for the fields it names; None: no shapes to match.
    owner: who reads the batch, for messages (e.g. the task's class name).

  Raises:
    ValueError: a field is missing, the fields' row counts differ, or a
      shape differs from `spec` or from the field's rank.
    TypeError: the batch is not a mapping, or a dtype is of the wrong kind.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is unknown; choose one of {MODES}.")
  if not isinstance(batch, Mapping):
    like = f" ({_listed(fields)})" if fields else ""
    raise TypeError(
      f"a batch must be a mapping of field names to arrays{like}; got"
      f" {type(batch).__name__}."
    )
  needed = [
    name for name, f in fields.items() if mode != "predict" or f.in_predict
  ]
  missing = [name for name in needed if name not in batch]
  if missing:
    raise ValueError(
      f"batch has no field {missing[0]!r}: {owner} reads"
      f" {_listed(needed)}; the batch has {_listed(batch)}. Rename the"
      " field (or set the task's field name)."
    )
  shapes = shapes_of(batch)
  rows = {name: s.shape[0] for name, s in shapes.items() if s.shape}
  if len(set(rows.values())) > 1:
    first, size = next(iter(rows.items()))
    other = next(n for n, r in rows.items() if r != size)
    raise ValueError(
      f"batch field {other!r} has {rows[other]} rows but {first!r} has"
      f" {size}; every field needs one row per example."
    )
  for name in needed:
    if name not in shapes:
      raise TypeError(
        f"batch field {name!r} is a {type(batch[name]).__name__}, not an"
        " array; pass a numpy or jax array."
      )
    _check_field(name, shapes[name], fields[name], owner)
  for name, (shape, dtype) in (spec or {}).items():
    if name in shapes:
      field = fields.get(name)
      _check_shape(
        name, shapes[name], shape, dtype, field.varying if field else ()
      )


def _check_field(name, shape_dtype, field: Field, owner) -> None:
  dtype = np.dtype(shape_dtype.dtype)
  is_float = np.issubdtype(dtype, np.floating) or dtype == jax.numpy.bfloat16
  is_int = np.issubdtype(dtype, np.integer)
  expected = {
    "float": is_float,
    "int": is_int,
    "number": is_float or is_int,
  }[field.kind]
  if not expected:
    what = field.meaning or {"float": "floats", "int": "integers"}.get(
      field.kind, "numbers"
    )
    fix = " (cast with .astype(np.int32))" if field.kind == "int" else ""
    raise TypeError(
      f"batch field {name!r} has dtype {dtype}; {owner} needs {what} of"
      f" {field.kind} dtype there{fix}."
    )
  shape = shape_dtype.shape
  if not shape:
    raise ValueError(
      f"batch field {name!r} is a scalar; it needs a batch axis"
      " (one row per example)."
    )
  if field.rank is not None and len(shape) - 1 != field.rank:
    per = (
      "[batch]: one value per example"
      if field.rank == 0
      else f"{field.rank} dimension(s) per example after the batch axis"
    )
    raise ValueError(
      f"batch field {name!r} has shape {list(shape)}; {owner} needs {per}."
    )


def _check_shape(name, shape_dtype, shape, dtype, varying=()) -> None:
  got = tuple(shape_dtype.shape[1:])
  fixed = [i for i in range(max(len(got), len(shape))) if i not in varying]
  if len(got) != len(shape) or any(got[i] != shape[i] for i in fixed):
    raise ValueError(
      f"batch field {name!r} has shape {list(shape_dtype.shape)}, but this"
      f" run's batches are [batch, {', '.join(map(str, shape))}]"
      " (its batch_spec, or the first batch it saw); reshape the field."
    )
  got_dtype = np.dtype(shape_dtype.dtype)
  if _kind(got_dtype) != _kind(np.dtype(dtype)):
    raise TypeError(
      f"batch field {name!r} has dtype {got_dtype}, but this run's batches"
      f" hold {np.dtype(dtype)} there; cast the field."
    )


def _kind(dtype: np.dtype) -> str:
  if np.issubdtype(dtype, np.integer):
    return "int"
  if np.issubdtype(dtype, np.bool_):
    return "bool"
  return "float"


def check_values(
  batch: Mapping, fields: Mapping[str, Field], *, owner: str = "the task"
) -> None:
  """Range-checks the integer fields with `num_classes`, on the host.

  Rows whose `mask` is False (padding) are skipped.

  Raises:
    ValueError: a value lies outside [0, num_classes).
  """
  mask = batch.get("mask")
  for name, field in fields.items():
    if field.num_classes is None or name not in batch:
      continue
    values = np.asarray(batch[name])
    if mask is not None:
      values = values[np.asarray(mask, bool)]
    if not values.size:
      continue
    low, high = values.min(), values.max()
    if low >= 0 and high < field.num_classes:
      continue
    bad = low if low < 0 else high
    what = field.meaning or "values"
    raise ValueError(
      f"batch field {name!r} holds {bad}; {owner} needs {what} in"
      f" [0, {field.num_classes}) (they index the model's"
      f" {field.num_classes} rows); fix the data."
    )


class BatchChecker:
  """Checks the batches of one run at the trainer's boundary.

  The full check (`check_fields`) runs on the first batch of each mode and
  whenever the batch's fields, shapes or dtypes change; the range check of
  class and token ids (`check_values`) runs on every batch. The run's shapes
  (`spec`) are the ones given, else those of the first training batch.

  Args:
    fields_fn: `example -> {name: Field}` (the task's `batch_fields` with
      its parts bound), or None for a task that declares none (then only
      the rows and the run's shapes are checked).
    owner: the task's name, for messages.
    spec: a batch's shapes ({name: ShapeDtypeStruct of [batch, ...]}), or
      None to take the first training batch's.
  """

  def __init__(self, fields_fn, owner: str, spec: Mapping | None = None):
    self._fields_fn = fields_fn
    self.owner = owner
    self.spec = per_example(spec) if spec else None
    self._checked: dict[str, tuple] = {}  # mode -> (shapes, fields)

  def check(self, batch: Mapping, mode: str = "train") -> None:
    """Checks one batch (see the class docstring); raises on a mismatch."""
    if not isinstance(batch, Mapping):
      check_fields(batch, {}, mode=mode, owner=self.owner)  # TypeError.
    shapes = shapes_of(batch)
    key = tuple(sorted((n, s.shape, str(s.dtype)) for n, s in shapes.items()))
    checked = self._checked.get(mode)
    if checked is None or checked[0] != key:
      fields = self._fields_fn(shapes) if self._fields_fn else {}
      check_fields(batch, fields, mode=mode, spec=self.spec, owner=self.owner)
      if mode == "train" and self.spec is None:
        self.spec = per_example(shapes)
      checked = self._checked[mode] = (key, fields)
    check_values(batch, checked[1], owner=self.owner)

  def describe(self) -> dict | None:
    """The run's shapes as JSON ({name: [shape after the batch axis,
    dtype]}), for a checkpoint's metadata; None while unknown."""
    if self.spec is None:
      return None
    return {n: [list(s), str(d)] for n, (s, d) in self.spec.items()}

  def load(self, described: Mapping | None) -> None:
    """Takes the shapes of `describe` (a checkpoint's) when none are set."""
    if self.spec is None and described:
      self.spec = {
        n: (tuple(s), jax.numpy.dtype(d)) for n, (s, d) in described.items()
      }


def _listed(names) -> str:
  """'a', 'b' and 'c'."""
  names = [repr(n) for n in names]
  if len(names) < 2:
    return names[0] if names else "no fields"
  return f"{', '.join(names[:-1])} and {names[-1]}"
