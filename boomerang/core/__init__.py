"""Core: pure model plumbing (architecture adapters, layer maps, patch plans, configs, patching, hooks)."""
