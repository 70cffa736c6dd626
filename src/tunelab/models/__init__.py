"""Model catalog (short names for packaged weights, local folders, hub ids) and loading."""

from tunelab.models.catalog import CATALOG, resolve_model

__all__ = ["CATALOG", "resolve_model"]
