"""The study's training loop: standard training and FGSM with a random start (Wong et al. 2020,
"Fast is better than free"), one loop so the two recipes differ only in the images a step sees.

``fit`` trains one model on a TensorDataset, checkpointing after every epoch (the file
``checkpoint.load_model`` reads: {"meta", "model", "epoch", "step", ...}), and resumes from that
checkpoint; with one torch thread a seed gives the same weights every time on the same machine
and code. ``weights_hash`` is the fingerprint a study records for each model (of the weights
only: the checkpoint file also holds timings).

FGSM-RS, per batch: delta ~ U(-eps, eps); delta <- clip(delta + alpha sign(grad_x CE), -eps, eps);
x_adv = clip(x + delta, 0, 1); one SGD step on CE(model(x_adv), y). Wong et al. use alpha = 1.25 eps.
"""

from __future__ import annotations

import hashlib
import os
import time

import torch
import torch.nn.functional as F

from . import checkpoint, models

__all__ = ["fit", "fgsm_rs", "weights_hash"]


def weights_hash(state_dict: dict) -> str:
    """sha256 of every tensor of a state_dict (names, shapes, dtypes, bytes), in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fgsm_rs(model, x, y, eps: float, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """The FGSM-RS training example of x (the model's mode is left as it is: train mode)."""
    delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * eps
    delta.requires_grad_(True)
    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    (g,) = torch.autograd.grad(loss, [delta])
    delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


@torch.no_grad()
def _accuracy(model, images, labels, batch: int = 1000) -> float:
    model.eval()
    hits = sum(
        int((model(xb).argmax(1) == yb).sum())
        for xb, yb in zip(images.split(batch), labels.split(batch), strict=True)
    )
    return 100.0 * hits / max(1, len(labels))


def fit(
    path: str,
    train_set,
    test_set,
    num_classes: int,
    *,
    arch: str,
    shc: bool,
    width: float,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    milestones,
    weight_decay: float,
    max_steps: int = 0,
    adv_eps: float = 0.0,
    adv_alpha: float = 0.0,
    log=print,
) -> dict:
    """Train (or resume) the model checkpointed at ``path``; returns {"epochs": [per-epoch
    records], "test_acc": accuracy on the whole test set, "weights": weights_hash}. ``adv_eps`` > 0
    trains on FGSM-RS examples (``adv_alpha``). ``max_steps`` > 0 caps the steps of an epoch."""
    meta = {"arch": arch, "shc": shc, "small_input": True, "num_classes": num_classes, "width": width}
    images, labels = train_set.tensors
    test_x, test_y = test_set.tensors
    torch.manual_seed(seed)
    model = models.build(arch, num_classes, shc=shc, small_input=True, width=width)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    start, history = 0, []
    if os.path.isfile(path):
        state = checkpoint.read_training_state(path, meta, flag="study")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], list(state.get("history", []))
    steps = len(labels) // batch_size
    if max_steps:
        steps = min(steps, max_steps)
    for epoch in range(start, epochs):
        # Every epoch's order and random starts come from (seed, epoch) alone: a resumed run is the
        # same as one that never stopped.
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(labels), generator=gen)
        model.train()
        t, total = time.perf_counter(), 0.0
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            x, y = images[idx], labels[idx]
            if adv_eps > 0:
                x = fgsm_rs(model, x, y, adv_eps, adv_alpha, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        record = {
            "epoch": epoch + 1,
            "loss": total / max(1, steps),
            "test_acc": _accuracy(model, test_x, test_y),
            "seconds": time.perf_counter() - t,
        }
        history.append(record)
        log(f"    epoch {epoch + 1}/{epochs}: loss {record['loss']:.3f}, test {record['test_acc']:.2f}%")
        checkpoint.save(
            path,
            {
                "meta": meta,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "step": 0,
                "history": history,
            },
        )
    model.eval()
    return {
        "epochs": history,
        "test_acc": history[-1]["test_acc"] if history else _accuracy(model, test_x, test_y),
        "weights": weights_hash(model.state_dict()),
    }
