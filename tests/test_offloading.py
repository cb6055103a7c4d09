"""diffusers' offloading contract: every component is on the execution device when it works.

accelerate's hooks fire on a module's `forward` (and, for the VQ-VAE, on `encode`/`decode_latent`, which carry
diffusers' `apply_forward_hook`). On this CPU-only machine both devices are the CPU, so a device mismatch cannot show:
these tests check instead that each component's hook fires during a call, and the images are unchanged.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import group_offloading

from var_clip import VARCLIPInpaintPipeline


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def run(pipe, **kwargs):
    return pipe("a red circle", generator=gen(), output_type="pt", **kwargs).images


@pytest.mark.parametrize("fixture", ["tiny_pipe", "tiny_token_pipe"])
def test_model_cpu_offload_onloads_each_model_when_it_runs(fixture, request):
    pipe = request.getfixturevalue(fixture)
    expected = run(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    fired = {}
    for name in ("text_encoder", "transformer", "vqvae"):
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward

        def counting(module, *args, _name=name, _original=original, **kwargs):
            fired[_name] = fired.get(_name, 0) + 1
            return _original(module, *args, **kwargs)

        hook.pre_forward = counting
    torch.testing.assert_close(run(pipe), expected, atol=0, rtol=0)
    S = len(pipe.transformer.config.patch_nums)
    # the text encoder once; the transformer at every scale, through its forward; the VQ-VAE once, to decode (its
    # small quantizer follows the latent during sampling, so the transformer is never offloaded between scales)
    assert fired == {"text_encoder": 1, "transformer": S, "vqvae": 1}


def test_model_cpu_offload_for_inpainting_encodes_through_the_hook(tiny_pipe):
    pipe = VARCLIPInpaintPipeline.from_pipe(tiny_pipe)
    image, mask = torch.rand(1, 3, 16, 16), torch.zeros(16, 16)
    mask[:, 8:] = 1
    expected = run(pipe, image=image, mask_image=mask)
    pipe.enable_model_cpu_offload(device="cpu")
    calls = []
    hook = pipe.vqvae._hf_hook
    original = hook.pre_forward
    hook.pre_forward = lambda module, *a, **k: (calls.append(1), original(module, *a, **k))[1]
    torch.testing.assert_close(run(pipe, image=image, mask_image=mask), expected, atol=0, rtol=0)
    assert len(calls) >= 2  # encoding the input image and decoding the result


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("fixture", ["tiny_pipe", "tiny_token_pipe"])
def test_group_offloading_onloads_every_weight_it_uses(fixture, offload_type, request, monkeypatch):
    pipe = request.getfixturevalue(fixture)
    expected = run(pipe)
    onloaded: set[int] = set()
    original = group_offloading.ModuleGroup.onload_

    def recording(group):
        for module in group.modules:
            onloaded.update(id(p) for p in module.parameters())
        onloaded.update(id(p) for p in group.parameters)
        return original(group)

    monkeypatch.setattr(group_offloading.ModuleGroup, "onload_", recording)
    extra = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_type=offload_type, **extra)
    torch.testing.assert_close(run(pipe), expected, atol=0, rtol=0)
    for name in ("transformer", "vqvae"):
        model = getattr(pipe, name)
        # the decoder is all the VQ-VAE runs in text-to-image; the encoder only when editing
        used = [(n, p) for n, p in model.named_parameters() if not n.startswith(("encoder.", "quant_conv."))]
        missed = [n for n, p in used if id(p) not in onloaded and not n.startswith("quantize.")]
        assert not missed, f"{name}: weights used without being onloaded: {missed[:5]}"
