"""From a config to a model split into parts, an objective and a block plan.

The one place that knows which model family serves which `model.name`; the
trainer, the memory report and the evaluator all start here.
"""

import copy
import dataclasses
import functools

import ml_collections
from flax import nnx

from dblocks_jax import objectives
from dblocks_jax.blockwise import plan as plan_lib
from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.errors import ConfigError
from dblocks_jax.models import dit, vit

METHODS = ("dblocks", "e2e")
MODELS = ("vit", "dit")
ESTIMATES = ("soft", "hard")
TASKS = {"vit": "classification", "dit": "generation"}


@dataclasses.dataclass
class Experiment:
  """What a run trains.

  Attributes:
    method: "dblocks" (block-wise) or "e2e" (the end-to-end baseline).
    model: the NNX modules by part and group.
    objective: the loss and the inference procedure.
    plan: the block plan. None for a baseline trained without noise (the ViT
      classifier); a one-block plan for a diffusion baseline (DiT at B=1).
    task: "classification" or "generation".
  """

  method: str
  model: BlockwiseModel
  objective: object
  plan: plan_lib.BlockPlan | None
  task: str = "classification"

  @property
  def blockwise(self) -> bool:
    """Trained through the block engine (sigma ranges, routed sampling)."""
    return self.plan is not None

  def topology(self, config) -> dict:
    """The run's topology, which a resumed run must not change."""
    topology = {"method": self.method, "num_layers": config.model.num_layers}
    if self.plan is not None:
      topology.update(self.plan.topology())
    if self.method == "dblocks":
      topology.update(
        partition=config.blocks.partition, sharing=config.blocks.sharing
      )
      trained = sorted(set(config.blocks.train))
      if trained and len(trained) < self.plan.num_blocks:
        topology["trained_blocks"] = trained  # A per-block job.
      groups = config.get("parallel", {}).get("block_groups", 1)
      if groups > 1:  # (Runs from before block-parallel training lack it.)
        topology["block_groups"] = groups
    return topology


def _choice(value, choices, field: str, hint: str = "") -> None:
  if value not in choices:
    raise ConfigError(
      f"{field}={value!r} is unknown; choose one of {tuple(choices)}{hint}."
    )


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Builds the experiment of `config.method` and `config.model.name`."""
  _choice(config.method, METHODS, "method")
  _choice(config.model.name, MODELS, "model.name")
  if config.model.name == "dit":
    return _build_dit(config)
  return _build_vit(config)


def _blockwise_parts(config, plan, make_shell, make_layers, make_fixed=None):
  """(shared, blocks, fixed) for the config's sharing mode.

  shared: one shell (stem, embedders, readout) trained with every block.
  independent: every block owns a shell, seeded per block; a discrete target
  space (`make_fixed`) is a fixed table from its own seed.
  """
  if config.blocks.sharing == "shared":
    rngs = nnx.Rngs(params=config.seed)
    shared = make_shell(rngs)
    blocks = [{"layers": make_layers(n, rngs)} for n in plan.layers_per_block]
    return shared, blocks, {}
  fixed = {}
  if make_fixed is not None:
    fixed = make_fixed(nnx.Rngs(params=config.blocks.target_table_seed))
  trained = set(config.blocks.train) or set(range(plan.num_blocks))

  def make_block(b: int):
    rngs = nnx.Rngs(params=config.seed + 1000 * (b + 1))
    parts = make_shell(rngs)
    parts["layers"] = make_layers(plan.layers_per_block[b], rngs)
    return parts

  # A per-block job builds the other blocks abstractly (shapes only): their
  # parameters never exist in its memory.
  blocks = [
    make_block(b)
    if b in trained
    else nnx.eval_shape(functools.partial(make_block, b))
    for b in range(plan.num_blocks)
  ]
  return {}, blocks, fixed


def _build_vit(config) -> Experiment:
  image_shape = tuple(config.data.image_shape)
  num_classes = config.data.num_classes
  if config.method == "e2e":
    rngs = nnx.Rngs(params=config.seed)
    model = BlockwiseModel(
      shared={
        "model": vit.BaselineViT(config, image_shape, num_classes, rngs=rngs)
      },
      blocks=[],
      fixed={},
    )
    return Experiment("e2e", model, objectives.EndToEndClassification(), None)

  _choice(
    config.model.readout_token,
    ("label", "cls"),
    "model.readout_token",
    " ('label' = official code, 'cls' = paper)",
  )
  _choice(config.sampler.estimate, ESTIMATES, "sampler.estimate")

  plan = plan_lib.from_config(config)
  shared_mode = config.blocks.sharing == "shared"

  def make_shell(rngs):
    shell = vit.make_shell(config, image_shape, num_classes, rngs)
    if shared_mode:
      shell["targets"] = vit.make_targets(
        config, num_classes, trainable=True, rngs=rngs
      )
    return shell

  def make_fixed(rngs):
    targets = vit.make_targets(config, num_classes, trainable=False, rngs=rngs)
    return {"targets": targets}

  shared, blocks, fixed = _blockwise_parts(
    config,
    plan,
    make_shell,
    lambda n, rngs: vit.make_layers(config, n, rngs),
    make_fixed,
  )
  d = config.diffusion
  objective = objectives.DiffusionClassification(
    denoise=vit.denoise,
    sigma_data=d.sigma_data,
    max_weight=d.max_weight,
    image_dropout=config.model.image_dropout,
    normalized_table=config.sampler.normalized_table,
    estimate=config.sampler.estimate,
  )
  return Experiment(
    "dblocks", BlockwiseModel(shared, blocks, fixed), objective, plan
  )


def _one_block_plan(config) -> plan_lib.BlockPlan:
  """The diffusion baseline's plan: one block of all layers, full range."""
  single = copy.deepcopy(config)
  with single.unlocked():
    single.blocks.num_blocks = 1
    single.blocks.layer_distribution = ()
    single.blocks.partition = "equiprobable"
    single.blocks.boundaries = ()
    single.blocks.sharing = "shared"
  return plan_lib.from_config(single)


def _build_dit(config) -> Experiment:
  image_shape = tuple(config.data.image_shape)
  num_classes = config.data.num_classes
  if config.method == "e2e":
    plan = _one_block_plan(config)
  else:
    plan = plan_lib.from_config(config)
  shared, blocks, fixed = _blockwise_parts(
    config if config.method == "dblocks" else _shared_only(config),
    plan,
    lambda rngs: dit.make_shell(config, image_shape, num_classes, rngs),
    lambda n, rngs: dit.make_layers(config, n, rngs),
  )
  d = config.diffusion
  objective = objectives.DiffusionGeneration(
    denoise=dit.denoise,
    num_classes=num_classes,
    sigma_data=d.sigma_data,
    max_weight=d.max_weight,
    label_dropout=config.model.label_dropout,
  )
  model = BlockwiseModel(shared, blocks, fixed)
  return Experiment(config.method, model, objective, plan, task="generation")


def _shared_only(config):
  single = copy.deepcopy(config)
  with single.unlocked():
    single.blocks.sharing = "shared"
  return single
