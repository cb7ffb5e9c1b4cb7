"""DMDNet's official-name remap (`dmdnet.network.model.official_to_ours` and back)."""
from __future__ import annotations

import torch

from dmdnet.network.model import DMDNet, official_to_ours, ours_to_official


def meta_state(shapes: dict) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_released_keys_convert_and_load_strictly(official_dmdnet_shapes):
    official = meta_state(official_dmdnet_shapes)
    ours = official_to_ours(official)
    with torch.device("meta"):
        model = DMDNet()
    model.load_state_dict(ours, strict=True, assign=True)
    back = ours_to_official(ours)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)


def test_dataparallel_prefix_is_stripped(official_dmdnet_shapes):
    prefixed = {"module." + k: v for k, v in meta_state(official_dmdnet_shapes).items()}
    with torch.device("meta"):
        model = DMDNet()
    model.load_state_dict(official_to_ours(prefixed), strict=True, assign=True)


def test_unknown_keys_pass_through_for_reporting():
    converted = official_to_ours({"not_a_dmdnet_key": torch.zeros(1)})
    assert list(converted) == ["not_a_dmdnet_key"]
