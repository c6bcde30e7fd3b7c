"""The command line's entry point, `python -m dblocks_jax.main
--config=configs/NAME.py --workdir=DIR [--mode=...]`; the command line
itself (flags, modes, one-line errors) is `dblocks_jax.cli`."""

from absl import app

from dblocks_jax.cli.main import main

if __name__ == "__main__":
  app.run(main)
