"""Recipe configs: one pydantic schema, YAML files, dotted `key=value` overrides."""

from tunelab.config.load import load_config, parse_overrides
from tunelab.config.schema import RunConfig

__all__ = ["RunConfig", "load_config", "parse_overrides"]
