"""Recipe configs: one pydantic schema, YAML files, dotted `key=value` overrides."""

from tunelab.config.load import load_config, parse_overrides, validate_config
from tunelab.config.schema import RunConfig
from tunelab.config.sections import register_section, section_classes

__all__ = ["RunConfig", "load_config", "parse_overrides", "register_section", "section_classes", "validate_config"]
