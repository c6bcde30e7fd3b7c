"""The rows of the quality table (benchmarks/quality.py): what each compares.

A row names its block-wise config (the baseline is derived from it by
`families.end_to_end_config`), the metric and its direction, the validation
split that tuning scores on, the paper's figure and the departures from the
paper's settings; a language row that generates text adds the judge
(`Scorer`) and the decoding knobs to sweep (`Decoding`).
"""

import dataclasses

# The last tenth of the training images held out for tuning (Fashion-MNIST:
# 54,000 / 6,000; the digits' 1,472 training images: 1,325 / 147).
IMAGE_VALIDATION = {
  "data.train_split": "train[:90%]",
  "data.eval_split": "train[90%:]",
}
TEXT_VALIDATION = {"data.eval_split": "validation"}


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A model a row trains once (with the first seed, under `ROW/scorer`)
  to score the arms' outputs: the classifier whose features give the DiT
  row's Frechet distance, the judge of the language rows' text.

  Attributes:
    config: its config, `configs/NAME.py[:ARGS]`.
    field: the arms' config field that names its workdir.
    fields: dotted config fields set on it.
    in_training: whether the arms' own evaluations use it (else only the
      decoding sweep of `Decoding` does).
  """

  config: str
  field: str
  fields: dict = dataclasses.field(default_factory=dict)
  in_training: bool = True


@dataclasses.dataclass(frozen=True)
class Decoding:
  """A language row's comparison of generated text at matched diversity.

  The row's `scorer` is the judge that scores every continuation.

  Attributes:
    knobs: per arm, the decoding field swept and its values.
    anchor: the baseline's knob value whose diversity every arm is read at
      (its default decoding).
    num_prompts: held-out prompts per evaluation (x the config's
      continuations per prompt).
    max_sequences: test windows of the next-token accuracy per evaluation.
  """

  knobs: dict
  anchor: float
  num_prompts: int = 200
  max_sequences: int = 256


@dataclasses.dataclass(frozen=True)
class FlopsToQuality:
  """The recurrent-depth row's comparison: the training FLOPs
  DiffusionBlocks needs to reach the baseline's final quality.

  DiffusionBlocks trains for `budget` times the baseline's training FLOPs
  (XLA's count per step, `families.flops`) and is evaluated `evaluations`
  times on the way; per seed, the FLOPs at which its quality curve first
  reaches the baseline's final figure (linearly between evaluations), over
  the baseline's FLOPs, is the row's metric (lower is better; 1 = as much
  compute). A seed that never reaches it is censored at `budget`.
  """

  budget: float = 2.0
  evaluations: int = 8


@dataclasses.dataclass(frozen=True)
class Row:
  """One comparison of the table.

  Attributes:
    name: the row's name (`--row`).
    config: the block-wise config, `configs/NAME.py[:ARGS]`.
    metric: the eval.json field compared.
    higher_is_better: the metric's direction.
    validation: the config fields (dotted) that train and score on a
      validation split.
    scale: the metric's factor in the table (100: a fraction as %).
    paper: the paper's figures for the same comparison, or "".
    departures: what the row's settings change from the paper's.
    official: the parity row: DiffusionBlocks against the official code.
    tune_metric: the eval.json field that tuning picks by ("" = metric),
      in the same direction.
    decoding: generated text compared at matched diversity (the metric is
      then the generative perplexity read at the baseline's diversity).
    label: the metric's name in the table ("" = metric).
    fields: dotted config fields set on both arms (a smaller evaluation).
    scorer: a model trained once for the row that scores both arms.
    flops: the row compares training FLOPs to the baseline's quality.
  """

  name: str
  config: str
  metric: str
  higher_is_better: bool
  validation: dict
  scale: float = 1.0
  paper: str = ""
  departures: str = ""
  official: bool = False
  tune_metric: str = ""
  decoding: Decoding | None = None
  label: str = ""
  fields: dict = dataclasses.field(default_factory=dict)
  scorer: Scorer | None = None
  flops: FlopsToQuality | None = None


# The autoregressive rows: the baseline's top-p against DiffusionBlocks'
# starting-noise scale, read at the baseline's top-p 0.95 diversity.
AR_JUDGE = Scorer(
  "configs/ar_pydocs.py:judge", "eval.judge_workdir", in_training=False
)
AR_DECODING = Decoding(
  knobs={
    "dblocks": ("sampler.temperature", (0.7, 1.0, 1.3, 1.6)),
    "e2e": ("sampler.top_p", (0.6, 0.8, 0.95, 1.0)),
  },
  anchor=0.95,
)
AR_PAPER = "LM1B: gen-PPL DB 12.32 vs e2e 14.58, MAUVE 0.71 vs 0.50 (Table 4)"


def ar_row(name: str, config: str, departures: str) -> Row:
  """An autoregressive row: tuned on next-token accuracy, compared by
  generative perplexity at matched diversity under the judge."""
  return Row(
    name,
    config,
    "gen_ppl",
    False,
    TEXT_VALIDATION,
    tune_metric="accuracy",
    scorer=AR_JUDGE,
    decoding=AR_DECODING,
    label="gen-PPL at the baseline's top-p 0.95 diversity",
    paper=AR_PAPER,
    departures=departures,
  )


ROWS = {
  row.name: row
  for row in (
    Row(
      "parity",
      "configs/vit_fashion_mnist.py:epochs=6",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      paper="official code: 68.1% (one seed)",
      departures="none (the official settings)",
      official=True,
    ),
    Row(
      "quickstart",
      "configs/quickstart.py",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      departures="CLS readout, explicit partition, layers (2,1,1),"
      " log-uniform sigma, hard hand-off",
    ),
    Row(
      "vit",
      "configs/vit_fashion_mnist.py:epochs=3",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      paper="CIFAR-100: DB 49.1% vs e2e 47.5% (ViT, Table 1)",
      departures="none (the official settings); 3 epochs",
    ),
    Row(
      "vit_tuned",
      "configs/vit_fashion_mnist.py:epochs=3,tuned",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      departures="CLS readout, layers (4,1,1), log-uniform sigma, hard"
      " hand-off; 3 epochs",
    ),
    Row(
      "mdm",
      "configs/mdm_pydocs.py:steps=1000",
      "bpc",
      False,
      TEXT_VALIDATION,
      paper="text8: DB 1.45 vs e2e 1.56 BPC (Table 3)",
      departures="the Python docs, not text8; 6 layers of width 128,"
      " 64-character sequences, 1,000 baseline steps; rotary positions",
    ),
    Row(
      "dit",
      "configs/dit_fashion_mnist.py:cpu,epochs=1",
      "fid",
      False,
      IMAGE_VALIDATION,
      fields={"eval.num_samples": 1000},
      scorer=Scorer(
        "configs/vit_fashion_mnist.py:e2e",
        "eval.classifier_workdir",
        fields={"model.num_layers": 2},
      ),
      label="Frechet distance in a 2-layer ViT classifier's features",
      paper="CIFAR-10: FID DB 37.20 vs e2e 39.83 (Table 2)",
      departures="Fashion-MNIST, 6 layers of width 64, 1 baseline epoch;"
      " 1,000 samples scored in a small classifier's features",
    ),
    ar_row(
      "ar",
      "configs/ar_pydocs.py",
      departures="noise narrowed to P_mean -0.7, P_std 0.5, sigma"
      " log-uniform in each block's range (the paper: -1.2, 1.2); the"
      " Python docs, 8 layers of width 128, a small judge",
    ),
    ar_row(
      "ar_paper_noise",
      "configs/ar_pydocs.py:paper_noise",
      departures="the Python docs, 8 layers of width 128, a small judge",
    ),
    Row(
      "recurrent",
      "configs/huginn_pydocs.py:ar_noise",
      "train_flops_ratio",
      False,
      TEXT_VALIDATION,
      tune_metric="accuracy",
      flops=FlopsToQuality(),
      fields={"eval.num_prompts": 0, "eval.max_sequences": 256},
      label="training FLOPs to the baseline's next-token accuracy, / the"
      " baseline's",
      paper="LM1B: about 10x fewer training FLOPs at a better MAUVE"
      " (0.70 vs 0.49) and gen-PPL (16.08 vs 17.04) (Table 5, App. H)",
      departures="DB's noise narrowed to P_mean -0.7, P_std 0.5 (the AR"
      " family's; the paper: -1.2, 1.2); baseline depth mean 8, 4"
      " backpropagated (the paper: 32, 8); the Python docs, width 128;"
      " quality = next-token accuracy on 256 test windows",
    ),
  )
}
