"""The model's structure: the block of each parameter (layers), the decay and lr of each depth (groups)."""
