"""Evaluation: classification accuracy (FID and LM metrics follow)."""

from dblocks_jax.evaluate.classification import accuracy, make_classify_fn

__all__ = ["accuracy", "make_classify_fn"]
