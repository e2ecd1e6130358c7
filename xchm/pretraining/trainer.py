"""``xchm.pretrain``: continue DINO self-supervised training of the backbone on chips.

A student network (backbone + heads) learns to match an EMA teacher on multi-crop
views of unlabeled chips (:mod:`.augment`): the DINO loss on CLS tokens, the
iBOT loss on masked patches and optionally KoLeo. Chips stream from the cube
(:class:`~.data.ImageBatches`) and are normalised with the cube's statistics, so
the backbone adapts to exactly the inputs fine-tuning will give it. After every
epoch the teacher backbone is saved as an xchm checkpoint (``backbone/``, with a
new, untrained decoder) that ``xchm.train(..., weights=...)`` accepts, and the
full state (``checkpoints/last.pt``) lets ``resume=True`` continue exactly.

Every random choice of a step (crops, jitter, masks) comes from a generator seeded
by (seed, epoch, step, rank), so a resumed run sees the very same views.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xchm.chips.cube import ChipCube, open_cube
from xchm.errors import InputError, NonFiniteLossError, ResumeError
from xchm.pretraining.config import PretrainConfig
from xchm.runs.precision import autocast
from xchm.runs.state import capture_rng, open_run, restore_rng, save_model_dir, save_state

__all__ = ["pretrain", "PretrainResult"]

#: Below this teacher_information (nats, epoch mean) pretraining warns of collapse.
COLLAPSED_NATS = 0.01

log = logging.getLogger(__name__)
_STATE = Path("checkpoints") / "last.pt"
_FORMAT = "xchm-pretrain-state"


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` returns."""

    backbone: Path
    """xchm checkpoint of the teacher backbone (pass it as ``weights=`` to ``xchm.train``)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per-epoch losses, schedules, collapse diagnostics and time."""


def pretrain(
    cube: ChipCube | str | Path,
    *,
    model: str | Path = "dinov3-vitl16-sat",
    weights: str | Path | None = None,
    config: PretrainConfig | None = None,
    output: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Adapt a DINOv3 backbone to your imagery by self-distillation on unlabeled chips.

    Parameters
    ----------
    cube
        A chip cube (or its path), labeled or not; only its images are read
        (``config.split`` restricts them to one split label).
    model
        Preset name, or an xchm checkpoint directory whose backbone to continue.
    weights
        Pretrained backbone weights for a preset (Meta ``.pth``, HF folder, timm, or
        an xchm checkpoint); student and teacher both start from them.
    config
        Pretraining settings (:class:`PretrainConfig`).
    output
        Run directory: ``backbone/`` (xchm checkpoint of the teacher backbone),
        ``checkpoints/last.pt``, ``metrics.jsonl``, ``config.json``. It must be new,
        empty or a pretraining run (see ``xchm.outputs``); nothing else is touched.
    resume
        Continue the run in ``output`` from its last checkpoint; the cube, model,
        weights and config must be the run's own (:mod:`xchm.runs.job`).
    device
        Torch device (default: this process's CUDA device, else the CPU).
    progress
        Show a progress bar per epoch (rank 0).

    Returns
    -------
    PretrainResult

    Raises
    ------
    OutputExistsError
        ``output`` holds files xchm did not write, another kind of xchm output, or
        (without ``resume``) a pretraining run that made progress.
    PathNotFoundError
        ``resume=True`` but ``output`` holds no state to continue.
    ResumeError
        ``resume=True`` with another cube, model, weights, number of processes or
        config than the run's (the message names what changed); checked before any work.
    DeviceError
        ``device`` is not a torch device or is unavailable here.
    NonFiniteLossError
        The loss became NaN or infinite (the last checkpoint keeps the last good state).

    Examples
    --------
    >>> run = xchm.pretrain("unlabeled.zarr", model="dinov3-vitl16-sat",  # doctest: +SKIP
    ...                     weights="dinov3_vitl16_pretrain_sat493m.pth", output="runs/ssl")
    >>> xchm.train("chips.zarr", model="dinov3-vitl16-sat", weights=run.backbone,  # doctest: +SKIP
    ...            output="runs/ft")
    """
    import torch

    from xchm.pretraining.data import ImageBatches
    from xchm.runs.distributed import process_group, resolve_device
    from xchm.runs.job import fingerprint

    cfg = config or PretrainConfig()
    cube = cube if isinstance(cube, ChipCube) else open_cube(cube)
    if cfg.split is not None:
        cube = cube.sel(split=cfg.split)
    rank, world, local = process_group()
    dev = resolve_device(device, local)  # before the run directory is created
    batches = ImageBatches(  # checks the batch size before the run directory is made
        cube,
        batch_size=cfg.batch_size,
        buffer_chunks=cfg.buffer_chunks,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
    )
    out = Path(output)
    job = fingerprint(cube, model, weights, world)
    state = open_run(
        out,
        out / _STATE,
        cfg.to_dict(),
        job=job,
        resume=resume,
        rank=rank,
        expected_format=_FORMAT,
        config_type=PretrainConfig,
        kind="pretraining",
    )
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    steps = (
        len(batches)
        if cfg.max_steps_per_epoch is None
        else min(len(batches), cfg.max_steps_per_epoch)
    )
    run = _Run(cube, cfg, out, dev, rank, world, batches, steps, model, weights, job)
    run.build()
    if state is not None:
        run.restore(state)
    return run.loop(state or {}, progress and rank == 0)


@dataclass
class _Run:
    """One pretraining run in one process."""

    cube: ChipCube
    cfg: PretrainConfig
    output: Path
    device: Any
    rank: int
    world: int
    batches: Any
    steps: int
    model_name: str | Path
    weights: str | Path | None
    job: dict[str, Any] = field(default_factory=dict)
    """The run's fingerprint (:mod:`xchm.runs.job`), saved with its state."""

    # -- set-up -----------------------------------------------------------------------
    def build(self) -> None:
        import torch

        from xchm.pretraining.heads import DINOLoss, IBOTLoss
        from xchm.pretraining.network import SelfDistillationNet

        cfg = self.cfg
        self.model = _base_model(self.cube, self.model_name, self.weights, cfg.seed)
        backbone = self.model.backbone
        teacher_backbone = copy.deepcopy(backbone)  # before the student's mask hook
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.student = SelfDistillationNet(backbone, cfg)
        self.teacher = SelfDistillationNet(teacher_backbone, cfg)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.student.parameters():
            p.requires_grad_(True)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student.to(self.device).train()
        self.teacher.to(self.device).eval()
        opts = {"student_temp": cfg.student_temp, "center_momentum": cfg.center_momentum}
        self.dino_loss = DINOLoss(cfg.out_dim, **opts).to(self.device)
        self.ibot_loss = IBOTLoss(cfg.out_dim, **opts).to(self.device)
        self.opt = torch.optim.AdamW(_param_groups(self.student, cfg), lr=cfg.lr)
        named = self.student.named_parameters()
        self.prototypes = [p for name, p in named if name.endswith("prototypes")]

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.student.load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
            self.dino_loss.load_state_dict(state["dino_loss"])
            self.ibot_loss.load_state_dict(state["ibot_loss"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ResumeError(
                f"the state in {self.output / _STATE} does not fit the model "
                f"{str(self.model_name)!r}: it was saved by another model or heads. Pass the "
                "run's own model, or start a new run in another output directory "
                f"({str(err).splitlines()[0]})"
            ) from err
        restore_rng(state["rng"])

    # -- schedules --------------------------------------------------------------------
    def schedules(self, step: int) -> dict[str, float]:
        """Learning rate, weight decay, teacher momentum and temperature at ``step``."""
        from xchm.pretraining.heads import cosine_schedule, teacher_temperature

        cfg = self.cfg
        total = cfg.epochs * self.steps
        warm = round(cfg.warmup_epochs * self.steps)
        if step < warm:
            lr = cfg.lr * (step + 1) / warm
        else:
            lr = cosine_schedule(cfg.lr, cfg.min_lr, step - warm, max(total - warm, 1))
        wd_end = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
        return {
            "lr": lr,
            "weight_decay": cosine_schedule(cfg.weight_decay, wd_end, step, total),
            "momentum": cosine_schedule(cfg.momentum_start, cfg.momentum_end, step, total),
            "teacher_temp": teacher_temperature(
                cfg.teacher_temp_warmup,
                cfg.teacher_temp,
                step,
                round(cfg.teacher_temp_warmup_epochs * self.steps),
            ),
        }

    # -- the loop ---------------------------------------------------------------------
    def loop(self, state: dict[str, Any], progress: bool) -> PretrainResult:
        from xchm.runs.distributed import wrap

        self.history: list[dict[str, Any]] = list(state.get("history", []))
        epoch, batch = int(state.get("epoch", 0)), int(state.get("batch", 0))
        partial = dict(state.get("partial", {}))
        student = wrap(self.student, self.device)
        while epoch < self.cfg.epochs:
            row = self.epoch_row(epoch, self.run_epoch(student, epoch, batch, partial, progress))
            self.history.append(row)
            epoch, batch, partial = epoch + 1, 0, {}
            # Backbone before state: a run killed in between redoes the epoch (exactly)
            # rather than finishing with the previous epoch's backbone.
            self.save_backbone(row)
            self.save(epoch, 0, {})
            self.log(row)
        return PretrainResult(backbone=self.output / "backbone", history=self.history)

    def run_epoch(
        self, student: Any, epoch: int, start: int, partial: dict[str, Any], progress: bool
    ) -> dict[str, float]:
        import torch
        from tqdm.auto import tqdm

        from xchm.runs.distributed import all_reduce_sum

        sums = {k: float(v) for k, v in partial.items() if k != "seconds"}
        t0 = time.perf_counter() - float(partial.get("seconds", 0.0))  # resumed: time so far
        bar = tqdm(
            total=self.steps,
            initial=start,
            desc=f"pretrain {epoch}",
            unit="step",
            disable=not progress,
        )
        with bar:
            for i, raw in enumerate(self.batches.epoch(epoch, start), start=start):
                if i >= self.steps:
                    break
                values = self.step(student, torch.from_numpy(raw), epoch, i)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                sums["steps"] = sums.get("steps", 0.0) + 1
                bar.set_postfix(loss=f"{sums['loss'] / sums['steps']:.3f}")
                bar.update()
                every = self.cfg.checkpoint_every
                if every and (i + 1) % every == 0 and i + 1 < self.steps:
                    self.save(epoch, i + 1, {**sums, "seconds": time.perf_counter() - t0})
        keys = sorted(sums)
        totals = all_reduce_sum([sums[k] for k in keys], self.device)
        return {**dict(zip(keys, totals, strict=True)), "seconds": time.perf_counter() - t0}

    def step(self, student: Any, raw: Any, epoch: int, index: int) -> dict[str, float]:
        """One optimisation step on a raw batch; returns its loss terms and diagnostics."""
        import torch

        from xchm.models.normalize import prepare_inputs
        from xchm.pretraining.augment import multicrop
        from xchm.pretraining.heads import koleo_loss
        from xchm.pretraining.network import block_masks

        cfg = self.cfg
        step = epoch * self.steps + index
        sched = self.schedules(step)
        for group in self.opt.param_groups:
            group["lr"] = sched["lr"] * group["lr_scale"]
            group["weight_decay"] = sched["weight_decay"] * group["wd_scale"]
        seed = np.random.SeedSequence([cfg.seed, epoch, index, self.rank]).generate_state(1)
        gen = torch.Generator().manual_seed(int(seed[0]))
        x = prepare_inputs(raw, self.cube.nodata, self.model.card.statistics, self.device)
        glob, loc = multicrop(x, cfg, generator=gen)
        grid = tuple(self.model.backbone.patch_embed.grid_size)
        mask = block_masks(len(glob), grid, cfg, generator=gen).to(self.device)
        use_mask = mask if cfg.ibot_weight else None
        with autocast(self.device, cfg.mixed_precision), torch.no_grad():
            t_out = self.teacher(glob)
        with autocast(self.device, cfg.mixed_precision):
            s_out = student(glob, use_mask, loc)
        views = 2 + (0 if loc is None else cfg.local_crops)
        dino = self.dino_loss(
            s_out["cls"], t_out["cls"], n_views=views, teacher_temp=sched["teacher_temp"]
        )
        loss, terms = dino, {"dino_loss": float(dino.detach())}
        if cfg.ibot_weight:
            ibot = self.ibot_loss(
                s_out["patch"], t_out["patch"], mask, teacher_temp=sched["teacher_temp"]
            )
            loss = loss + cfg.ibot_weight * ibot
            terms["ibot_loss"] = float(ibot.detach())
        if cfg.koleo_weight:
            first, second = s_out["features"].chunk(2)
            koleo = (koleo_loss(first) + koleo_loss(second)) / 2
            loss = loss + cfg.koleo_weight * koleo
            terms["koleo_loss"] = float(koleo.detach())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"pretraining loss is {float(loss.detach())} at epoch {epoch} step {index}: "
                "training diverged. Lower lr or lengthen warmup_epochs and start a new run in "
                "another output directory (a resume repeats the same steps exactly)"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if step < round(cfg.freeze_prototypes_epochs * self.steps):
            for p in self.prototypes:
                p.grad = None  # AdamW skips them: no update, no decay, no moments
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.opt.step()
        ema_update(self.teacher, self.student, sched["momentum"])
        self.dino_loss.update_center(t_out["cls"])
        if cfg.ibot_weight:
            self.ibot_loss.update_center(t_out["patch"])
        return {"loss": float(loss.detach()), **terms, **_entropies(t_out["cls"], sched)}

    # -- outputs ----------------------------------------------------------------------
    def epoch_row(self, epoch: int, sums: dict[str, float]) -> dict[str, Any]:
        """Means over the epoch's steps (all processes) and the schedules at its end."""
        sums = dict(sums)
        seconds = sums.pop("seconds")
        n = max(sums.pop("steps", 0.0), 1.0)
        sched = self.schedules((epoch + 1) * self.steps - 1)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({k: v / n for k, v in sorted(sums.items())})
        row.update(
            {
                "steps": int(n) // self.world,
                "lr": sched["lr"],
                "weight_decay": sched["weight_decay"],
                "momentum": sched["momentum"],
                "teacher_temp": sched["teacher_temp"],
                "seconds": seconds,
            }
        )
        return row

    def save(self, epoch: int, batch: int, partial: dict[str, Any]) -> None:
        """Save the full state at a data position (epoch, batches done in it)."""
        if self.rank != 0:
            return
        state = {
            "format": _FORMAT,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
            "ibot_loss": self.ibot_loss.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": capture_rng(),
            "epoch": epoch,
            "batch": batch,
            "partial": partial,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "job": self.job,
        }
        save_state(state, self.output / _STATE)

    def save_backbone(self, row: dict[str, Any]) -> None:
        """Save the teacher backbone with the base model's new decoder (atomic swap)."""
        if self.rank != 0:
            return
        net = self.model
        trained = net.backbone
        net.backbone = self.teacher.backbone
        card = net.card
        net.card = card.replace(
            provenance={
                **dict(card.provenance),
                "pretraining": "dino",
                "pretrained_on": str(self.cube.path),
                "cube_content_sha256": self.job.get("cube", {}).get("content"),
                "pretraining_chips": len(self.cube),
                "epoch": row["epoch"],
                "loss": row["loss"],
                "config": self.cfg.to_dict(),
                "model": str(self.model_name),
                "weights": None if self.weights is None else str(self.weights),
                "decoder": (
                    f"from {self.model_name} (not pretrained)"
                    if Path(str(self.model_name)).is_dir()
                    else "untrained: fine-tune with xchm.train(..., weights=this directory)"
                ),
            }
        )
        try:
            save_model_dir(net, self.output / "backbone")
        finally:
            net.backbone, net.card = trained, card

    def log(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("pretraining epoch %d: %s", row["epoch"], row)
        if row["teacher_information"] < COLLAPSED_NATS:
            log.warning(
                "pretraining epoch %d: the teacher's outputs hardly depend on the chip "
                "(teacher_information %.2g nats < %g): collapsed. From random weights a "
                "deep ViT starts like this and needs far more steps: start from pretrained "
                "weights. If it collapsed after a good start, lower lr or lengthen "
                "warmup_epochs / teacher_temp_warmup_epochs",
                row["epoch"],
                row["teacher_information"],
                COLLAPSED_NATS,
            )


def _base_model(cube: ChipCube, model: str | Path, weights: str | Path | None, seed: int) -> Any:
    """Load the model whose backbone is pretrained, with the cube's bands and window."""
    from xchm.models import api

    if Path(str(model)).is_dir():
        net = api.load_model(model)
        if net.card.bands != cube.bands:
            raise InputError(
                f"checkpoint {model} expects bands {net.card.bands}; the cube has {cube.bands}"
            )
        return net
    options: dict[str, Any] = {"bands": cube.bands, "window": cube.window, "seed": seed}
    if not (weights is not None and api.is_checkpoint(weights)):
        options["statistics"] = cube.statistics  # else the checkpoint's own carry over
    if cube.pixel_size is not None:
        options["pixel_size"] = cube.pixel_size
    return api.load_model(str(model), weights=weights, **options)


def _param_groups(net: Any, cfg: PretrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices only; backbone at its layer's rate scale."""
    depth = len(net.backbone.blocks)
    groups: dict[tuple[bool, float, bool], list[Any]] = {}
    for name, p in net.named_parameters():
        decay = p.ndim > 1 and not name.endswith(("token", "prototypes"))
        in_backbone = name.startswith("backbone.")
        scale = 1.0
        if in_backbone:
            layer = _backbone_layer(name.removeprefix("backbone."), depth)
            scale = cfg.backbone_lr_scale * cfg.layer_decay ** (depth + 1 - layer)
        groups.setdefault((in_backbone, scale, decay), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "wd_scale": 1.0 if decay else 0.0,
            "lr_scale": scale,
        }
        for (_, scale, decay), params in sorted(groups.items())
    ]


def _backbone_layer(name: str, depth: int) -> int:
    """0 for the embeddings and tokens, ``i + 1`` for block ``i``, ``depth + 1`` above."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.split(".")[0] in ("norm", "fc_norm", "head"):  # not norm_pre: below the blocks
        return depth + 1
    return 0


def ema_update(teacher: Any, student: Any, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter.

    Examples
    --------
    >>> import torch
    >>> t, s = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = t.weight.fill_(1.0), s.weight.fill_(3.0)
    >>> ema_update(t, s, 0.75)
    >>> t.weight.tolist()
    [[1.5, 1.5]]
    """
    import torch

    with torch.no_grad():
        t_params = list(teacher.parameters())
        s_params = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def _entropies(teacher_logits: Any, sched: dict[str, float]) -> dict[str, float]:
    """Collapse diagnostics of the teacher's (uncentred) prototype distribution.

    ``teacher_entropy`` (mean per-chip entropy) near ``log(out_dim)`` means uniform
    outputs; ``teacher_batch_entropy`` (entropy of the batch mean) near 0 means every
    chip maps to the same prototype. Both are collapse, and so is any state where
    the two are equal: ``teacher_information`` (their difference, the mutual
    information between chip and prototype) near 0 means the teacher's output does
    not depend on the chip.
    """
    import torch

    with torch.no_grad():
        p = torch.softmax(teacher_logits.float() / sched["teacher_temp"], dim=-1)
        per = -(p * torch.log(p.clamp(min=1e-12))).sum(-1).mean()
        mean = p.mean(0)
        batch = -(mean * torch.log(mean.clamp(min=1e-12))).sum()
    return {
        "teacher_entropy": float(per),
        "teacher_batch_entropy": float(batch),
        "teacher_information": float(batch - per),
    }
