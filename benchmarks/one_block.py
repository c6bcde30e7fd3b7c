"""One block through the library: what its default sampler predicts.

A residual MLP written against the public API (the library guide's model,
narrower) classifies scikit-learn's digits as ONE block (B = 1: the
network trained end to end as a diffusion classifier), with the library's
defaults. For each seed it prints the test accuracy of

  - the default sampler (B = 1 step: one denoising step from sigma_max),
  - the official one-point grid [sigma_min], which the sampler used before
    (noise of scale sigma_max read as if it were nearly clean),
  - 2, 4 and 8 Euler steps,
  - the same stem, layers and a linear head trained as a plain classifier
    (cross-entropy, no noise) for the same steps: the end-to-end baseline.

  python benchmarks/one_block.py --steps=1500 --seeds=3
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from sklearn.datasets import load_digits

import dblocks_jax as db

flags.DEFINE_integer("steps", 1500, "Training steps of each run.")
flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 (model, trainer, data).")
flags.DEFINE_integer("width", 32, "The MLP's width.")
FLAGS = flags.FLAGS
CLASSES, LAYERS, BATCH = 10, 2, 64


class Layer(nnx.Module):
  """A residual MLP layer, FiLM-conditioned: h, cond [b, width] -> h."""

  def __init__(self, width, rngs):
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.film = nnx.Linear(width, 2 * width, rngs=rngs)
    self.mlp = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, h, cond):
    scale, shift = jnp.split(self.film(cond), 2, axis=-1)
    return h + self.mlp(jax.nn.gelu(self.norm(h) * (1 + scale) + shift))


class Stem(nnx.Module):
  """Image [b, 8, 8, 1] and noisy label [b, width] -> h [b, width]."""

  def __init__(self, width, rngs):
    self.image = nnx.Linear(64, width, rngs=rngs)
    self.label = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, images, token):
    return self.image(images.reshape(len(images), -1)) + self.label(token)


class Classifier(nnx.Module):
  """The stem's image half, the layers (nothing to condition on) and a
  linear head: images [b, 8, 8, 1] -> logits [b, classes]."""

  def __init__(self, width, rngs):
    self.image = nnx.Linear(64, width, rngs=rngs)
    self.layers = nnx.List([Layer(width, rngs) for _ in range(LAYERS)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, CLASSES, rngs=rngs)

  def __call__(self, images, rngs=None):
    del rngs
    h = self.image(images.reshape(len(images), -1))
    for layer in self.layers:
      h = layer(h, jnp.zeros_like(h))
    return self.head(self.norm(h))


def digits():
  """(train images [1500, 8, 8, 1], labels, the 297 test examples)."""
  images, labels = load_digits(return_X_y=True)
  images = (images / 16).reshape(-1, 8, 8, 1).astype(np.float32)
  labels = labels.astype(np.int32)
  test = {"image": images[1500:], "label": labels[1500:]}
  return images[:1500], labels[:1500], test


def batches(images, labels, seed):
  rng = np.random.default_rng(seed)
  while True:
    rows = rng.integers(0, len(images), BATCH)
    yield {"image": images[rows], "label": labels[rows]}


def one_block(seed: int, width: int, steps: int, data) -> dict:
  """Accuracies of one seed's B = 1 model under each grid."""
  images, labels, test = data

  def shell(rngs):
    return {
      "stem": Stem(width, rngs),
      "readout": nnx.LayerNorm(width, rngs=rngs),
      **db.DiffusionClassification.standard_parts(
        CLASSES, width, width, rngs=rngs
      ),
    }

  plan = db.BlockPlan.create(db.EDM(), num_layers=LAYERS, num_blocks=1)
  model = db.BlockwiseModel.build(
    plan, shell=shell, layer=lambda rngs: Layer(width, rngs), seed=seed
  )
  trainer = db.Trainer(
    model, db.DiffusionClassification(), plan, optax.adamw(1e-3), seed=seed
  )
  trainer.fit(batches(images, labels, seed), total_steps=steps, quiet=True)
  official = db.Sampler(levels=np.array([0.002]), blocks=np.array([0]))
  row = {
    "default (1 step from 80)": trainer.evaluate([test])["accuracy"],
    "one-point grid [0.002]": trainer.evaluate([test], sampler=official)[
      "accuracy"
    ],
  }
  for num_steps in (2, 4, 8):
    sampler = trainer.sampler(num_steps)
    row[f"{num_steps} steps"] = trainer.evaluate([test], sampler=sampler)[
      "accuracy"
    ]
  baseline = db.Trainer(
    db.BlockwiseModel.end_to_end({"model": Classifier(width, nnx.Rngs(seed))}),
    db.EndToEndClassification(),
    None,
    optax.adamw(1e-3),
    seed=seed,
  )
  baseline.fit(batches(images, labels, seed), total_steps=steps, quiet=True)
  row["plain classifier"] = baseline.evaluate([test])["accuracy"]
  return row


def measure(steps: int, seeds: int, width: int) -> list[dict]:
  data = digits()
  return [one_block(seed, width, steps, data) for seed in range(seeds)]


def main(argv):
  del argv
  rows = measure(FLAGS.steps, FLAGS.seeds, FLAGS.width)
  print(f"digits, B = 1, width {FLAGS.width}, {FLAGS.steps} steps, 297 test")
  for name in rows[0]:
    values = np.array([row[name] for row in rows]) * 100
    each = " ".join(f"{v:6.2f}" for v in values)
    print(f"{name:26s} {each}   mean {values.mean():6.2f}%")


if __name__ == "__main__":
  app.run(main)
