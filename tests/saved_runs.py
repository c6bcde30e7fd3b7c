"""Configs as a run of an older release saved them, read back on resume."""

import json

from dblocks_jax.families import runs


def reread_as_saved(config, workdir, edit):
  """`config` written into `workdir`'s config.json after `edit(payload)`
  (its JSON dict, changed to what an older release wrote), then read back
  as a resumed run reads it (`runs.read_run_config`, which upgrades it)."""
  payload = json.loads(config.to_json_best_effort())
  edit(payload)
  with open(workdir / runs.CONFIG_FILE, "w") as f:
    json.dump({"config": payload, "topology": {}}, f)
  return runs.read_run_config(str(workdir))
