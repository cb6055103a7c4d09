"""The inferred configuration as a table: what the conversion prints before it writes anything."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def parameter_count(module: torch.nn.Module) -> str:
    """The module's number of parameters, as a card writes it ("3.2M", "1.05B")."""
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def describe_pipeline(pipe, text_encoder_source: str | None = None) -> list[tuple[str, str, str]]:
    """The inferred configuration as ``(component, setting, value)`` rows, for the script's table."""
    t, v = pipe.transformer.config, pipe.vqvae.config
    L = sum(p * p for p in t.patch_nums)
    cond = (f"text, {t.text_embed_dim}-d CLIP embedding" if t.condition_type == "text"
            else f"class label, {t.num_classes} classes")
    rows = [
        ("transformer", "condition", cond),
        ("", "depth / width / heads", f"{t.depth} / {t.embed_dim} / {t.num_heads}"),
        ("", "mlp ratio", f"{t.mlp_ratio:g}"),
        ("", "shared AdaLN", "yes" if t.shared_aln else "no"),
        ("", "L2-norm attention", "yes" if t.attn_l2_norm else "no"),
        ("", "patch_nums", f"{','.join(map(str, t.patch_nums))} ({L} tokens)"),
        ("", "parameters", parameter_count(pipe.transformer)),
        ("vqvae", "codebook", f"{v.vocab_size} × {v.latent_channels}"),
        ("", "ch / ch_mult / res blocks", f"{v.ch} / {tuple(v.ch_mult)} / {v.num_res_blocks}"),
        ("", "image size", f"{pipe.vqvae.sample_size} px"),
        ("", "φ (quant_resi, shared)", f"{v.quant_resi:g}, {v.share_quant_resi}"),
        ("", "parameters", parameter_count(pipe.vqvae)),
    ]
    if t.condition_type == "text":
        encoder = getattr(pipe, "text_encoder", None)
        if encoder is None:
            rows.append(("text encoder", "", "none (generate with prompt_embeds)"))
        else:
            rows.append(("text encoder", text_encoder_source or "CLIP",
                         f"projection {encoder.config.projection_dim}, {parameter_count(encoder)}"))
    return rows


def format_table(rows: Sequence[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows)

