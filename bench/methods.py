"""Fine-tuning methods side by side: size, speed, memory, and SeLoRA's rank growth and Fisher-test cost.

    python bench/methods.py [--steps 8] [--repeats 3] [--selora-steps 120] [--pretrained-model DIR]
                            [--sd15-resolution 256] [--sd15-max-gib 12]

Table 1, trainable parameters: on the tiny 64 px pipeline (measured after ``method.apply``) and on
Stable Diffusion 1.5, instantiated from its known configuration on the ``meta`` device (exact counts,
nothing allocated or downloaded); "+ AdamW memory" is what training adds per trainable parameter in
fp32 (weight 4 B + gradient 4 B + two moments 8 B), activations excluded.
Table 2, speed and memory on the tiny pipeline: CPU seconds per training step (VAE encode, text
encode, U-Net, backward, AdamW, the method's hook; process time after one warm-up step, one torch
thread) and the process's peak RSS. Every run is its own subprocess; the methods are run in
interleaved rounds ``--repeats`` times and the lowest CPU time is kept; ratios are against LoRA r=4.
Table 2b, the same at Stable Diffusion 1.5's size: the real SD 1.5 architecture with random weights
(materialised on the CPU, nothing downloaded), batch 1 at ``--sd15-resolution``, one torch thread, best
of ``--steps`` after warm-up, one repeat (each row builds a 1.07 B-parameter model). Rows whose weights +
AdamW state would exceed ``--sd15-max-gib`` are not run (the table says so and gives the estimate).
Table 3, SeLoRA (paper defaults: every nn.Linear of U-Net and text encoder, lambda 1.1) on phantom
radiographs with the test every ``--interval`` steps: total rank per component at every test.
Table 4, cost of one SeLoRA expansion test (Eq. 3 per-sample Fisher, one backward per sample, vs
the squared batch-mean gradient) in CPU seconds and in training steps, and per step at t = 40.

The models are random-weight or phantom-trained stand-ins: these numbers measure the software, not
medical image quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: (label, method, config, what trains)
ROWS = [
    ("full (unet)", "full", {"components": ["unet"]}, "every U-Net weight"),
    ("full (text_encoder)", "full", {"components": ["text_encoder"]}, "every text-encoder weight"),
    ("full (vae)", "full", {"components": ["vae"]}, "every VAE weight (+ reconstruction loss)"),
    ("full (all three)", "full", {"components": ["unet", "text_encoder", "vae"]}, "everything"),
    ("lora r=4", "lora", {"rank": 4}, "A/B on U-Net to_q/k/v/out.0"),
    ("lora r=8 a=16 (paradigm)", "lora", {"rank": 8, "lora_alpha": 16}, "A/B on U-Net to_q/k/v/out.0"),
    ("lora r=4 all-linear + TE (SeLoRA protocol)", "lora",
     {"rank": 4, "target_modules": "all-linear", "train_text_encoder": True, "text_encoder_target_modules": "all-linear"},
     "A/B on every nn.Linear of U-Net and text encoder"),
    ("dora r=8 (paradigm)", "dora", {"rank": 8, "lora_alpha": 16}, "LoRA + a magnitude per output"),
    ("bitfit", "bitfit", {}, "U-Net biases"),
    ("difffit", "difffit", {}, "U-Net biases, norm affines, per-branch gammas"),
    ("selora (rank 1 at start)", "selora", {}, "rank-1 A/B on every nn.Linear of U-Net + TE, grows"),
    ("dylora r=4", "dylora", {}, "rank-4 A/B on every nn.Linear of U-Net + TE"),
    ("adalora 6 -> 4", "adalora", {"total_step": 100}, "P diag(E) Q of rank 6 on every nn.Linear of U-Net + TE"),
]
BASELINE = "lora r=4"
PROMPTS = ("Chest X-ray of a subject with Cardiomegaly", "Chest X-ray of a subject with no finding")


def sd15_components() -> SimpleNamespace:
    """Stable Diffusion 1.5's U-Net, CLIP ViT-L/14 text encoder and VAE on the meta device."""
    from hf_cxr_diffusion.models.meta import SD15, meta_components

    return meta_components(SD15)


def sd15_materialised() -> Any:
    """SD 1.5's components with random weights on the CPU, plus the offline CLIP tokenizer and a DDPM scheduler."""
    import torch
    from diffusers import DDPMScheduler

    from hf_cxr_diffusion.models.loading import SDComponents
    from hf_cxr_diffusion.models.tokenizer import cached_clip_tokenizer

    meta = sd15_components()
    modules = {}
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(meta, name).to_empty(device="cpu")
        with torch.no_grad():
            for param in module.parameters():
                param.normal_(0, 0.02)
        modules[name] = module
    return SDComponents(tokenizer=cached_clip_tokenizer(), noise_scheduler=DDPMScheduler(), source="sd15-random", **modules)


def sd15_budget_gib(config_row: tuple) -> float:
    """fp32 weights of SD 1.5 plus gradient and AdamW moments of what ``config_row`` trains, in GiB."""
    _, name, config, _ = config_row
    trainable, total = count(sd15_components(), name, config)
    return (total * 4 + trainable * 12) / 2**30


def count(comps: Any, method: str, config: dict) -> tuple[int, int]:
    """(trainable, total) parameters after applying ``method`` to ``comps``."""
    from hf_cxr_diffusion.methods import get_method

    get_method(method, config).apply(comps)
    params = [p for m in (comps.unet, comps.text_encoder, comps.vae) for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def phantom_batch(components: Any, n: int, resolution: int, seed: int = 0) -> dict[str, Any]:
    """``n`` phantom radiographs (half with cardiomegaly), their prompt ids and fixed noise / timesteps."""
    import numpy as np
    import torch

    from hf_cxr_diffusion.phantoms import draw_phantom, sample_params

    images = [draw_phantom(sample_params(seed + i, seed + i), {"Cardiomegaly": 1.0} if i % 2 == 0 else {}, resolution) for i in range(n)]
    pixels = torch.from_numpy(np.stack(images)).float().div(127.5).sub(1).unsqueeze(1).repeat(1, 3, 1, 1)
    prompts = [PROMPTS[i % 2] for i in range(n)]
    ids = components.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(seed)
    side = resolution // 8
    return {
        "pixels": pixels, "input_ids": ids, "noise": torch.randn(n, 4, side, side, generator=g),
        "timesteps": torch.randint(0, 1000, (n,), generator=g), "eps": torch.randn(n, 4, side, side, generator=g),
    }


def per_sample_losses(method: Any, c: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Per-sample epsilon MSE of ``batch`` and the method's auxiliary term (VAE reconstruction), as the trainer computes them."""
    import torch
    import torch.nn.functional as F

    with torch.set_grad_enabled(method.trains("vae") and torch.is_grad_enabled()):
        dist = c.vae.encode(batch["pixels"]).latent_dist
        z = dist.mean + dist.std * batch["eps"]
    noisy = c.noise_scheduler.add_noise(z * c.vae.config.scaling_factor, batch["noise"], batch["timesteps"])
    hidden = c.text_encoder(batch["input_ids"])[0]
    pred = c.unet(noisy, batch["timesteps"], hidden).sample
    losses = F.mse_loss(pred, batch["noise"], reduction="none").mean(dim=(1, 2, 3))
    extra = method.auxiliary_loss(c, batch["pixels"], z) if method.trains("vae") else None
    return losses, extra


def train_loop(method: Any, c: Any, batch: dict[str, Any], steps: int, lr: float = 1e-4) -> list[float]:
    """``steps`` AdamW steps (hook included); CPU seconds of each step."""
    import torch

    method.begin_training(steps)
    optimizer = torch.optim.AdamW(method.param_groups(c, lr))
    times = []
    for step in range(1, steps + 1):
        t0 = time.process_time()
        losses, extra = per_sample_losses(method, c, batch)
        loss = losses.mean() + (extra if extra is not None else 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, c, optimizer, lambda: per_sample_losses(method, c, batch)[0])
        times.append(time.process_time() - t0)
    return times


def load(model: str) -> Any:
    from hf_cxr_diffusion.models.loading import load_components

    return load_components(model)


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    import torch

    from hf_cxr_diffusion.methods import get_method
    from hf_cxr_diffusion.training.summary import peak_rss_mib

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.worker == "selora-history":
        c = load(args.pretrained_model)
        method = get_method("selora", {"expansion_interval": args.interval})
        method.apply(c)
        train_loop(method, c, phantom_batch(c, 4, c.vae_scale_factor * c.unet.config.sample_size), args.selora_steps)
        comps = ("unet", "text_encoder")
        rows = [{"step": h["step"], **{k: sum(r for n, r in h["ranks"].items() if n.startswith(k + ".")) for k in comps}}
                for h in method.rank_history]
        print(json.dumps({"history": rows, "modules": {k: sum(n.startswith(k + ".") for n in method.modules) for k in comps}}))
        return
    if args.worker == "selora-fisher":
        out = {}
        for fisher in ("per_sample", "batch_mean"):
            comps = load(args.pretrained_model)
            batch = phantom_batch(comps, args.fisher_batch, comps.vae_scale_factor * comps.unet.config.sample_size)
            method = get_method("selora", {"expansion_threshold": 1e9, "fisher": fisher})  # test every module, grow none
            method.apply(comps)
            step = min(train_loop(method, comps, batch, 3)[1:])
            t0 = time.process_time()
            method.expand(1, None, lambda m=method, cc=comps, b=batch: per_sample_losses(m, cc, b)[0])
            out[fisher] = {"expand_cpu_s": time.process_time() - t0, "step_cpu_s": step}
        print(json.dumps(out))
        return
    sd15 = args.worker.startswith("sd15:")
    _, name, config, _ = next(r for r in ROWS if r[0] == args.worker.removeprefix("sd15:"))
    c = sd15_materialised() if sd15 else load(args.pretrained_model)
    method = get_method(name, config)
    method.apply(c)
    batch = phantom_batch(c, 1, args.sd15_resolution) if sd15 else phantom_batch(c, 2, c.vae_scale_factor * c.unet.config.sample_size)
    times = train_loop(method, c, batch, args.steps)
    print(json.dumps({"cpu_per_step": min(times[1:]), "peak_rss_mib": peak_rss_mib()}))


def run_worker(args: argparse.Namespace, name: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--pretrained-model", args.pretrained_model, "--steps", str(args.steps),
           "--selora-steps", str(args.selora_steps), "--interval", str(args.interval), "--fisher-batch", str(args.fisher_batch),
           "--sd15-resolution", str(args.sd15_resolution)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained-model", default=None, help="base pipeline folder (default: a tiny random one, built now)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per speed run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of speed runs (best is kept)")
    parser.add_argument("--selora-steps", type=int, default=120, help="SeLoRA steps for the rank history")
    parser.add_argument("--interval", type=int, default=10, help="SeLoRA expansion interval t for the rank history")
    parser.add_argument("--fisher-batch", type=int, default=4, help="batch size of the Fisher-cost measurement")
    parser.add_argument("--sd15-resolution", type=int, default=256, help="image size of the SD 1.5-size speed rows (batch 1)")
    parser.add_argument("--sd15-max-gib", type=float, default=12.0,
                        help="skip SD 1.5-size rows whose fp32 weights + AdamW state exceed this many GiB (0: no SD 1.5 rows)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.pretrained_model is None:
        from hf_cxr_diffusion.models.tiny import make_tiny_model

        args.pretrained_model = str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; base model: {args.pretrained_model}\n")

    sd_total = count(sd15_components(), "full", {"components": ["unet", "text_encoder", "vae"]})[1]
    print("| method | what trains | trainable (tiny) | trainable (SD 1.5) | % of SD 1.5 | + AdamW fp32 memory (SD 1.5) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, name, config, what in ROWS:
        tiny, _ = count(load(args.pretrained_model), name, config)
        sd, _ = count(sd15_components(), name, config)
        print(f"| {label} | {what} | {tiny:,} | {sd:,} | {100 * sd / sd_total:.3f} | {sd * 16 / 2**20:,.1f} MiB |")
    print(f"\nSD 1.5 (U-Net + text encoder + VAE): {sd_total:,} parameters\n")

    results: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in ROWS}
    for _ in range(args.repeats):
        for label, *_ in ROWS:
            results[label].append(run_worker(args, label))
    best = {label: min(runs, key=lambda r: r["cpu_per_step"]) for label, runs in results.items()}
    base = best[BASELINE]
    print(f"| method (tiny, batch 2) | CPU s/step (best of {args.repeats}) | vs {BASELINE} | peak RSS MiB | vs {BASELINE} |")
    print("|---|---:|---:|---:|---:|")
    for label, r in best.items():
        print(f"| {label} | {r['cpu_per_step']:.3f} | {r['cpu_per_step'] / base['cpu_per_step']:.2f}x | {r['peak_rss_mib']:.0f} "
              f"| {r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x |")

    if args.sd15_max_gib > 0:
        print(f"\n| method (SD 1.5 size, random weights, batch 1, {args.sd15_resolution} px) | CPU s/step (best of {args.steps - 1}) "
              f"| vs {BASELINE} | peak RSS MiB | weights + AdamW GiB |")
        print("|---|---:|---:|---:|---:|")
        need = {row[0]: sd15_budget_gib(row) for row in ROWS}
        runs = {label: run_worker(args, "sd15:" + label) for label in sorted(need, key=lambda label: label != BASELINE)
                if need[label] <= args.sd15_max_gib}
        for label, gib in need.items():
            if label not in runs:
                print(f"| {label} | not run (needs ~{gib:.1f} GiB > --sd15-max-gib) | | | {gib:.1f} |")
                continue
            r = runs[label]
            print(f"| {label} | {r['cpu_per_step']:.2f} | {r['cpu_per_step'] / runs[BASELINE]['cpu_per_step']:.2f}x "
                  f"| {r['peak_rss_mib']:.0f} | {gib:.1f} |")

    history = run_worker(args, "selora-history")
    print(f"\nSeLoRA rank history (t = {args.interval}, lambda 1.1, batch 4 phantoms; "
          f"{history['modules']['unet']} U-Net and {history['modules']['text_encoder']} text-encoder modules, rank 1 each at step 0)\n")
    print("| step | total rank U-Net | total rank text encoder |")
    print("|---:|---:|---:|")
    for row in history["history"]:
        print(f"| {row['step']} | {row['unet']} | {row['text_encoder']} |")

    fisher = run_worker(args, "selora-fisher")
    step = fisher["per_sample"]["step_cpu_s"]
    print(f"\nSeLoRA expansion test, batch {args.fisher_batch} (one training step: {step:.3f} CPU s)\n")
    print("| Fisher estimate | CPU s per test | in training steps | overhead per step at t = 40 |")
    print("|---|---:|---:|---:|")
    for name, r in fisher.items():
        print(f"| {name} | {r['expand_cpu_s']:.3f} | {r['expand_cpu_s'] / step:.2f} | {100 * r['expand_cpu_s'] / step / 40:.1f} % |")
    print(f"\n# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
