"""Small models with the parameter kinds that grouping rules get wrong.

Each is a few thousand parameters at most, built in milliseconds on the CPU,
so a grouping rule (ours or anybody's) can be tested against all of them:
norm layers of every kind, a custom RMSNorm, tied embeddings, scalar
parameters, and tokens declared through ``no_weight_decay()`` by a nested
submodule behind a wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "RMSNorm",
    "TinyGPT",
    "TinyViT",
    "WrappedViT",
    "conv_net",
    "mlp_with_batchnorm",
]


def mlp_with_batchnorm(inputs: int = 8, hidden: int = 16, outputs: int = 3) -> nn.Sequential:
    """Linear → BatchNorm1d → ReLU → Linear."""
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


def conv_net(channels: int = 3, classes: int = 4) -> nn.Sequential:
    """Conv → GroupNorm → Conv → BatchNorm2d → pooled linear head."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


class RMSNorm(nn.Module):
    """A hand-written RMSNorm, as language models define their own: not a torch class."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = RMSNorm(width)
        self.mlp = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.attn(self.ln_1(x)).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(weights @ v)
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Token and position embeddings, two blocks, an output head tied to the token embedding.

    ``lm_head.weight`` *is* ``wte.weight`` (one tensor, two names), as in GPT-2;
    ``logit_scale`` is a learnable scalar.
    """

    def __init__(self, vocab: int = 32, context: int = 8, width: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList([_Block(width) for _ in range(2)])
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        self.logit_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x)) * self.logit_scale


class _PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch, stride=patch)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """Patch embedding, a class token and position embedding, declared in ``no_weight_decay()``."""

    def __init__(self, channels: int = 3, size: int = 8, patch: int = 4, width: int = 16) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(channels, width, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, width))
        self.block = _Block(width)
        self.norm = nn.LayerNorm(width)

    def no_weight_decay(self) -> set[str]:
        # Names relative to this module, as timm models declare them.
        return {"cls_token", "pos_embed"}

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.block(x))[:, 0]


class WrappedViT(nn.Module):
    """A classifier that holds :class:`TinyViT` as a submodule, as a task wrapper would.

    The declaration lives on the nested backbone, not on this top-level module,
    which is where rules that only ask the top-level model miss it.
    """

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.backbone = TinyViT()
        self.head = nn.Linear(16, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))
