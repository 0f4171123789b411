"""ADPO's RLlib config checks at config time, and the learner's list grouping (no Ray start)."""

import pytest
import torch

from adpo_ray.rllib.algorithm import ADPOConfig


def test_bad_anchor_mode_fails_at_config_time():
    with pytest.raises(ValueError, match="unknown anchor mode 'sticky'"):
        ADPOConfig().environment("CartPole-v1").training(anchor_mode="sticky").validate()


def test_group_into_lists_pads_and_masks():
    from adpo_ray.rllib.learner import group_into_lists

    lists, mask = group_into_lists(torch.arange(5.0), 2)
    assert lists.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 0.0]]
    assert mask.tolist() == [[True, True], [True, True], [True, False]]
