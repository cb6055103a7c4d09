"""The transformer's attention through diffusers' attention dispatcher: ``set_attention_backend`` and the
``attention_backend`` context manager choose the kernel; the block-causal mask and the KV cache stay intact."""

from __future__ import annotations

import pytest
import torch
from diffusers import attention_backend

from var_clip.models.var_transformer import MASKED_ATTENTION_BACKENDS, VARCrossAttnProcessor, VARSelfAttnProcessor

from .conftest import TEXT_DIM, make_tiny_transformer, make_tiny_vqvae

H = 12  # width of the text's token states for the cross-attention variant
#: the backends that run on a CPU with a mask (the other SDPA kernels, flash and sage need CUDA)
CPU_BACKENDS = ("native", "_native_math", "flex")
VARIANTS = {"pooled": dict(), "tokens": dict(cross_attention_dim=H), "no l2 norm": dict(attn_l2_norm=False)}


@pytest.fixture(autouse=True)
def restore_default_backend():
    # a model's set_attention_backend also sets diffusers' process-wide default; the context restores it on exit
    with attention_backend("native"):
        yield


def inputs(variant: dict, B: int = 3):
    torch.manual_seed(0)
    vq = make_tiny_vqvae()
    idx = vq.encode_indices(torch.rand(B, 3, 16, 16) * 2 - 1)
    g = torch.Generator().manual_seed(1)
    cond = dict(text_embeds=torch.nn.functional.normalize(torch.randn(B, TEXT_DIM, generator=g), dim=-1))
    if variant.get("cross_attention_dim"):
        mask = torch.ones(B, 5, dtype=torch.bool)
        mask[1, 3:] = False  # captions of different lengths: the padding mask matters
        cond.update(encoder_hidden_states=torch.randn(B, 5, H, generator=g), encoder_attention_mask=mask)
    return vq, idx, vq.indices_to_teacher_input(idx), cond


def cached_logits(tr, vq, idx, cond) -> list[torch.Tensor]:
    """Logits of every scale, sampled scale by scale with the KV cache on the ground-truth tokens."""
    cache, f_hat, step_in, out = tr.new_kv_cache(idx[0].shape[0]), torch.zeros(idx[0].shape[0], 8, 4, 4), None, []
    for si in range(len(tr.config.patch_nums)):
        out.append(tr(step_in, **(cond if si == 0 else {}), kv_cache=cache).logits)
        f_hat, step_in = vq.next_scale_input(si, f_hat, vq.quantize.indices_to_embedding(idx[si]))
    return out


def test_every_attention_goes_through_a_processor():
    tr = make_tiny_transformer(cross_attention_dim=H)
    kinds = {name.split(".")[-2]: type(p) for name, p in tr.attn_processors.items()}
    assert kinds == {"attn": VARSelfAttnProcessor, "cross_attn": VARCrossAttnProcessor}
    assert len(tr.attn_processors) == 2 * tr.config.depth


# eager flex attention is the point here (equal outputs); torch suggests compiling it for speed
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backends_agree_and_cached_sampling_equals_teacher_forcing(variant, backend):
    tr = make_tiny_transformer(**VARIANTS[variant])
    vq, idx, x, cond = inputs(VARIANTS[variant])
    with torch.no_grad():
        reference = tr(x, **cond).logits  # the default backend: native SDPA, the original code's kernel call
        tr.set_attention_backend(backend)
        assert {p._attention_backend.value for p in tr.attn_processors.values()} == {backend}
        full = tr(x, **cond).logits
        steps = cached_logits(tr, vq, idx, cond)
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    for si, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, tr.scale_slice(si)], atol=1e-5, rtol=1e-5)


def test_the_chosen_backend_is_the_one_that_runs():
    """Proof that the dispatcher is used: a backend without masks is refused for the masked pass, and where no mask
    is needed (cached sampling of a model without cross-attention) it runs and agrees with the native one."""
    tr = make_tiny_transformer()
    vq, idx, x, cond = inputs({})
    with torch.no_grad():
        native = cached_logits(tr, vq, idx, cond)
        tr.set_attention_backend("_native_flash")  # torch's flash kernel, which has a CPU version but takes no mask
        with pytest.raises(ValueError, match=r"'_native_flash' cannot apply VAR's block-causal mask .*native, "
                                             r"_native_math"):
            tr(x, **cond)
        flash = cached_logits(tr, vq, idx, cond)
    for a, b in zip(flash, native):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_context_manager_chooses_the_backend_of_models_that_set_none():
    tr = make_tiny_transformer(cross_attention_dim=H)
    _, _, x, cond = inputs({"cross_attention_dim": H})
    with torch.no_grad():
        reference = tr(x, **cond).logits
        with attention_backend("_native_math"):
            torch.testing.assert_close(tr(x, **cond).logits, reference, atol=1e-5, rtol=1e-5)
        # cached sampling needs no self-attention mask, but cross-attention still needs the caption's padding mask
        with attention_backend("_native_flash"), pytest.raises(ValueError, match="cannot apply the caption's padding"):
            tr(None, **cond, kv_cache=tr.new_kv_cache(x.shape[0]))


def test_a_cuda_only_kernel_on_a_cpu_is_a_clear_error():
    tr = make_tiny_transformer()
    _, _, x, cond = inputs({})
    tr.set_attention_backend("_native_efficient")
    with pytest.raises(ValueError, match="'_native_efficient' runs on CUDA only .* choose 'native'"):
        tr(x, **cond)


def test_an_unknown_backend_is_a_clear_error():
    tr = make_tiny_transformer()
    with pytest.raises(ValueError, match="must be one of the following: .*_native_math"):
        tr.set_attention_backend("fastest")
    with pytest.raises(ValueError, match="fastest is not registered"), attention_backend("fastest"):
        pass


def test_every_masked_backend_is_known_to_diffusers():
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert set(MASKED_ATTENTION_BACKENDS) <= {b.value for b in AttentionBackendName}


def test_pipeline_images_equal_across_cpu_backends(tiny_token_pipe):
    def tokens():
        out = tiny_token_pipe(["a red circle", "a square"], guidance_scale=3.0, output_type="tokens",
                              generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images
        return torch.cat([t.flatten() for t in out])

    reference = tokens()
    for backend in ("_native_math", "flex"):
        tiny_token_pipe.transformer.set_attention_backend(backend)
        assert torch.equal(tokens(), reference), backend


def test_an_own_processor_replaces_the_attention_through_set_attn_processor():
    """diffusers' processor API as an extension point: here a processor that records every attention call."""

    class Recording(VARSelfAttnProcessor):
        def __init__(self):
            self.lengths = []

        def __call__(self, attn, x_BLD, *args, **kwargs):
            self.lengths.append(x_BLD.shape[1])
            return super().__call__(attn, x_BLD, *args, **kwargs)

    tr = make_tiny_transformer()
    vq, idx, x, cond = inputs({})
    with torch.no_grad():
        reference = tr(x, **cond).logits
        recorders = {name: Recording() for name in tr.attn_processors}
        tr.set_attn_processor(dict(recorders))
        torch.testing.assert_close(tr(x, **cond).logits, reference, atol=0, rtol=0)
        cached_logits(tr, vq, idx, cond)
    # one teacher-forced pass over all L tokens, then one call per scale with that scale's tokens
    assert all(r.lengths == [tr.num_tokens, 1, 4, 9, 16] for r in recorders.values())
