"""dblocks_jax: DiffusionBlocks in JAX/Flax NNX.

A residual network of L layers is split into B blocks; block b is trained
alone as the denoiser of one noise range of a diffusion process, and at
inference the blocks run in order as the steps of a sampler.

    import dblocks_jax as db
    plan = db.BlockPlan.create(db.EDM(), num_layers=6, num_blocks=3)
    model = db.BlockwiseModel.build(plan, shell=my_shell, layer=MyLayer)
    trainer = db.Trainer(model, db.DiffusionClassification(), plan, tx)
    trainer.fit(batches, total_steps=3000)
    trainer.evaluate(test_batches)                # {"accuracy": ...}

Names are imported on first use, so `import dblocks_jax` is cheap and the
math and the engine never import Orbax, grain, TFDS or PIL (the trainer
imports Orbax when it first saves).
"""

import importlib as _importlib

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_EXPORTS = {
  # The method: pure functions and the noise processes.
  "diffusion": ("dblocks_jax.diffusion", None),
  "EDM": ("dblocks_jax.diffusion.process", "EDM"),
  "NoiseProcess": ("dblocks_jax.diffusion.process", "NoiseProcess"),
  "Masking": ("dblocks_jax.diffusion.masking", "Masking"),
  # The engine: the plan and the network split into blocks.
  "BlockPlan": ("dblocks_jax.blockwise.plan", "BlockPlan"),
  "BlockwiseModel": ("dblocks_jax.blockwise.parts", "BlockwiseModel"),
  # Tasks: a block's loss and routed inference.
  "Task": ("dblocks_jax.tasks.base", "Task"),
  "Sampler": ("dblocks_jax.tasks.base", "Sampler"),
  "DiffusionClassification": (
    "dblocks_jax.tasks.classification",
    "DiffusionClassification",
  ),
  "DiffusionGeneration": (
    "dblocks_jax.tasks.generation",
    "DiffusionGeneration",
  ),
  "EndToEndClassification": (
    "dblocks_jax.tasks.classification",
    "EndToEndClassification",
  ),
  "MaskedDiffusion": (
    "dblocks_jax.tasks.masked_diffusion",
    "MaskedDiffusion",
  ),
  "NextTokenDiffusion": (
    "dblocks_jax.tasks.autoregressive",
    "NextTokenDiffusion",
  ),
  "CausalLM": ("dblocks_jax.tasks.autoregressive", "CausalLM"),
  "RecurrentDepthLM": (
    "dblocks_jax.tasks.recurrent_depth",
    "RecurrentDepthLM",
  ),
  # Training.
  "Trainer": ("dblocks_jax.training.trainer", "Trainer"),
  # Layers and the Linen adapter.
  "nn": ("dblocks_jax.nn", None),
  "FromLinen": ("dblocks_jax.nn.linen", "FromLinen"),
  "models": ("dblocks_jax.models", None),
  # Model families (the config layer) and the errors the library raises.
  "families": ("dblocks_jax.families", None),
  "register_family": ("dblocks_jax.families", "register"),
  "errors": ("dblocks_jax.errors", None),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'dblocks_jax' has no attribute {name!r}")
  module_name, attribute = _EXPORTS[name]
  module = _importlib.import_module(module_name)
  value = module if attribute is None else getattr(module, attribute)
  globals()[name] = value
  return value


def __dir__():
  return [*__all__, "__version__"]
