"""How a run spreads over processes: DDP (accelerate's default) or FSDP2, and the full views of a sharded run.

    accelerate launch --config_file configs/accelerate/1x8-fsdp2.yaml -m vidiff train CONFIG.yaml ...

FSDP2 is accelerate's own (`FullyShardedDataParallelPlugin(fsdp_version=2)`, which calls torch's `fully_shard`):
each layer of a U-Net block (resnet, transformer, temporal layer, resampler) is one sharded unit unless the
accelerate config names its own wrap policy, and every rank holds 1/N of the trainable weights, their gradients and their AdamW moments. Under mixed
precision the blocks compute in bf16 / fp16 and reduce gradients in fp32 (`MixedPrecisionPolicy(param_dtype,
reduce_dtype=float32)`: averaging N gradients in bf16 keeps about 3 significant digits).

accelerate shards on GPUs only; torch's `fully_shard` also runs on CPU over gloo. A CPU launch that asks for FSDP
(configs/accelerate/cpu-fsdp2-2proc.yaml: the tests' run) starts as accelerate's MULTI_CPU and is switched to its
FSDP2 path (`route_cpu_fsdp`), so the CPU test runs the code a GPU run does.

Checkpoints stay in the one-copy format of training/state.py: a sharded run gathers full state dicts on the main
process (CPU), `get_model_state_dict` / `get_optimizer_state_dict(full_state_dict=True, cpu_offload=True)`, the
optimiser's keyed by parameter index as torch's own `state_dict` is, and loads them back with
`set_model_state_dict` / `set_optimizer_state_dict`; so an FSDP checkpoint resumes under DDP and the other way
round. The EMA averages the local shards (training/ema.py), gathered for saving and export.
"""
from __future__ import annotations

import copy
import os
import warnings

import torch
from accelerate import FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


# ---------------------------------------------------------------------------------------------------------------
# the accelerator
# ---------------------------------------------------------------------------------------------------------------
def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP for the processes it starts."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(mixed_precision: str) -> FullyShardedDataParallelPlugin | None:
    """The FSDP plugin of the launch's config (its FSDP_* environment), with fp32 gradient reductions under
    mixed precision; None when the launch does not ask for FSDP."""
    if not fsdp_requested():
        return None
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_RESHARD_AFTER_FORWARD, ...
    if mixed_precision in PRECISIONS and plugin.fsdp_version == 2:
        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=PRECISIONS[mixed_precision],
                                                             reduce_dtype=torch.float32)
    return plugin


def wants_cpu(plugin) -> bool:
    """An FSDP launch of several processes on a machine without CUDA: accelerate must start it as MULTI_CPU."""
    return plugin is not None and not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def route_cpu_fsdp(accelerator, plugin) -> None:
    """A CPU (gloo) launch that asked for FSDP: switch accelerate's state from MULTI_CPU to its FSDP path, which
    accelerate takes on GPUs only though torch's `fully_shard` runs on CPU too."""
    if plugin is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(accelerator) -> bool:
    return accelerator is not None and getattr(accelerator, "distributed_type", None) == DistributedType.FSDP


def check_sharding(accelerator, train_config, distill_method: str | None = None) -> None:
    """FSDP2 shards the U-Net; what else would have to be sharded with it is refused with its reason."""
    if not is_sharded(accelerator):
        return
    if distill_method is not None:
        raise ValueError(f"distill.method={distill_method} is not supported under FSDP (the teacher and the target "
                         "network are whole copies of the U-Net); distil with DDP (configs/accelerate/1x8-ddp.yaml)")
    if train_config.trainable == "controlnet":
        raise ValueError("train.trainable=controlnet is not supported under FSDP (a ControlNet is a fraction of the "
                         "U-Net, which stays frozen); train it with DDP (configs/accelerate/1x8-ddp.yaml)")
    if train_config.trains_text:
        raise ValueError("train.train_text_encoder / train.new_tokens are not supported under FSDP (only the "
                         "U-Net is sharded); train them with DDP (configs/accelerate/1x8-ddp.yaml)")


def unit_classes(unet) -> list[str]:
    """The classes of the layers VideoUNet calls one by one: each block's resnets, transformers, temporal
    layers or motion modules, down- and upsamplers. (FSDP2 gathers a unit's shards in its forward hook, and
    VideoUNet walks a block's layers itself rather than calling the block's forward: the layers are the units.)"""
    return sorted({type(layer).__name__ for block in unet.blocks() for child in block.children()
                   if isinstance(child, torch.nn.ModuleList) for layer in child})


def wrap_layers(accelerator, unet) -> None:
    """Unless the accelerate config names a wrap policy: one FSDP unit per layer of `unit_classes`, the root
    unit holding the rest (conv_in, the time embedding, conv_out)."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.auto_wrap_policy is None and plugin.transformer_cls_names_to_wrap is None:
        plugin.auto_wrap_policy = transformer_auto_wrap_policy
        plugin.transformer_cls_names_to_wrap = unit_classes(unet)
    # FSDP2 warns that a unit returning a view would lose its backward hook to an in-place op on that view;
    # VideoUNet's layers return rearranged views but nothing updates them in place (tests/test_fsdp.py: FSDP's
    # gradients equal DDP's).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


# ---------------------------------------------------------------------------------------------------------------
# tensors, modules and optimisers: full views
# ---------------------------------------------------------------------------------------------------------------
def is_shard(tensor) -> bool:
    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it, in the same order); others as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut as `like` is (its mesh and placements) when `like` is a shard; else `full` on like's device."""
    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device_mesh.device_type, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device, like.dtype)


def sharded_parameters(model, names) -> dict[str, torch.nn.Parameter]:
    """The parameters named `names` as `model` holds them now (FSDP2 replaces each by its shard)."""
    found = dict(model.named_parameters())
    return {name: found[name] for name in names}


def full_model_state(accelerator, model) -> dict[str, torch.Tensor]:
    """The model's full weights: gathered to the main process's CPU under FSDP (empty on the other ranks; every
    rank must call), the unwrapped model's state_dict otherwise."""
    if isinstance(model, FSDPModule):
        return get_model_state_dict(model, options=_GATHER)
    model = accelerator.unwrap_model(model) if accelerator is not None else model
    return {name: full_tensor(value) for name, value in model.state_dict().items()}


def load_full_model_state(accelerator, model, weights: dict) -> None:
    """Inverse of `full_model_state`: every rank passes the full weights and keeps its shard."""
    if isinstance(model, FSDPModule):
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True))
        return
    model = accelerator.unwrap_model(model) if accelerator is not None else model
    model.load_state_dict(weights, strict=True)


def owner(model):
    """The module whose parameters the optimiser steps (a checkpoint view of some weights names its owner)."""
    return getattr(model, "owner", model)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # (accelerate's AcceleratedOptimizer wraps torch's)


def full_optimizer_state(accelerator, model, optimizer) -> dict:
    """The optimiser's state_dict (parameters by index, torch's form); under FSDP gathered from the shards
    to the main process (empty on the others; every rank must call)."""
    module = owner(model)
    if not isinstance(module, FSDPModule):
        return optimizer.state_dict()
    state = get_optimizer_state_dict(module, _inner(optimizer), options=_GATHER)
    if not state:
        return {}
    index, groups = {}, []
    for group in state["param_groups"]:
        groups.append({**group, "params": [index.setdefault(name, len(index)) for name in group["params"]]})
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(accelerator, model, optimizer, state: dict) -> None:
    """Inverse of `full_optimizer_state` (every rank passes the full state)."""
    module = owner(model)
    if not isinstance(module, FSDPModule):
        optimizer.load_state_dict(state)
        return
    names = {id(p): name for name, p in module.named_parameters()}
    order = [names[id(p)] for group in _inner(optimizer).param_groups for p in group["params"]]
    if sum(len(g["params"]) for g in state["param_groups"]) != len(order):
        raise ValueError(f"the optimiser holds {len(order)} parameters, the state {len(state['state'])}")
    # (copies: set_optimizer_state_dict keeps tensors it is given, such as "step", and stepping would change them)
    by_name = {"state": {order[int(i)]: {k: v.clone() if torch.is_tensor(v) else v for k, v in value.items()}
                         for i, value in state["state"].items()},
               "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(module, _inner(optimizer), by_name, options=StateDictOptions(full_state_dict=True))


def empty_copy(module: torch.nn.Module) -> torch.nn.Module:
    """`module`'s structure with its parameters on the meta device (no memory) and its buffers copied: a
    template that `unsharded_copy` fills with gathered weights. Made before FSDP shards the module in place."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)


def unsharded_copy(accelerator, model, template: torch.nn.Module):
    """The main process's plain, full copy of the sharded `model` (on the accelerator's device), from `template`
    (`empty_copy`); None on the other ranks. Every rank must call (the weights are gathered)."""
    weights = full_model_state(accelerator, model)
    if not accelerator.is_main_process:
        return None
    plain = copy.deepcopy(template)
    plain.load_state_dict(weights, strict=True, assign=True)
    return plain.to(accelerator.device)
