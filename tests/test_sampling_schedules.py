"""Per-scale sampling controls: guidance schedules and intervals, per-scale top-k/top-p/temperature, token pruning."""

from __future__ import annotations

import pytest
import torch

from var_clip.sampling import pivotal_tokens, resolve_schedule

PN = (1, 2, 3, 4)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def teacher_logits(pipe, tokens, embeds):
    x = pipe.vqvae.indices_to_teacher_input(tokens)
    with torch.no_grad():
        return pipe.transformer(x, text_embeds=embeds).logits


def test_schedules_resolve():
    assert resolve_schedule(PN, 3.0).guidance == (0.0, 1.0, 2.0, 3.0)
    assert resolve_schedule(PN, 3.0, "constant").guidance == (3.0,) * 4
    assert resolve_schedule(PN, 3.0, guidance_interval=(1, 3)).guidance == (0.0, 1.0, 2.0, 0.0)
    assert resolve_schedule(PN, 3.0, guidance_interval=(1, 3)).last_guided_scale == 2
    assert resolve_schedule(PN, 0.0).last_guided_scale == -1
    s = resolve_schedule(PN, top_k=[1, 2, 3, 4], top_p=0.5, temperature=[1, 1, 0.5, 2], prune_ratios={4: 0.25})
    assert s.top_k == (1, 2, 3, 4) and s.top_p == (0.5,) * 4 and s.temperature == (1, 1, 0.5, 2)
    assert s.prune_ratio == (0, 0, 0, 0.25)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(top_k=[1, 2]), "`top_k` must be one value or a list of 4 values"),
        (dict(top_p=[0.5] * 5), "`top_p` must be one value or a list of 4 values"),
        (dict(temperature=[1.0, 0.0, 1.0, 1.0]), "`temperature` must be a number > 0"),
        (dict(top_k=[1, 2, -3, 4]), "`top_k` must be an int >= 0"),
        (dict(guidance_schedule="cosine"), "`guidance_schedule` must be one of"),
        (dict(guidance_interval=(2, 9)), "`guidance_interval` must be"),
        (dict(guidance_interval=(3, 1)), "`guidance_interval` must be"),
        (dict(prune_ratios={5: 0.5}), "`prune_ratios` keys must be scale sides"),
        (dict(prune_ratios=[0, 0, 0, 1.0]), r"`prune_ratios` must be a share in \[0, 1\)"),
        (dict(prune_ratios=[0.5, 0, 0, 0]), "cannot prune the first scale"),
    ],
)
def test_bad_schedules(kwargs, message, tiny_pipe):
    with pytest.raises(ValueError, match=message):
        tiny_pipe("a red circle", **kwargs)


def test_constant_schedule_and_interval_apply_the_named_weights(tiny_pipe):
    embeds, null = tiny_pipe.encode_prompt("a red circle")[:2]
    for kwargs, weights in [(dict(guidance_schedule="constant"), [2.0] * 4), (dict(guidance_interval=(1, 3)), [0, 2 / 3, 4 / 3, 0])]:
        seen = []
        tokens = tiny_pipe("a red circle", guidance_scale=2.0, top_k=1, output_type="tokens", **kwargs,
                           callback_on_step_end=lambda p, si, pn, t: seen.append(t["logits_BlV"].clone()),
                           callback_on_step_end_tensor_inputs=["logits_BlV"]).images
        lc, lu = teacher_logits(tiny_pipe, tokens, embeds), teacher_logits(tiny_pipe, tokens, null)
        for si, (guided, t) in enumerate(zip(seen, weights)):
            sl = tiny_pipe.transformer.scale_slice(si)
            torch.testing.assert_close(guided, (1 + t) * lc[:, sl] - t * lu[:, sl], atol=1e-4, rtol=1e-4)


def test_guidance_interval_covering_all_scales_is_the_default(tiny_pipe):
    a = tiny_pipe("a red circle", generator=gen(), output_type="pt").images
    b = tiny_pipe("a red circle", generator=gen(), output_type="pt", guidance_interval=(0, 4)).images
    assert torch.equal(a, b)


def test_temperature_and_per_scale_top_k(tiny_pipe):
    base = tiny_pipe("a red circle", generator=gen(1), output_type="pt").images
    same = tiny_pipe("a red circle", generator=gen(1), output_type="pt", temperature=[1.0] * 4, top_k=[900] * 4).images
    assert torch.equal(base, same)
    hot = tiny_pipe("a red circle", generator=gen(1), output_type="pt", temperature=3.0).images
    assert not torch.equal(base, hot)
    greedy = tiny_pipe("a red circle", generator=gen(1), output_type="tokens", top_k=1).images
    greedy_cold = tiny_pipe("a red circle", generator=gen(2), output_type="tokens", top_k=[1, 1, 1, 1], temperature=0.1).images
    assert all(torch.equal(a, b) for a, b in zip(greedy, greedy_cold))


def test_pivotal_tokens_pick_the_outliers():
    x = torch.zeros(1, 9, 4)
    x[0, 7] = 5.0
    x[0, 2] = -3.0
    assert pivotal_tokens(x, 7 / 9).tolist() == [[2, 7]]
    assert pivotal_tokens(x, 0.0).shape == (1, 9)


def test_token_pruning_runs_and_keeps_unpruned_scales(tiny_pipe):
    full = tiny_pipe("a red circle", generator=gen(3), output_type="tokens", top_k=1).images
    pruned = tiny_pipe("a red circle", generator=gen(3), output_type="tokens", top_k=1, prune_ratios={4: 0.5}).images
    assert all(torch.equal(a, b) for a, b in zip(full[:3], pruned[:3]))  # scales before the pruned one are exact
    image = tiny_pipe("a red circle", generator=gen(3), output_type="pt", prune_ratios={3: 0.3, 4: 0.5}).images
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
