"""GAN losses of the reference recipe: non-saturating logistic, R1, balanced consistency regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D loss: softplus(-D(x)) + softplus(D(G(z))), each averaged over its batch."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |dD(x)/dx|^2; keeps the graph so the penalty can be back-propagated."""
    (grad,) = torch.autograd.grad(outputs=real_logits.sum(), inputs=real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def bcr_loss(logits: torch.Tensor, logits_augmented: torch.Tensor) -> torch.Tensor:
    """bCR term: MSE between D on augmented and on clean images (both sides keep their gradient)."""
    return F.mse_loss(logits_augmented.float(), logits.float())
