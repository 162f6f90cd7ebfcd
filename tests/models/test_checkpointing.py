"""Activation checkpointing (``Generator(checkpoint_blocks=True)``, meant for the 1024 model) changes memory, not
maths."""

import torch

from tests.tiny import tiny_g32 as tiny


def _loss_and_grads(checkpoint_blocks: bool):
    G = tiny(checkpoint_blocks=checkpoint_blocks).train()
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1))
    image = G(z)
    loss = (image * torch.linspace(-1, 1, image.numel()).view_as(image)).sum()
    loss.backward()
    return image.detach(), {n: p.grad for n, p in G.named_parameters() if p.grad is not None}


def test_checkpointed_blocks_give_the_same_images_and_gradients():
    plain_image, plain_grads = _loss_and_grads(False)
    ckpt_image, ckpt_grads = _loss_and_grads(True)
    assert torch.equal(plain_image, ckpt_image)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def _saved_bytes(checkpoint_blocks: bool) -> int:
    """Bytes autograd keeps for the backward of one training forward."""
    G = tiny(checkpoint_blocks=checkpoint_blocks).train()
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        G(z)
    return sum(saved)


def test_checkpointing_keeps_fewer_activations():
    assert _saved_bytes(True) < 0.5 * _saved_bytes(False)
