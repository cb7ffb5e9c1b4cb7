"""The DMDNet network: its configuration, blocks, depth models and checkpoint remaps.

Nothing here imports `dmdnet.training` or `dmdnet.demo` (tests/test_layering.py)."""
