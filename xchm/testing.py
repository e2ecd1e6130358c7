"""Public builders for tests, examples and demos: synthetic weights files.

Real DINOv3 weights are gated and large; these helpers write small random
backbones in the on-disk layouts xchm reads, so loaders can be exercised (and
demonstrated) offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["export_meta_state_dict", "random_backbone", "write_meta_weights"]

# Parameters a fresh timm model initialises to constants; randomised so loaders are tested.
_SCALES = ("gamma_1", "gamma_2", "norm1.weight", "norm2.weight", "norm.weight")


def random_backbone(preset: str = "test-tiny", *, seed: int = 0, window: int = 64) -> Any:
    """Build a preset's RGB backbone with random weights (as a pretrained file would hold).

    Layer-scale and norm parameters are randomised too, so loaders that drop or
    mix up any tensor produce different features.
    """
    import torch

    from xchm.models.backbone import build_backbone
    from xchm.models.presets import get_preset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(get_preset(preset), window)
        with torch.no_grad():
            for name, p in backbone.named_parameters():
                if name.endswith(_SCALES):
                    p.uniform_(0.5, 1.5)
                elif name.endswith(("bias", "q_bias", "v_bias")):
                    p.normal_(0.0, 0.1)
    return backbone


def export_meta_state_dict(backbone: Any) -> dict[str, torch.Tensor]:
    """Write a timm DINOv3 backbone's tensors in Meta's original key layout.

    Meta's layout: ``cls_token``, ``storage_tokens``, ``mask_token``,
    ``patch_embed.proj.*``, ``rope_embed.periods`` (bf16-rounded),
    ``blocks.N.attn.qkv.{weight,bias,bias_mask}`` (one fused bias whose key part is
    masked out), ``blocks.N.ls{1,2}.gamma``, ``blocks.N.mlp.{fc1,fc2}`` (or
    ``w1/w2/w3`` for SwiGLU), ``norm.*``. The key bias written here is random:
    Meta's model multiplies it by a zero mask, so loaders must drop it. The SAT files'
    ``local_cls_norm.*`` (unused at inference) is not written.

    This writer and xchm's loader could share a misreading of Meta's layout, so
    ``tests/models/test_meta_layout.py`` checks the loader against a key table
    written from Meta's source and against transformers' own conversion instead.
    """
    import torch

    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    out: dict[str, torch.Tensor] = {
        "cls_token": sd.pop("cls_token"),
        "storage_tokens": sd.pop("reg_token"),
        "mask_token": torch.zeros(1, sd["norm.weight"].shape[0]),
        "rope_embed.periods": backbone.rope.periods.detach().to(torch.bfloat16),
    }
    for key in [k for k in sd if k.startswith("rope.") or k.endswith(".k_bias")]:
        sd.pop(key)
    renames = {
        "gamma_1": "ls1.gamma",
        "gamma_2": "ls2.gamma",
        "mlp.fc1_g": "mlp.w1",
        "mlp.fc1_x": "mlp.w2",
    }
    for key in [k for k in sd if k.endswith(".attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        q, v = sd.pop(key), sd.pop(prefix + "v_bias")
        k_random = torch.randn_like(q)
        out[prefix + "qkv.bias"] = torch.cat([q, k_random, v])
        out[prefix + "qkv.bias_mask"] = torch.cat(
            [torch.ones_like(q), torch.zeros_like(q), torch.ones_like(v)]
        )
    swiglu = any(".mlp.fc1_g." in k for k in sd)
    for key, value in sd.items():
        new = key
        for old, meta in renames.items():
            new = new.replace(old, meta)
        if swiglu:
            new = new.replace("mlp.fc2", "mlp.w3")
        out[new] = value
    return out


def write_meta_weights(
    path: str | os.PathLike[str], preset: str = "test-tiny", *, seed: int = 0
) -> nn.Module:
    """Write a random backbone of ``preset`` as a Meta-layout ``.pth`` file.

    Returns the backbone whose tensors were written (to compare against).

    Examples
    --------
    >>> import tempfile, xchm
    >>> from xchm.testing import write_meta_weights
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_meta_weights(f"{tmp}/meta.pth")
    ...     model = xchm.load_model("test-tiny", weights=f"{tmp}/meta.pth")
    >>> model.card.provenance["weights_layout"]
    'meta'
    """
    import torch

    backbone = random_backbone(preset, seed=seed)
    torch.save(export_meta_state_dict(backbone), Path(path))
    return backbone


def responsive_model(preset: str = "test-tiny", *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build an untrained model whose output varies strongly with its input.

    A freshly initialised decoder in eval mode shrinks activations through its
    BatchNorm layers (running statistics 0/1), so its output is almost constant.
    This calibrates the BatchNorm statistics on random chips and widens the
    output layer, which makes window seams and chunking errors visible in tests
    and benchmarks without any training. Heights are meaningless.
    """
    import torch

    from xchm.models.api import load_model

    model = load_model(preset, seed=seed, **kwargs)
    for module in model.decoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    generator = torch.Generator().manual_seed(seed)
    shape = (16, model.card.num_bands, model.card.window, model.card.window)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(shape, generator=generator))
        output: Any = model.decoder.output  # the reference decoder's last convolution
        torch.nn.init.normal_(output.weight, std=2.0, generator=generator)
    return model.eval()


def fitted_model(*, steps: int = 60, seed: int = 0) -> nn.Module:
    """Fit test-tiny for a few seconds to map a smooth synthetic scene to heights.

    The target is a smooth function of the NIR band, learned from random 64x64
    windows. The model is far from accurate, but like a real CHM model its
    output varies smoothly inside a window and is unreliable at window edges,
    so it reveals seams (untrained models do not). Deterministic on a given CPU;
    about 9 s on 2 CPU cores.
    """
    import torch

    from xchm.models.api import load_model

    model = load_model("test-tiny", seed=seed)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    nir = 2500 + 1500 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 300, yy.shape)
    image = np.stack([nir, 0.5 * nir, 0.4 * nir]).clip(0, 9000)
    z = torch.from_numpy(model.card.normalize(image))
    target = torch.from_numpy((nir / 300.0).astype(np.float32))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    # One thread: float sums in another order change this short fit visibly (seam
    # ratios of 1.7 with 2 threads against 2.8 with 1), so tests would depend on the CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # The decoder's dropout draws from the global RNG: seed it here (and leave the
    # caller's stream as it was), else every fit differs (seam ratios 2.0 to 3.6).
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(steps):
                ys, xs = torch.randint(0, 192, (2, 16), generator=generator)
                pairs = list(zip(ys, xs, strict=True))
                x = torch.stack([z[:, y : y + 64, x : x + 64] for y, x in pairs])
                t = torch.stack([target[y : y + 64, x : x + 64] for y, x in pairs])
                loss = (model(x) - t[:, None]).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
