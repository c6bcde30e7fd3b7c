"""From a config to a model split into parts, an objective and a block plan.

The one place that knows which model family serves which `model.name`; the
trainer, the memory report and the evaluator all start here.
"""

import dataclasses

import ml_collections
from flax import nnx

from dblocks_jax import objectives
from dblocks_jax.blockwise import plan as plan_lib
from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.errors import ConfigError
from dblocks_jax.models import vit

METHODS = ("dblocks", "e2e")
MODELS = ("vit",)
ESTIMATES = ("soft", "hard")


@dataclasses.dataclass
class Experiment:
  """What a run trains.

  Attributes:
    method: "dblocks" (block-wise) or "e2e" (the end-to-end baseline).
    model: the NNX modules by part and group.
    objective: the loss and the inference procedure.
    plan: the block plan (None for the baseline).
  """

  method: str
  model: BlockwiseModel
  objective: object
  plan: plan_lib.BlockPlan | None

  @property
  def blockwise(self) -> bool:
    return self.method == "dblocks"

  def topology(self, config) -> dict:
    """The run's topology, which a resumed run must not change."""
    topology = {"method": self.method, "num_layers": config.model.num_layers}
    if self.plan is not None:
      topology.update(
        self.plan.topology(),
        partition=config.blocks.partition,
        sharing=config.blocks.sharing,
      )
    return topology


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Builds the experiment of `config.method` and `config.model.name`."""
  if config.method not in METHODS:
    raise ConfigError(
      f"method={config.method!r} is unknown; choose one of {METHODS}."
    )
  if config.model.name not in MODELS:
    raise ConfigError(
      f"model.name={config.model.name!r} is unknown; choose one of {MODELS}."
    )
  if config.model.readout_token not in ("label", "cls"):
    raise ConfigError(
      f"model.readout_token={config.model.readout_token!r} is unknown;"
      " choose 'label' (official code) or 'cls' (paper)."
    )
  if config.sampler.estimate not in ESTIMATES:
    raise ConfigError(
      f"sampler.estimate={config.sampler.estimate!r} is unknown; choose one"
      f" of {ESTIMATES}."
    )
  image_shape = tuple(config.data.image_shape)
  num_classes = config.data.num_classes
  rngs = nnx.Rngs(params=config.seed)
  if config.method == "e2e":
    model = BlockwiseModel(
      shared={
        "model": vit.BaselineViT(config, image_shape, num_classes, rngs=rngs)
      },
      blocks=[],
      fixed={},
    )
    return Experiment("e2e", model, objectives.EndToEndClassification(), None)

  plan = plan_lib.from_config(config)
  if config.blocks.sharing == "shared":
    shared = vit.make_shell(config, image_shape, num_classes, rngs)
    shared["targets"] = vit.make_targets(
      config, num_classes, trainable=True, rngs=rngs
    )
    blocks = [
      {"layers": vit.make_layers(config, n, rngs)}
      for n in plan.layers_per_block
    ]
    fixed = {}
  else:  # independent: every block owns its stem and readout.
    table_rngs = nnx.Rngs(params=config.blocks.target_table_seed)
    fixed = {
      "targets": vit.make_targets(
        config, num_classes, trainable=False, rngs=table_rngs
      )
    }
    shared = {}
    blocks = []
    for b, n in enumerate(plan.layers_per_block):
      block_rngs = nnx.Rngs(params=config.seed + 1000 * (b + 1))
      parts = vit.make_shell(config, image_shape, num_classes, block_rngs)
      parts["layers"] = vit.make_layers(config, n, block_rngs)
      blocks.append(parts)
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
