"""The modular blocks against VARCLIPPipeline on the embedded default model: same tokens, and the time per call.

    python benchmarks/bench_modular.py                # 150 seeds per setting
    python benchmarks/bench_modular.py --seeds 20 --runs 20

For each guidance setting, the same seeds through both pipelines (two prompts per call): how many calls gave
other tokens at any scale (the guider computes cond + t·(cond − uncond), the classic loop (1 + t)·cond − t·uncond;
equal but for float rounding). Then seconds per call of each (median of ``--runs`` after a warm-up, one thread,
batch 2, default settings): the blocks' own overhead on a model whose sampling takes milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.utils import logging as diffusers_logging

from var_clip import DEFAULT_MODEL, VARCLIPBlocks, VARCLIPPipeline, guider_interval

PROMPTS = ["a red circle at the top left", "a small blue square below a large green triangle"]


def settings(num_scales: int) -> dict[str, tuple[dict, ClassifierFreeGuidance, dict]]:
    """(the classic pipeline's arguments, the modular pipeline's guider, its other arguments) per setting."""
    def cfg(scale, **kwargs):
        return ClassifierFreeGuidance(guidance_scale=scale, use_original_formulation=True, **kwargs)

    return {
        "guidance 4, linear": ({}, cfg(4.0), {}),
        "no guidance": ({"guidance_scale": 0.0}, cfg(0.0), {}),
        "guidance 3, scales 2-4": ({"guidance_scale": 3.0, "guidance_interval": (2, 5)},
                                   cfg(3.0, **guider_interval(2, 5, num_scales)), {}),
        "guidance 2, constant": ({"guidance_scale": 2.0, "guidance_schedule": "constant"}, cfg(2.0),
                                 {"guidance_schedule": "constant"}),
    }


def seconds_per_call(call, runs: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=150)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()

    classic = VARCLIPPipeline.from_pretrained(DEFAULT_MODEL)
    classic.set_progress_bar_config(disable=True)
    modular = VARCLIPBlocks().init_pipeline(DEFAULT_MODEL)
    modular.load_components()
    modular.set_progress_bar_config(disable=True)

    cases = settings(len(classic.transformer.config.patch_nums))
    print(f"{'setting':<26} calls with other tokens (of {args.seeds}, {len(PROMPTS)} images each)")
    for name, (classic_kwargs, guider, modular_kwargs) in cases.items():
        modular.update_components(guider=guider)
        differ = 0
        for seed in range(args.seeds):
            want = classic(PROMPTS, generator=torch.Generator().manual_seed(seed), output_type="tokens",
                           **classic_kwargs).images
            got = modular(prompt=PROMPTS, generator=torch.Generator().manual_seed(seed), output="tokens",
                          **modular_kwargs)
            differ += not all(torch.equal(a, b) for a, b in zip(got, want))
        print(f"{name:<26} {differ}")

    modular.update_components(guider=cases["guidance 4, linear"][1])
    t_classic = seconds_per_call(lambda: classic(PROMPTS, generator=torch.Generator().manual_seed(0)), args.runs)
    t_modular = seconds_per_call(lambda: modular(prompt=PROMPTS, generator=torch.Generator().manual_seed(0),
                                                 output="images"), args.runs)
    print(f"seconds per call (batch 2, PIL out): classic {t_classic:.4f}, modular {t_modular:.4f} "
          f"({t_modular / t_classic:.2f}x)")


if __name__ == "__main__":
    main()
