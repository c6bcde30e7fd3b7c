"""dblocks_jax: DiffusionBlocks in JAX/Flax NNX.

A residual network of L layers is split into B blocks; block b is trained
alone as the denoiser of one noise range of an EDM diffusion process, and at
inference the blocks run in order as the steps of a sampler.

  import dblocks_jax as db
  bounds = db.diffusion.block_boundaries(3)          # [4] ascending sigmas
  ranges = db.diffusion.training_ranges(bounds, 0.05)  # [3, 2] widened
  result = db.train_and_evaluate(config, workdir)    # the trainer
"""

from dblocks_jax import diffusion, errors, evaluate, models, nn, objectives
from dblocks_jax.assemble import assemble as assemble_blocks
from dblocks_jax.blockwise import parallel
from dblocks_jax.blockwise.optim import learning_rate_fn, make_optimizer
from dblocks_jax.blockwise.parallel import (
  build_parallel_step,
  collectives_across_groups,
)
from dblocks_jax.blockwise.parts import BlockwiseModel, GraphDefs, merge, split
from dblocks_jax.blockwise.plan import BlockPlan, layer_distribution
from dblocks_jax.blockwise.plan import from_config as block_plan_from_config
from dblocks_jax.blockwise.schedule import BlockSchedule
from dblocks_jax.blockwise.steps import (
  build_train_step,
  groups_for_block,
  make_block_loss,
  make_end_to_end_loss,
)
from dblocks_jax.experiment import Experiment
from dblocks_jax.experiment import build as build_experiment
from dblocks_jax.memory import memory_report
from dblocks_jax.models import dit, inception, vae, vit
from dblocks_jax.models.inception import InceptionV3
from dblocks_jax.models.inception_weights import load_inception
from dblocks_jax.models.vae import AutoencoderKL, VAEConfig
from dblocks_jax.models.vae_weights import load_vae, save_vae
from dblocks_jax.models.vit import BaselineViT
from dblocks_jax.objectives import (
  DiffusionClassification,
  DiffusionGeneration,
  EndToEndClassification,
)
from dblocks_jax.parallel_train import train_parallel
from dblocks_jax.state import init_state, restore_run
from dblocks_jax.train import (
  evaluate_checkpoint,
  sample_checkpoint,
  train_and_evaluate,
)

__version__ = "0.1.0"

__all__ = [
  "AutoencoderKL",
  "BaselineViT",
  "BlockPlan",
  "BlockSchedule",
  "BlockwiseModel",
  "DiffusionClassification",
  "DiffusionGeneration",
  "EndToEndClassification",
  "Experiment",
  "GraphDefs",
  "InceptionV3",
  "VAEConfig",
  "assemble_blocks",
  "block_plan_from_config",
  "build_experiment",
  "build_parallel_step",
  "build_train_step",
  "collectives_across_groups",
  "diffusion",
  "dit",
  "errors",
  "evaluate",
  "evaluate_checkpoint",
  "groups_for_block",
  "inception",
  "init_state",
  "layer_distribution",
  "learning_rate_fn",
  "load_inception",
  "load_vae",
  "make_block_loss",
  "make_end_to_end_loss",
  "make_optimizer",
  "memory_report",
  "merge",
  "models",
  "nn",
  "objectives",
  "parallel",
  "restore_run",
  "sample_checkpoint",
  "save_vae",
  "split",
  "train_and_evaluate",
  "train_parallel",
  "vae",
  "vit",
]
