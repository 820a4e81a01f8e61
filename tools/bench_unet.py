"""Benchmark the video U-Net against diffusers' 2D, AnimateDiff and ModelScope U-Nets on the same inputs.

Forward (no grad) and forward+backward time (median of --reps after warm-up; the cases are interleaved rep by rep,
so load from other processes hits all of them alike) and peak memory, each with and without gradient
checkpointing (which changes only the training pass, so checkpointed rows show no forward figures):

    2d           diffusers UNet2DConditionModel on the b*f frames (the reference: ratios are to this row)
    video-off    VideoUNet with temporal layers off          target <= 1.05x the 2D time
    video        VideoUNet inflated (temporal conv + attn)   target <= 1.4x the 2D time
    animatediff  diffusers UNetMotionModel at matched widths (text states repeated per frame, as its pipeline does)
    modelscope   diffusers UNet3DConditionModel at matched widths (no gradient checkpointing in diffusers)

Gradient checkpointing target: peak training memory <= 0.5x of the same model without it.

Peak memory is the high-water mark above the memory held before the pass (weights and inputs not counted;
gradients and activations are), measured on the last warm-up pass: on CUDA from `torch.cuda.max_memory_allocated`,
on CPU by replaying the allocations and frees that PyTorch's profiler records (exact, unaffected by malloc caching).

    python tools/bench_unet.py                          # CPU: widths 64-128-128, 8 frames of 32x32, batch 1
    python tools/bench_unet.py --threads 1 --clock cpu  # the same, steady on a CPU shared with other jobs
    python tools/bench_unet.py --quick                  # smoke run, about 20 s
    python tools/bench_unet.py --device cuda --dtype bf16 --sd15 [--batch 2]   # SD 1.5 size, 16 x 64 x 64

With --sd15 (random weights) it also counts model FLOPs, reports achieved TFLOP/s against the card's measured
matmul rate (target: a bf16 training step at >= 35% of it) and adds `video[xformers]` beside SDPA when
xformers runs.
"""
from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

MODELS = ("2d", "video-off", "video", "animatediff", "modelscope")
TARGETS = {"video-off": 1.05, "video": 1.4}
CHECKPOINT_MEMORY_TARGET = 0.5


# ----------------------------------------------------------------------------------------------------------------
# Memory


def _cpu_peak_bytes(fn) -> float:
    """Peak bytes the CPU allocator holds during `fn` above what it held before: the running sum of every
    allocation and free the profiler records, in time order (exact, and unaffected by malloc caching)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage  # + allocations, - frees, each counted once (self)
        peak = max(peak, current)
    return peak


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory in MiB above the level before `fn` (weights and inputs are not counted; gradients are)."""
    gc.collect()
    if device.type != "cuda":
        return _cpu_peak_bytes(fn) / 2**20
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ----------------------------------------------------------------------------------------------------------------
# Models and inputs


def unet_2d_config(args) -> dict:
    """An SD-family UNet2DConditionModel config: cross-attention in every block but the deepest."""
    n = len(args.widths)
    return dict(
        sample_size=args.size, in_channels=4, out_channels=4, block_out_channels=tuple(args.widths),
        layers_per_block=args.layers_per_block, norm_num_groups=args.norm_groups, attention_head_dim=args.heads,
        cross_attention_dim=args.cross_attention_dim,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
    )


def build_model(name: str, args):
    """The model and how it is called: (module, kind) with kind one of 'frames', 'video', 'motion', '3d'."""
    import diffusers

    config = unet_2d_config(args)
    n = len(args.widths)
    if name == "2d":
        return diffusers.UNet2DConditionModel(**config), "frames"
    if name in ("video-off", "video") or name.startswith("video["):
        from vidiff.models.unet import VideoUNet

        backend = name[6:-1] if name.startswith("video[") else args.attention_backend
        on = name != "video-off"
        return VideoUNet(config, temporal_conv=on, temporal_attention=on, attention_backend=backend), "video"
    if name == "animatediff":
        model = diffusers.UNetMotionModel(
            sample_size=args.size, block_out_channels=tuple(args.widths), layers_per_block=args.layers_per_block,
            norm_num_groups=args.norm_groups, num_attention_heads=args.heads,
            cross_attention_dim=args.cross_attention_dim, motion_num_attention_heads=args.heads,
            motion_max_seq_length=max(32, args.frames), use_motion_mid_block=True,
            down_block_types=("CrossAttnDownBlockMotion",) * (n - 1) + ("DownBlockMotion",),
            up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * (n - 1))
        return model, "motion"
    if name == "modelscope":
        model = diffusers.UNet3DConditionModel(
            sample_size=args.size, block_out_channels=tuple(args.widths), layers_per_block=args.layers_per_block,
            norm_num_groups=args.norm_groups, attention_head_dim=args.heads,
            cross_attention_dim=args.cross_attention_dim,
            down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1))
        return model, "3d"
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)} or video[BACKEND]")


def make_inputs(args, device, dtype):
    """One video batch: latents (b, 4, f, h, w), timesteps (b,), text states (b, 77, D)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=generator)
    text = torch.randn(args.batch, 77, args.cross_attention_dim, generator=generator)
    timestep = torch.randint(0, 1000, (args.batch,), generator=generator)
    return sample.to(device, dtype), timestep.to(device), text.to(device, dtype)


def make_call(model, kind: str, sample, timestep, text):
    """A closure running `model` on the shared inputs in the layout it expects; returns the output tensor."""
    frames = sample.shape[2]
    if kind == "frames":  # the 2D U-Net sees every frame as an image
        from einops import rearrange

        images = rearrange(sample, "b c f h w -> (b f) c h w")
        args = (images, timestep.repeat_interleave(frames), text.repeat_interleave(frames, 0))
        return lambda: model(*args, return_dict=False)[0]
    if kind == "video":
        return lambda: model(sample, timestep, text)
    if kind == "motion":  # diffusers 0.42's UNetMotionModel wants the text states repeated per frame
        repeated = text.repeat_interleave(frames, 0)
        return lambda: model(sample, timestep, repeated, return_dict=False)[0]
    return lambda: model(sample, timestep, text, return_dict=False)[0]


# ----------------------------------------------------------------------------------------------------------------
# Timing


_START = time.perf_counter()


def log(message: str):
    print(f"[{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_pass(model, call):
    with torch.no_grad():
        return call()


def train_pass(model, call):
    model.zero_grad(set_to_none=True)
    out = call()
    out.float().square().mean().backward()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(fn, device) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return (clock() - start) * 1000


@dataclass
class Case:
    model: str
    checkpointing: bool
    module: torch.nn.Module
    call: object
    forward_ms: list = field(default_factory=list)
    train_ms: list = field(default_factory=list)
    forward_mb: float = float("nan")
    train_mb: float = float("nan")
    forward_flops: float = float("nan")
    train_flops: float = float("nan")
    error: str = ""

    def set_checkpointing(self):
        if self.checkpointing:
            self.module.enable_gradient_checkpointing()
        elif supports_checkpointing(self.module):
            self.module.disable_gradient_checkpointing()


def supports_checkpointing(module) -> bool:
    from vidiff.models.unet import VideoUNet

    return isinstance(module, VideoUNet) or getattr(module, "_supports_gradient_checkpointing", False)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_tflops(device, dtype, n=8192, reps=10) -> float:
    """The card's measured dense matmul rate (the yardstick for the SD 1.5 training target)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(reps)]
    return 2 * n**3 / (statistics.median(times) / 1000) / 1e12


def run_case_safely(case: Case, fn):
    if case.error:
        return None
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        case.error = "out of memory"
        case.module.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
    except Exception as e:  # report the failure in the table, keep benchmarking the others
        case.error = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return None


def benchmark(args) -> list[Case]:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # not its advice on casting random-weight models
    device, dtype = torch.device(args.device), args.torch_dtype
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training scripts do: fixed shapes, fastest conv algorithms
    sample, timestep, text = make_inputs(args, device, dtype)
    cases: list[Case] = []
    for name in args.models:
        torch.manual_seed(0)
        try:
            module, kind = build_model(name, args)
        except Exception as e:
            print(f"! {name}: could not build ({type(e).__name__}: {e})", file=sys.stderr)
            cases.append(Case(name, False, None, None, error=f"build failed: {type(e).__name__}"))
            continue
        module = module.to(device, dtype).train()  # train(): dropout is 0 in all, but checkpointing needs it
        call = make_call(module, kind, sample, timestep, text)
        cases.append(Case(name, False, module, call))
        if not args.no_checkpointing:
            if supports_checkpointing(module):
                cases.append(Case(name, True, module, call))
            else:
                cases.append(Case(name, True, module, call, error="no gradient checkpointing in diffusers"))

    todo = [c for c in cases if not c.error]
    # Warm-up; the last warm-up pass also measures peak memory (and FLOPs in a separate untimed pass).
    log(f"warming up {len(todo)} cases" + (", counting FLOPs" if args.flops else ""))
    for case in todo:
        case.set_checkpointing()
        for i in range(args.warmup):
            last = i == args.warmup - 1
            if not case.checkpointing:  # without grad, checkpointing changes nothing: forward once per model
                fwd = lambda: forward_pass(case.module, case.call)  # noqa: E731
                mb = run_case_safely(case, lambda: peak_memory_mb(fwd, device) if last else fwd())
                case.forward_mb = mb if last and mb is not None else case.forward_mb
            case.module.zero_grad(set_to_none=True)
            train = lambda: train_pass(case.module, case.call)  # noqa: E731
            mb = run_case_safely(case, lambda: peak_memory_mb(train, device) if last else train())
            case.train_mb = mb if last and mb is not None else case.train_mb
            case.module.zero_grad(set_to_none=True)
        if args.flops and not case.checkpointing:
            case.forward_flops = run_case_safely(
                case, lambda: count_flops(lambda: forward_pass(case.module, case.call))) or float("nan")
            case.train_flops = run_case_safely(
                case, lambda: count_flops(lambda: train_pass(case.module, case.call))) or float("nan")
            case.module.zero_grad(set_to_none=True)

    # Model FLOPs: a checkpointed case does its plain sibling's work (recomputation is not counted), and
    # FlopCounterMode cannot see inside xformers' kernels, so backend variants do the SDPA case's work.
    plain = {c.model: c for c in todo if not c.checkpointing}
    for case in todo:
        source = plain.get("video" if case.model.startswith("video[") else case.model)
        if source is not None and (case.checkpointing or source is not case):
            case.forward_flops, case.train_flops = source.forward_flops, source.train_flops

    # Interleave the cases rep by rep, so slow drifts of the machine (other users, clocks) hit all alike.
    for rep in range(args.reps):
        log(f"rep {rep + 1}/{args.reps}")
        for case in todo:
            case.set_checkpointing()
            if not case.checkpointing:
                t = run_case_safely(case, lambda: timed(lambda: forward_pass(case.module, case.call), device))
                if t is not None:
                    case.forward_ms.append(t)
            t = run_case_safely(case, lambda: timed(lambda: train_pass(case.module, case.call), device))
            if t is not None:
                case.train_ms.append(t)
            case.module.zero_grad(set_to_none=True)
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Report


def _median(values):
    return statistics.median(values) if values else float("nan")


def _fmt(value, spec=".1f", suffix=""):
    return "-" if value != value else f"{value:{spec}}{suffix}"  # NaN -> "-"


def report(args, cases: list[Case]) -> str:
    reference = {c.checkpointing: c for c in cases if c.model == "2d"}
    plain = {c.model: c for c in cases if not c.checkpointing}
    show_flops = args.flops
    header = ["model", "grad ckpt", "fwd ms", "fwd+bwd ms", "fwd peak MB", "train peak MB",
              "fwd x 2D", "fwd+bwd x 2D", "train mem x 2D", "ckpt mem x off"]
    if show_flops:
        header += ["fwd TFLOP/s", "train TFLOP/s"] + (["train % of matmul"] if args.matmul_tflops else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        if case.error and not case.train_ms:
            lines.append(f"| {case.model} | {'on' if case.checkpointing else 'off'} | " + " | ".join(
                [case.error] + ["-"] * (len(header) - 3)) + " |")
            continue
        ref = reference.get(case.checkpointing)
        fwd, train = _median(case.forward_ms), _median(case.train_ms)
        ref_fwd = _median(ref.forward_ms) if ref else float("nan")
        ref_train = _median(ref.train_ms) if ref else float("nan")
        ref_mem = ref.train_mb if ref else float("nan")
        off = plain.get(case.model)
        ckpt_ratio = case.train_mb / off.train_mb if case.checkpointing and off else float("nan")
        row = [case.model, "on" if case.checkpointing else "off", _fmt(fwd), _fmt(train), _fmt(case.forward_mb, ".0f"),
               _fmt(case.train_mb, ".0f"), _fmt(fwd / ref_fwd, ".2f", "x"), _fmt(train / ref_train, ".2f", "x"),
               _fmt(case.train_mb / ref_mem, ".2f", "x"), _fmt(ckpt_ratio, ".2f", "x")]
        if show_flops:
            fwd_rate = case.forward_flops / (fwd / 1000) / 1e12
            train_rate = case.train_flops / (train / 1000) / 1e12
            row += [_fmt(fwd_rate, ".3g"), _fmt(train_rate, ".3g")]
            if args.matmul_tflops:
                row.append(_fmt(100 * train_rate / args.matmul_tflops, ".0f", "%"))
        if case.error:
            row[0] += f" ({case.error})"
        lines.append("| " + " | ".join(row) + " |")

    checks = []
    for name, target in TARGETS.items():
        for ckpt in (False, True):
            case = next((c for c in cases if c.model == name and c.checkpointing == ckpt and c.train_ms), None)
            ref = reference.get(ckpt)
            if case is None or ref is None or not ref.train_ms:
                continue
            for label, mine, theirs in (("fwd", case.forward_ms, ref.forward_ms), ("fwd+bwd", case.train_ms, ref.train_ms)):
                if not (mine and theirs):
                    continue
                ratio = _median(mine) / _median(theirs)
                checks.append(f"- {name} {label} (ckpt {'on' if ckpt else 'off'}): {ratio:.3f}x the 2D U-Net, "
                              f"target <= {target}x: {'met' if ratio <= target else 'MISSED'}")
    for case in cases:
        off = plain.get(case.model)
        if case.checkpointing and off and case.train_mb == case.train_mb and off.train_mb == off.train_mb:
            ratio = case.train_mb / off.train_mb
            if case.model.startswith("video"):
                verdict = "met" if ratio <= CHECKPOINT_MEMORY_TARGET else "MISSED"
                verdict = f"target <= {CHECKPOINT_MEMORY_TARGET}x: {verdict}"
            else:
                verdict = "for reference"
            checks.append(f"- {case.model} gradient checkpointing: training peak {ratio:.2f}x of without, {verdict}")
    for name in ("animatediff", "modelscope"):
        peer, mine = plain.get(name), plain.get("video")
        if peer and mine and peer.forward_ms and mine.forward_ms:
            checks.append(f"- inflated VideoUNet vs {name}: fwd {_median(mine.forward_ms) / _median(peer.forward_ms):.2f}x, "
                          f"fwd+bwd {_median(mine.train_ms) / _median(peer.train_ms):.2f}x its time")
    return "\n".join(lines) + "\n\nTargets:\n" + "\n".join(checks)


def describe(args) -> str:
    import diffusers

    device = args.device
    if args.device == "cuda":
        device += f" ({torch.cuda.get_device_name()})"
    else:
        device += f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return (f"U-Net benchmark: widths {'-'.join(map(str, args.widths))}, layers/block {args.layers_per_block}, "
            f"heads {args.heads}, cross-attn dim {args.cross_attention_dim}; batch {args.batch} x {args.frames} frames "
            f"x {args.size}x{args.size} latents; {args.dtype} on {device}; {args.clock} time, median of {args.reps} reps after "
            f"{args.warmup} warm-up; torch {torch.__version__}, diffusers {diffusers.__version__}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: %(default)s)")
    parser.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--sd15", action="store_true", help="SD 1.5-size U-Net (320-640-1280-1280, 8 heads, "
                        "cross-attn 768, 2 layers/block), 16 x 64 x 64 latents, FLOP/s and xformers vs SDPA")
    parser.add_argument("--widths", default=None, help="block_out_channels, e.g. 64,128,128 (default: %(default)s)")
    parser.add_argument("--layers-per-block", type=int, default=None, help="resnets per block (default: 2)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: 8)")
    parser.add_argument("--cross-attention-dim", type=int, default=None, help="text state width (default: 128; 768 with --sd15)")
    parser.add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: 8; 16 with --sd15)")
    parser.add_argument("--size", type=int, default=None, help="latent height = width (default: 32; 64 with --sd15)")
    parser.add_argument("--batch", type=int, default=1, help="videos per batch; 2 = one clip with CFG (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per case (default: 3 on CPU, 10 on CUDA, 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed passes first, the last one measuring memory (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list from " + ", ".join(MODELS)
                        + ", or video[BACKEND] (default: all)")
    parser.add_argument("--attention-backend", default="sdpa", help="VideoUNet attention backend (default: %(default)s)")
    parser.add_argument("--no-checkpointing", action="store_true", help="skip the gradient-checkpointing cases")
    parser.add_argument("--flops", action="store_true", help="count model FLOPs (torch FlopCounterMode, one pass; "
                        "checkpoint recomputation not counted) and report TFLOP/s (on with --sd15)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared CPU, best with "
                        "--threads 1; CPU device only) (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: widths 32-64, 1 layer/block, 4 heads, "
                        "4 frames of 16x16, 1 warm-up, 2 reps")
    args = parser.parse_args(argv)

    sd15, quick = args.sd15, args.quick and not args.sd15
    default_widths = "320,640,1280,1280" if sd15 else "32,64" if quick else "64,128,128"
    args.widths = [int(w) for w in (args.widths or default_widths).split(",")]
    args.layers_per_block = args.layers_per_block or (1 if quick else 2)
    args.heads = args.heads or (4 if quick else 8)
    args.cross_attention_dim = args.cross_attention_dim or (768 if sd15 else 64 if quick else 128)
    args.frames = args.frames or (16 if sd15 else 4 if quick else 8)
    args.size = args.size or (64 if sd15 else 16 if quick else 32)
    args.reps = args.reps or (2 if args.quick else 3 if args.device == "cpu" else 10)
    args.warmup = max(1, args.warmup if args.warmup is not None else (1 if args.device == "cpu" else 3))
    args.flops = args.flops or sd15
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU time: use it with --device cpu")
    global clock
    clock = CLOCKS[args.clock]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    from vidiff.utils import parse_dtype

    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.torch_dtype = parse_dtype(args.dtype)
    for width in args.widths:
        if width % args.norm_groups or width % args.heads:
            parser.error(f"--widths: {width} is not a multiple of --norm-groups {args.norm_groups} "
                         f"and --heads {args.heads}")
    factor = 2 ** (len(args.widths) - 1)
    if args.size % factor:
        parser.error(f"--size {args.size} must be a multiple of {factor} for {len(args.widths)} blocks")
    if sd15 and args.device == "cuda":
        from vidiff.models.attention import xformers_available

        if "video" in args.models and "video[xformers]" not in args.models:
            if xformers_available():
                args.models.append("video[xformers]")
            else:
                from vidiff.models.attention import backend_unavailable

                print(f"xformers vs SDPA: xformers cannot run here ({backend_unavailable('xformers')}); SDPA only",
                      file=sys.stderr)
    args.matmul_tflops = 0.0
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda":
        args.matmul_tflops = matmul_tflops(torch.device("cuda"), args.torch_dtype)
    cases = benchmark(args)
    print(describe(args))
    if args.matmul_tflops:
        print(f"measured {args.dtype} matmul rate (8192^3): {args.matmul_tflops:.0f} TFLOP/s")
    print()
    print(report(args, cases))
    if args.sd15 or args.device == "cuda":
        video = next((c for c in cases if c.model == "video" and not c.checkpointing and c.forward_ms), None)
        if video:
            per_step = _median(video.forward_ms) * (2 if args.batch == 1 else 1)
            print(f"- 25 CFG sampling steps of the inflated U-Net (batch 2 forward, estimated from batch "
                  f"{args.batch}): {25 * per_step / 1000:.2f} s")


if __name__ == "__main__":
    main()
