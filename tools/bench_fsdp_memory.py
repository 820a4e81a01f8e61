"""Memory per rank of DDP vs FSDP2 for the SD-1.5-size video U-Net, from the model (no weights: built on the
meta device). Bytes per rank for `trainable: all` with AdamW: parameters (fp32), gradients (fp32), AdamW's two
moments (fp32) and the EMA copy (fp32); DDP keeps all of them on every rank, FSDP2 (fully_shard) one 1/N slice.
Activations are left out (they depend on the clip size and checkpointing, and are the same per rank for both).

    python tools/bench_fsdp_memory.py [--ranks 1 2 8 16 64] [--check]

--check runs a smaller U-Net (widths 64-128-256-256) in 2 CPU processes over gloo, once plain (DDP keeps full
copies) and once with fully_shard on each layer, takes one AdamW step on 8x8 latents and counts the bytes of the
tensors each rank holds (its local shards of parameters, gradients and AdamW moments) against the formula.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from vidiff.models.unet import VideoUNet, is_temporal_parameter

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, norm_num_groups=32, attention_head_dim=8, cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


SMALL = {**SD15, "block_out_channels": (64, 128, 256, 256), "cross_attention_dim": 64, "attention_head_dim": 4}


def _local_bytes(tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _rank_bytes(rank: int, world: int, sharded: bool, port: int, results) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = VideoUNet(SMALL)
    if sharded:
        for block in model.blocks():
            for child in block.children():
                if isinstance(child, torch.nn.ModuleList):
                    for layer in child:
                        fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sample, text = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 64)
    model(sample, torch.tensor([10]), text).float().pow(2).mean().backward()
    optimizer.step()
    params = sum(_local_bytes(p) for p in model.parameters())
    grads = sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    moments = sum(_local_bytes(v) for state in optimizer.state.values() for k, v in state.items() if k != "step")
    results[(sharded, rank)] = (params, grads, moments)
    dist.destroy_process_group()


def check(world: int = 2) -> None:
    with torch.device("meta"):
        total = sum(p.numel() for p in VideoUNet(SMALL).parameters())
    results = mp.Manager().dict()
    for port, sharded in ((29611, False), (29612, True)):
        mp.spawn(_rank_bytes, args=(world, sharded, port, results), nprocs=world)
    print(f"check: {total / 1e6:.2f} M parameters, formula {16 * total / 2 ** 20:.1f} MiB (DDP) and "
          f"{16 * total / world / 2 ** 20:.1f} MiB (FSDP2, {world} ranks) of params+grads+AdamW per rank")
    for (sharded, rank), (p, g, m) in sorted(results.items()):
        print(f"check: {'FSDP2' if sharded else 'DDP  '} rank {rank}: params {p / 2 ** 20:.1f} + grads "
              f"{g / 2 ** 20:.1f} + AdamW {m / 2 ** 20:.1f} = {(p + g + m) / 2 ** 20:.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 8, 16, 64])
    parser.add_argument("--check", action="store_true", help="measure a smaller U-Net in 2 CPU processes")
    args = parser.parse_args()
    if args.check:
        return check()
    with torch.device("meta"):
        model = VideoUNet(SD15)
    total = sum(p.numel() for p in model.parameters())
    temporal = sum(p.numel() for n, p in model.named_parameters() if is_temporal_parameter(n))
    print(f"SD-1.5-size video U-Net: {total / 1e6:.1f} M parameters ({temporal / 1e6:.1f} M temporal)")
    per_param = {"params": 4, "grads": 4, "adamw": 8, "ema": 4}
    full = {k: total * b for k, b in per_param.items()}
    print("| ranks | DDP GiB/rank | FSDP2 GiB/rank (params+grads+AdamW+EMA) |")
    print("|---|---|---|")
    for n in args.ranks:
        ddp = sum(full.values()) / 2 ** 30
        print(f"| {n} | {ddp:.2f} | {ddp / n:.2f} |")


if __name__ == "__main__":
    main()
