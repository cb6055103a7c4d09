"""The model card of a converted folder: the templates shipped in ``model_cards/`` and their fields."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import __version__
from ..original_format import DEFAULT_PATCH_NUMS
from ..pipelines.single_file import DEFAULT_TEXT_ENCODER, ConversionError
from ..utils.dtypes import VARIANT_DTYPE_NAMES
from ..utils.package_data import shipped_folder
from .describe import parameter_count

#: The model-card templates that ship with the package (``var_clip_d16.md``, ``var_class_conditional.md``,
#: ``default_model.md``): the repository's top-level ``model_cards/``, ``var_clip/model_cards`` in the wheel.
MODEL_CARDS_DIR = shipped_folder("model_cards", "model_cards")

# The architecture of the released weights, to tell in the model card whether a conversion is one of them.
_RELEASED_VQVAE = dict(vocab_size=4096, latent_channels=32, ch=160)
_RELEASED_PATCH_NUMS = DEFAULT_PATCH_NUMS


def model_card_template(template: str | os.PathLike) -> Path:
    """The path of a model-card template: a file, or the name of one shipped in :data:`MODEL_CARDS_DIR`.

    An existing file wins; otherwise a bare file name (``"var_clip_d16.md"``) names a shipped template. Anything
    else is a :class:`ConversionError` listing the shipped ones.
    """
    path = Path(template)
    if path.is_file():
        return path
    shipped = MODEL_CARDS_DIR / path.name
    if path.name == str(template) and shipped.is_file():
        return shipped
    names = sorted(p.name for p in MODEL_CARDS_DIR.glob("*.md"))
    raise ConversionError(f"model card template {str(template)!r} is neither a file nor one of the templates shipped "
                          f"with var-clip ({', '.join(names)})")


def render_model_card(template_path: str | os.PathLike, card_data, **fields):
    """Fill a Jinja model-card template; every placeholder must be given (a missing one is an error).

    ``template_path`` is a file, or the name of a template shipped with the package (see
    :func:`model_card_template`). ``card_data`` is a :class:`huggingface_hub.ModelCardData`, rendered as the YAML
    front matter (``{{ card_data }}``). Returns a :class:`huggingface_hub.ModelCard` (its metadata parsed back, so
    malformed YAML fails here).
    """
    import jinja2
    from huggingface_hub import ModelCard

    template_path = model_card_template(template_path)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_path.parent), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    try:
        text = env.get_template(template_path.name).render(card_data=card_data.to_yaml(), **fields)
    except jinja2.UndefinedError as e:
        raise ConversionError(f"model card template {str(template_path)!r} needs a value: {e.message}") from None
    return ModelCard(text, ignore_metadata_errors=False)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_fields(pipe, *, var_checkpoint, vae_checkpoint, text_encoder_source, model_location, dtype, variant):
    """The fields a converted pipeline's card template reads: its architecture, sources, sizes and versions."""
    import diffusers

    t, v = pipe.transformer.config, pipe.vqvae.config
    released = (all(v[k] == val for k, val in _RELEASED_VQVAE.items())
                and tuple(t.patch_nums) == _RELEASED_PATCH_NUMS and t.embed_dim == 64 * t.depth)
    if t.condition_type == "text":
        released = released and t.depth == 16 and t.text_embed_dim == 768
    else:
        released = released and t.depth in (16, 20, 24, 30) and t.num_classes == 1000
    has_text_encoder = getattr(pipe, "text_encoder", None) is not None
    return dict(
        model_location=model_location,
        released_architecture=released,
        depth=t.depth, embed_dim=t.embed_dim, num_heads=t.num_heads, mlp_ratio=f"{t.mlp_ratio:g}",
        shared_aln=t.shared_aln, attn_l2_norm=t.attn_l2_norm,
        patch_nums=",".join(map(str, t.patch_nums)), num_tokens=sum(p * p for p in t.patch_nums),
        vocab_size=t.vocab_size, latent_channels=t.latent_channels, image_size=pipe.vqvae.sample_size,
        vae_ch=v.ch, vae_ch_mult=tuple(v.ch_mult),
        text_embed_dim=t.text_embed_dim if t.condition_type == "text" else None,
        num_classes=t.num_classes if t.condition_type == "class" else None,
        example_class=207 if t.condition_type == "class" and t.num_classes > 207 else 0,
        transformer_params=parameter_count(pipe.transformer), vqvae_params=parameter_count(pipe.vqvae),
        has_text_encoder=has_text_encoder,
        text_encoder_source=text_encoder_source or DEFAULT_TEXT_ENCODER,
        dtype=dtype, variant=variant,
        torch_dtype=f"torch.{VARIANT_DTYPE_NAMES[dtype]}",
        var_checkpoint_name=Path(var_checkpoint).name, var_checkpoint_sha256=_sha256(var_checkpoint),
        vae_checkpoint_name=Path(vae_checkpoint).name, vae_checkpoint_sha256=_sha256(vae_checkpoint),
        var_clip_version=__version__, diffusers_version=diffusers.__version__,
    )


def card_data_of(pipe, has_text_encoder: bool, text_encoder_source: str | None, released: bool):
    """The card's metadata header (library, pipeline tag, tags, base model) for a converted pipeline."""
    from huggingface_hub import ModelCardData

    # `library_name: var-clip`, not `diffusers`: the Hub derives the "Use this model" snippet and the loader from
    # it, and diffusers' own `DiffusionPipeline.from_pretrained(repo_id)` cannot load components of var_clip's
    # classes. The `diffusers` tag still lists the repository with diffusers-format models.
    text = pipe.transformer.config.condition_type == "text"
    tags = ["var-clip", "diffusers", "safetensors", "var", "next-scale-prediction", "autoregressive"]
    tags += ["text-to-image", "clip"] if text else ["class-conditional", "imagenet"]
    base_model = ["FoundationVision/var"]
    if text and has_text_encoder and text_encoder_source == DEFAULT_TEXT_ENCODER:
        base_model.append(DEFAULT_TEXT_ENCODER)
    # The Hub has no class-conditional task; generating from a label and no text is closest to its
    # `unconditional-image-generation` task.
    pipeline_tag = "text-to-image" if text else "unconditional-image-generation"
    return ModelCardData(
        library_name="var-clip", license="mit", pipeline_tag=pipeline_tag, tags=tags,
        base_model=base_model if released else None, datasets=["ILSVRC/imagenet-1k"] if released else None,
    )
