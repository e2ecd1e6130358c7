"""Reference checkpoints at full size: exactness and load times (ViT-L/16 + the CNN decoder).

Builds a random replica of the reference model at its real size (transformers'
``DINOv3ViTModel`` with the SAT-493M ViT-L config, the decoder of the test suite's
replica with the reference's widths), saves it as the reference's training does
(transformers 4.x keys, AdamW moments of the head), then times
``xchm.load_model(FILE.pth)``, ``import_reference`` and ``xchm.load_model(DIR)`` and
compares heights with the replica on a few chips. Needs transformers (dev extra).

Run: ``.venv/bin/python benchmarks/reference_import.py [--chips 4] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xchm  # noqa: E402
from tests.models.test_reference import (  # noqa: E402  (the replica of the test suite)
    DINOv3DepthHead,
    depth_head,
    randomize_head,
    to_4x,
)
from xchm.models.reference_io import import_reference  # noqa: E402


def replica(seed: int = 0) -> DINOv3DepthHead:
    import transformers

    config = transformers.DINOv3ViTConfig(  # facebook/dinov3-vitl16-pretrain-sat493m
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=64,
        patch_size=16,
        num_register_tokens=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-5,
        rope_theta=100.0,
        key_bias=False,
    )
    torch.manual_seed(seed)
    backbone = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "mask_token" not in name and p.ndim == 1:
                p.normal_(0.0, 0.2)
        images = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        tokens = backbone(pixel_values=images).last_hidden_state[:, 5:21]
    head = depth_head(1024, (512, 256, 128, 64), (128, 64, 32), 16)
    randomize_head(head, seed, tokens.transpose(1, 2).reshape(16, 1024, 4, 4))
    return DINOv3DepthHead(backbone, head).eval()


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    model = replica()
    built = time.perf_counter() - start
    results: dict[str, object] = {"build_replica_s": round(built, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "best_dinov3_replica.pth"
        optimizer = torch.optim.AdamW(model.depth_head.parameters(), lr=5e-5)
        for p in model.depth_head.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        state = to_4x(model.state_dict())
        torch.save(
            {"epoch": 1, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()},
            pth,
        )
        results["file_mb"] = round(pth.stat().st_size / 2**20)
        results["tensors"] = len(state)
        loaded, t_pth, all_pth = timed(lambda: xchm.load_model(pth), args.repeats)
        folder = Path(tmp) / "imported"
        _, t_import, _ = timed(lambda: import_reference(pth, folder, overwrite=True), 1)
        again, t_dir, all_dir = timed(lambda: xchm.load_model(folder), args.repeats)
        x = torch.randn(args.chips, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            expected = model(x)
            got = loaded(x)[:, 0]
            same = torch.equal(got, again(x)[:, 0])
        results.update(
            load_pth_s=round(t_pth, 2),
            load_pth_all_s=[round(t, 2) for t in all_pth],
            import_s=round(t_import, 2),
            load_imported_s=round(t_dir, 2),
            load_imported_all_s=[round(t, 2) for t in all_dir],
            imported_mb=round((folder / "model.safetensors").stat().st_size / 2**20),
            heights_std_m=round(float(expected.std()), 2),
            max_abs_diff_m=float((got - expected).abs().max()),
            imported_equals_pth=same,
            threads=torch.get_num_threads(),
        )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
