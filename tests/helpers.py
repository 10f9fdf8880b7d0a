"""Helpers shared by the tests."""


def config_with(get_config, arg: str, **overrides):
  """get_config(arg) with fields overridden, nested keys joined by '__' (train__steps=6)."""
  config = get_config(arg)
  with config.unlocked():
    for dotted, value in overrides.items():
      *path, leaf = dotted.split("__")
      node = config
      for key in path:
        node = node[key]
      node[leaf] = value
  return config
