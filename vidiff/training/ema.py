"""Exponential moving average of the trainable weights.

Only the parameters being trained are averaged (the frozen ones never change), so the EMA of a
temporal-only fine-tune costs the size of the temporal layers. Its `state_dict` / `load_state_dict` are
saved and restored with each checkpoint as safetensors + JSON (training/state.py).

Under FSDP2 the shadows are built from the sharded parameters, so each rank averages its own shard (the update
is elementwise: averaging shards is averaging the whole). `state_dict` gathers the full shadows (every rank
calls it), `load_state_dict` cuts full shadows back into shards, and `unsharded` is a full copy for export.
"""
from __future__ import annotations

import contextlib

import torch

from vidiff.training.parallel import full_tensor, is_shard, shard_like


class EMA:
    """Shadow copies (fp32) of the named parameters `params`, updated after every optimiser step.

    decay_n = min(decay, (1 + n) / (10 + n)) for the n-th update: the usual warm-up, so early averages are
    not dominated by the random / pretrained starting point.
    """

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float = 0.9999):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in named_params.items()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        decay = self.current_decay()
        for name, p in named_params.items():
            shadow = self.shadow[name]
            shadow.lerp_(p.detach().to(shadow.device, torch.float32), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        for name, p in named_params.items():
            p.copy_(self.shadow[name].to(p.device, p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, named_params: dict[str, torch.nn.Parameter]):
        """Temporarily load the averaged weights into the model (export, validation), then restore."""
        backup = {name: p.detach().clone() for name, p in named_params.items()}
        self.copy_to(named_params)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in named_params.items():
                    p.copy_(backup[name])

    def to(self, device) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        """Decay, update count and the full shadows on the CPU (gathered from the shards under FSDP)."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: full_tensor(v).cpu() for k, v in self.shadow.items()}}

    def unsharded(self) -> "EMA":
        """This EMA with full shadows (a gathering copy under FSDP; itself when nothing is sharded)."""
        if not any(is_shard(v) for v in self.shadow.values()):
            return self
        plain = EMA({}, self.decay)
        plain.num_updates, plain.shadow = self.num_updates, {k: full_tensor(v) for k, v in self.shadow.items()}
        return plain

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        unexpected = set(state["shadow"]) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the trainable parameters: {len(missing)} missing "
                             f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected "
                             f"(e.g. {sorted(unexpected)[:3]}); was train.trainable changed since the checkpoint?")
        self.decay = state["decay"]
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: shard_like(state["shadow"][k].float(), like).clone() for k, like in self.shadow.items()}
