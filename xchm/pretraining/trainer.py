"""``xchm.pretrain``: continue DINO self-supervised training of the backbone on chips.

A student network (backbone + heads) learns to match an EMA teacher on multi-crop
views of unlabeled chips (:mod:`.augment`): the DINO loss on CLS tokens, the
iBOT loss on masked patches and optionally KoLeo. Chips stream from the cube as
images only (:class:`~xchm.training.data.ChipStream` with ``labels=False``) and are
normalised with the cube's statistics, so the backbone adapts to exactly the
inputs fine-tuning will give it. After every epoch the teacher backbone is saved as
an xchm checkpoint (``backbone/``, with a new, untrained decoder) that
``xchm.train(..., weights=...)`` accepts, and the full state
(``checkpoints/last.pt``) lets ``resume=True`` continue exactly.

The run directory, resume, checkpoints, logs, the non-finite loss check and DDP are
the shared run skeleton's (:class:`xchm.runs.run.Run`); this module holds what is
pretraining's own: the student and teacher, their losses, schedules and step.

Every random choice of a step (crops, jitter, masks) comes from a generator seeded
by (seed, epoch, step, rank), so a resumed run sees the very same views.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xchm.chips.cube import ChipCube, open_cube
from xchm.pretraining.config import PretrainConfig
from xchm.runs.precision import autocast
from xchm.runs.result import RunResult
from xchm.runs.run import Run

__all__ = ["pretrain", "PretrainResult"]

#: Below this teacher_information (nats, epoch mean) pretraining warns of collapse.
COLLAPSED_NATS = 0.01

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult(RunResult):
    """What :func:`pretrain` returns (``to_dict()``: the same as plain JSON)."""

    backbone: Path | str
    """xchm checkpoint of the teacher backbone (pass it as ``weights=`` to ``xchm.train``);
    a URL when the run's directory is one."""
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
        ``checkpoints/last.pt``, ``metrics.jsonl``, ``metrics.csv``, ``config.json``
        (and ``tensorboard/`` with ``config.tensorboard``). It must be new, empty or
        a pretraining run (see ``xchm.outputs``); nothing else is touched.
    resume
        Continue the run in ``output`` from its last checkpoint; the cube, model,
        weights and config must be the run's own (:mod:`xchm.runs.job`).
    device
        Torch device (default: this process's CUDA device, else the CPU).
    progress
        Show one progress bar over every step of the run, with a summary line per
        epoch above it (rank 0).

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
    from xchm.runs.distributed import place
    from xchm.training.data import ChipStream

    cfg = config or PretrainConfig()
    cube = cube if isinstance(cube, ChipCube) else open_cube(cube)
    if cfg.split is not None:
        cube = cube.sel(split=cfg.split)
    where = place(device)  # before the run directory is created
    stream = ChipStream(  # checks the batch size before the run directory is made
        cube,
        split=None,
        batch_size=cfg.batch_size,
        buffer_chunks=cfg.buffer_chunks,
        seed=cfg.seed,
        rank=where.rank,
        world_size=where.world,
        labels=False,
    )
    run = Run.start(
        "pretraining", cube, cfg, output, place=where, model=model, weights=weights, resume=resume
    )
    steps = (
        len(stream)
        if cfg.max_steps_per_epoch is None
        else min(len(stream), cfg.max_steps_per_epoch)
    )
    ssl = _SelfDistillation(cube, cfg, model, weights, run.device, steps, run.rank)
    ssl.build()
    run.restore(ssl.load)
    try:
        return _loop(run, ssl, stream, progress)
    finally:
        run.close()


def _loop(
    run: Run[PretrainConfig], ssl: _SelfDistillation, stream: Any, progress: bool
) -> PretrainResult:
    from xchm.runs.distributed import wrap

    epoch, batch, partial, history = run.position()
    student = wrap(ssl.student, run.device)
    while epoch < ssl.cfg.epochs:
        sums = _run_epoch(run, ssl, student, stream, epoch, batch, partial, history, progress)
        row = ssl.epoch_row(epoch, sums, run.world)
        history.append(row)
        epoch, batch, partial = epoch + 1, 0, {}
        # Backbone before state: a run killed in between redoes the epoch (exactly)
        # rather than finishing with the previous epoch's backbone.
        ssl.save_backbone(run, row)
        run.checkpoint(epoch, 0, {}, history, ssl.parts())
        run.log(history)
        if run.main:
            _warn_if_collapsed(row)
    return PretrainResult(backbone=run.result("backbone"), history=history)


def _run_epoch(
    run: Run[PretrainConfig],
    ssl: _SelfDistillation,
    student: Any,
    stream: Any,
    epoch: int,
    start: int,
    partial: dict[str, Any],
    history: list[dict[str, Any]],
    progress: bool,
) -> dict[str, float]:
    """Train one epoch from batch ``start``; return its sums over all processes."""
    from xchm.runs.distributed import all_reduce_sum

    sums = {k: float(v) for k, v in partial.items() if k != "seconds"}
    t0 = time.perf_counter() - float(partial.get("seconds", 0.0))  # resumed: time so far
    stream.set_epoch(epoch, start_batch=start)
    bar = run.progress(ssl.steps, epoch, start, "step", progress)  # the fit's one bar
    for i, raw in enumerate(stream, start=start):
        if i >= ssl.steps:
            break
        values = ssl.step(run, student, raw, epoch, i)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        sums["steps"] = sums.get("steps", 0.0) + 1
        bar.set_postfix(loss=f"{sums['loss'] / sums['steps']:.3f}", refresh=False)
        bar.update()
        if run.checkpoint_due(i + 1, ssl.steps):
            done = {**sums, "seconds": time.perf_counter() - t0}
            run.checkpoint(epoch, i + 1, done, history, ssl.parts())
    keys = sorted(sums)
    totals = all_reduce_sum([sums[k] for k in keys], run.device)
    return {**dict(zip(keys, totals, strict=True)), "seconds": time.perf_counter() - t0}


@dataclass
class _SelfDistillation:
    """Student, teacher, their losses and optimiser: what a pretraining step needs."""

    cube: ChipCube
    cfg: PretrainConfig
    model_name: str | Path
    weights: str | Path | None
    device: Any
    steps: int
    """Optimisation steps per epoch (each process)."""
    rank: int = 0

    # -- set-up -----------------------------------------------------------------------
    def build(self) -> None:
        import torch

        from xchm.pretraining.heads import DINOLoss, IBOTLoss
        from xchm.pretraining.network import SelfDistillationNet
        from xchm.runs.model import model_for_cube

        cfg = self.cfg
        self.model = model_for_cube(self.cube, self.model_name, self.weights, seed=cfg.seed)
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

    def parts(self) -> dict[str, Any]:
        """Return pretraining's entries of the saved state (state dicts)."""
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
            "ibot_loss": self.ibot_loss.state_dict(),
            "optimizer": self.opt.state_dict(),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`parts` (:meth:`xchm.runs.run.Run.restore` calls it)."""
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        self.ibot_loss.load_state_dict(state["ibot_loss"])
        self.opt.load_state_dict(state["optimizer"])

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

    def step(
        self, run: Run[PretrainConfig], student: Any, raw: Any, epoch: int, index: int
    ) -> dict[str, float]:
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
        run.check_loss(float(loss.detach()), epoch, index, "Lower lr or lengthen warmup_epochs")
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
    def epoch_row(self, epoch: int, sums: dict[str, float], world: int) -> dict[str, Any]:
        """Means over the epoch's steps (all processes) and the schedules at its end."""
        sums = dict(sums)
        seconds = sums.pop("seconds")
        n = max(sums.pop("steps", 0.0), 1.0)
        sched = self.schedules((epoch + 1) * self.steps - 1)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({k: v / n for k, v in sorted(sums.items())})
        row.update(
            {
                "steps": int(n) // world,
                "lr": sched["lr"],
                "weight_decay": sched["weight_decay"],
                "momentum": sched["momentum"],
                "teacher_temp": sched["teacher_temp"],
                "seconds": seconds,
            }
        )
        return row

    def save_backbone(self, run: Run[PretrainConfig], row: dict[str, Any]) -> None:
        """Save the teacher backbone with the base model's new decoder (``backbone/``)."""
        net = self.model
        trained = net.backbone
        net.backbone = self.teacher.backbone
        provenance = {
            "pretraining": "dino",
            "pretrained_on": str(self.cube.path),
            "pretraining_chips": len(self.cube),
            "epoch": row["epoch"],
            "loss": row["loss"],
            "decoder": (
                f"from {self.model_name} (not pretrained)"
                if Path(str(self.model_name)).is_dir()
                else "untrained: fine-tune with xchm.train(..., weights=this directory)"
            ),
        }
        try:
            run.save_model(net, "backbone", provenance)
        finally:
            net.backbone = trained


def _warn_if_collapsed(row: dict[str, Any]) -> None:
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


def _param_groups(net: Any, cfg: PretrainConfig) -> list[dict[str, Any]]:
    """AdamW groups of the student: layer-wise lr decay in the backbone, decay on matrices.

    The layer scales are timm's ``param_groups_layer_decay`` with DINOv2/DINOv3's
    layer map (:meth:`~xchm.pretraining.network.SelfDistillationNet.group_matcher`):
    block ``i`` of ``L`` at ``layer_decay ** (L - i)``, the embeddings and tokens at
    ``layer_decay ** (L + 1)``, the final norm and the heads at 1. The backbone's
    rates are then scaled by ``backbone_lr_scale``. Weight decay (``wd_scale`` 1)
    applies to matrices only, not to biases, norms, tokens or the prototypes.

    Parameters of one rate and decay share a group, in the network's order: timm's
    groups are per layer, and fewer groups keep the optimiser state of runs saved
    before resumable. Frozen parameters are left out (timm's rule; the student
    trains every parameter).
    """
    from timm.optim import param_groups_layer_decay

    by_layer = param_groups_layer_decay(
        net,
        weight_decay=1.0,  # so a group's weight_decay is its wd_scale
        no_weight_decay_list=("*token", "*prototypes"),
        layer_decay=cfg.layer_decay,
    )
    found = {id(p): (g["lr_scale"], g["weight_decay"]) for g in by_layer for p in g["params"]}
    backbone = {id(p) for p in net.backbone.parameters()}
    groups: dict[tuple[bool, float, bool], list[Any]] = {}
    for _, p in net.named_parameters():
        if id(p) not in found:
            continue
        layer_scale, decay = found[id(p)]
        in_backbone = id(p) in backbone
        scale = cfg.backbone_lr_scale * layer_scale if in_backbone else layer_scale
        groups.setdefault((in_backbone, scale, decay > 0), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "wd_scale": 1.0 if decay else 0.0,
            "lr_scale": scale,
        }
        for (_, scale, decay), params in sorted(groups.items())
    ]


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
