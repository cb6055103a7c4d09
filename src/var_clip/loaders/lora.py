"""LoRA adapters for the VAR-CLIP transformer (and, optionally, its CLIP text encoder), with diffusers' pipeline API.

The transformer is a diffusers ``PeftAdapterMixin`` model (``add_adapter``, ``set_adapter``, ``disable_adapters``,
``save_lora_adapter`` / ``load_lora_adapter``); :class:`VARCLIPLoraLoaderMixin` adds diffusers' pipeline-level API
(``load_lora_weights``, ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``,
``save_lora_weights``) to :class:`VARCLIPPipeline` and, through it, to the inpainting and image-to-image pipelines.

Files follow diffusers' layout: one ``pytorch_lora_weights.safetensors`` whose keys are
``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (and ``text_encoder.<module>...`` when the adapter also
adapts the text encoder) and whose header holds each part's peft ``LoraConfig`` (``lora_adapter_metadata``, each key
prefixed with its component), so rank, alpha and targets travel with the weights. An adapter that taught the model
words its base never read records them in the header too (``var_clip_words``, a JSON list): while it is active, the
pipelines count them as known and do not warn about them.
Only safetensors are read: a pickled adapter (``.bin``, ``torch.save``) is refused, whatever its suffix, because
unpickling runs code.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import safetensors.torch
import torch
from diffusers.loaders import PeftAdapterMixin
from diffusers.loaders.lora_base import (
    LORA_ADAPTER_METADATA_KEY,
    LORA_WEIGHT_NAME_SAFE,
    LoraBaseMixin,
    set_adapters_for_text_encoder,
)
from diffusers.utils import logging
from diffusers.utils.peft_utils import set_weights_and_activate_adapters

from ..hub import is_pickle_file
from ..utils.atomic import atomic_open
from ..utils.files import check_regular_file, check_replaceable, resolve_output_dir
from ..vocabulary import caption_words

__all__ = ["ADAPTER_WORDS_KEY", "LORA_WEIGHT_NAME", "TEXT_ENCODER_LORA_TARGETS", "VARCLIPLoraLoaderMixin",
           "adapter_parts", "add_text_encoder_adapter", "loaded_adapters", "lora_config", "lora_target_modules",
           "remove_adapter", "require_peft", "text_encoder_lora_config"]

logger = logging.get_logger(__name__)

#: diffusers' file name for LoRA weights; the only one read without `weight_name`.
LORA_WEIGHT_NAME = LORA_WEIGHT_NAME_SAFE
LORA_METADATA_KEY = LORA_ADAPTER_METADATA_KEY  # diffusers' header key for the adapter's LoraConfig
TRANSFORMER_PREFIX = "transformer"
TEXT_ENCODER_PREFIX = "text_encoder"
#: the header key of the words an adapter taught (a JSON list), read by the pipelines' unknown-word check
ADAPTER_WORDS_KEY = "var_clip_words"
MAX_ADAPTER_WORDS, MAX_WORD_LENGTH = 100_000, 128
#: the CLIP text encoder's default LoRA targets, as diffusers' text-encoder LoRA trainings: every attention projection
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def require_peft() -> None:
    """A one-line error when peft (the adapters' implementation) is missing."""
    from diffusers.utils import is_peft_available

    if not is_peft_available():
        raise ValueError("LoRA adapters need peft: pip install peft (or pip install 'var-clip[lora]')")


def lora_target_modules(transformer) -> list[str]:
    """The transformer's default LoRA targets: where the caption enters, and the attention projections of every block.

    - ``text_proj``: the pooled text embedding's projection to the width, i.e. the start token and every AdaLN's
      input. A word the text encoder never saw (split into pieces by its tokenizer) moves the pooled embedding only
      a little ("a huge red circle" vs "a red circle": cosine 0.98 on the default model); an adapter here can
      amplify that direction, so the rest of the model sees the new word clearly instead of having to bend for it.
      It costs rank × (E + D) parameters.
    - ``attn.mat_qkv`` (q, k, v in one matrix) and ``attn.proj``: next-scale prediction reads the condition and the
      coarser scales only through attention (the start token is the condition; a scale attends to every coarser
      one), so that is where a new concept changes what a scale draws, as LoRA's authors adapt q/k/v/o.
    - with token-level conditioning (``cross_attention_dim``) the cross-attention's ``to_q``, ``to_k``, ``to_v`` and
      ``proj``, which read the caption's words.

    The feed-forward and the AdaLN projections are left out (more parameters, and they act on every token whatever
    the prompt); name them with ``--lora_target_modules`` to adapt them too. peft matches a target against the end
    of each module name.
    """
    targets = ["text_proj", "attn.mat_qkv", "attn.proj"] if transformer.config.condition_type == "text" else \
        ["attn.mat_qkv", "attn.proj"]
    if transformer.config.cross_attention_dim:
        targets += ["cross_attn.to_q", "cross_attn.to_k", "cross_attn.to_v", "cross_attn.proj"]
    return targets


def lora_config(transformer, rank: int, alpha: float | None = None, dropout: float = 0.0,
                target_modules: Sequence[str] | None = None):
    """A peft ``LoraConfig`` for ``transformer``: rank ``rank``, scaling ``alpha / rank`` (alpha defaults to the rank,
    scaling 1), the default targets of :func:`lora_target_modules` unless given. ``lora_B`` starts at zero, so a new
    adapter leaves the model's outputs unchanged until trained."""
    require_peft()
    from peft import LoraConfig

    if target_modules is None and transformer is None:
        raise ValueError("pass `target_modules` or the `transformer` whose default targets to use")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive int, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                      target_modules=list(target_modules or lora_target_modules(transformer)))


def text_encoder_lora_config(rank: int, alpha: float | None = None, dropout: float = 0.0,
                             target_modules: Sequence[str] | None = None):
    """A peft ``LoraConfig`` for the CLIP text encoder (default targets :data:`TEXT_ENCODER_LORA_TARGETS`).

    Why adapt the text encoder at all: a word it never saw in training reaches it as sub-word pieces whose embeddings
    it never learned to read, so its pooled embedding barely moves ("a huge red circle" and "a red circle": cosine 0.98
    on the default model). Adapting its attention lets the new word change what the caption means, where the
    transformer alone could only amplify a faint trace of it.
    """
    return lora_config(None, rank, alpha, dropout, target_modules or TEXT_ENCODER_LORA_TARGETS)


def add_text_encoder_adapter(text_encoder, config, adapter_name: str = "default") -> None:
    """Add a LoRA adapter ``adapter_name`` with peft ``config`` to a transformers text encoder.

    peft's own injection, as diffusers' ``add_adapter`` does for its models; transformers' ``add_adapter`` would ask
    for a newer peft than var-clip needs. The encoder's ``peft_config`` and transformers' flag are kept as
    transformers keeps them, so diffusers' ``delete_adapters`` / ``unload_lora_weights`` treat it as their own.
    """
    require_peft()
    from peft import inject_adapter_in_model

    configs = dict(getattr(text_encoder, "peft_config", None) or {})
    if adapter_name in configs:
        raise ValueError(f"the text encoder already has an adapter named {adapter_name!r}")
    with warnings.catch_warnings():  # a second named adapter is asked for: peft's "Already found" warning is noise
        warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
        inject_adapter_in_model(config, text_encoder, adapter_name=adapter_name)
    text_encoder.peft_config = {**configs, adapter_name: config}
    text_encoder._hf_peft_config_loaded = True


def _lora_config_from(state_dict: Mapping[str, torch.Tensor], metadata: dict | None):
    """The ``LoraConfig`` of one component's part of a LoRA file: from its header when it has one, else read off the
    tensors (rank from ``lora_B``, targets from the module names, alpha = rank)."""
    import dataclasses

    from peft import LoraConfig

    if metadata:
        fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
        kwargs = {k: v for k, v in metadata.items() if k in fields and k not in ("peft_type", "task_type")}
        return LoraConfig(**kwargs)
    ranks = {k.rsplit(".lora_", 1)[0]: v.shape[1] for k, v in state_dict.items()
             if ".lora_B" in k or ".lora_embedding_B" in k}
    if len(set(ranks.values())) > 1:
        raise ValueError(f"this LoRA file mixes ranks {sorted(set(ranks.values()))} without the header that says how")
    rank = next(iter(ranks.values()))
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted({name.rsplit(".", 1)[-1] for name in ranks}))


def _load_text_encoder_adapter(text_encoder, state_dict: Mapping[str, torch.Tensor], metadata: dict | None,
                               adapter_name: str) -> None:
    """Add the ``text_encoder.`` part of a LoRA file to ``text_encoder`` as ``adapter_name``; every tensor must land."""
    from peft.utils import set_peft_model_state_dict

    prefix = f"{TEXT_ENCODER_PREFIX}."
    part = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if not hasattr(text_encoder, "text_model"):  # a flattened CLIPTextModel reads keys without `text_model.`
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    config = _lora_config_from(part, {k.removeprefix(prefix): v for k, v in (metadata or {}).items()
                                      if k.startswith(prefix)})
    add_text_encoder_adapter(text_encoder, config, adapter_name)
    result = set_peft_model_state_dict(text_encoder, part, adapter_name=adapter_name)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    expected = {n for n, _ in text_encoder.named_parameters() if f".{adapter_name}." in n}
    loaded = {k.removesuffix(".weight") + f".{adapter_name}" + (".weight" if k.endswith(".weight") else "")
              for k in part}
    if unexpected or expected - loaded:
        remove_adapter(text_encoder, adapter_name)
        raise ValueError(f"this LoRA file's text-encoder part does not fit this text encoder: "
                         f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:2]}), "
                         f"{len(expected - loaded)} adapter tensors missing (e.g. {sorted(expected - loaded)[:2]})")
    text_encoder.to(device=text_encoder.device, dtype=text_encoder.dtype)


def adapter_parts(components: Mapping[str, torch.nn.Module | None], adapter_name: str) -> dict:
    """The keyword arguments of :meth:`VARCLIPLoraLoaderMixin.save_lora_weights` for adapter ``adapter_name``:
    ``<component>_lora_layers`` and ``<component>_lora_adapter_metadata`` of each component (``{"transformer": ...,
    "text_encoder": ...}``) that holds it."""
    from peft.utils import get_peft_model_state_dict

    parts = {}
    for prefix, module in components.items():
        configs = getattr(module, "peft_config", None) or {}
        if adapter_name in configs:
            parts[f"{prefix}_lora_layers"] = get_peft_model_state_dict(module, adapter_name=adapter_name)
            parts[f"{prefix}_lora_adapter_metadata"] = configs[adapter_name].to_dict()
    return parts


def loaded_adapters(components: Mapping[str, torch.nn.Module | None]) -> dict[str, list[str]]:
    """The adapters each component holds (components with peft layers but no adapter listed as ``[]``): what a
    component that must be saved as plain weights may not have."""
    from diffusers.utils import is_peft_available

    if not is_peft_available():  # nothing can hold an adapter
        return {}
    from peft.tuners.tuners_utils import BaseTunerLayer

    held = {}
    for name, module in components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        configs = list(getattr(module, "peft_config", None) or {})
        if configs or any(isinstance(m, BaseTunerLayer) for m in module.modules()):
            held[name] = configs
    return held


def remove_adapter(module: torch.nn.Module, adapter_name: str) -> None:
    """Remove adapter ``adapter_name`` from a diffusers or transformers ``module``; once it holds no adapter, its peft
    layers are taken out too, so it is the plain model again (its state dict loads as the base weights)."""
    from diffusers.utils import recurse_remove_peft_layers
    from diffusers.utils.peft_utils import delete_adapter_layers

    with warnings.catch_warnings():  # peft's note that a deleted adapter was the active one: the caller asked for it
        warnings.filterwarnings("ignore", message=".*which is now deleted", category=UserWarning)
        delete_adapter_layers(module, adapter_name)
    configs = getattr(module, "peft_config", None)
    if configs is not None:
        configs.pop(adapter_name, None)
    if not getattr(module, "peft_config", None):
        recurse_remove_peft_layers(module)
        if hasattr(module, "peft_config"):
            del module.peft_config
        if hasattr(module, "_hf_peft_config_loaded"):
            module._hf_peft_config_loaded = None


def _check_finite(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` when it is not a finite number (NaN and ±inf would
    only fail later, inside the weights)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return float(value)


def _check_lora_contents(state_dict: Mapping[str, torch.Tensor], metadata: dict | None) -> None:
    """Refuse a LoRA file whose numbers cannot work, before any adapter is allocated: non-finite weights, an A/B pair
    of two ranks, a header claiming ranks (``r``, ``rank_pattern``) that none of its tensors has (peft would
    allocate what the header says: a few kilobytes could claim gigabytes), a non-finite ``lora_alpha``, or parts the
    header asks for and the file lacks (``lora_bias`` without biases, ``use_dora``: peft would fill them in at
    random, with a warning only)."""
    ranks: dict[str, dict[str, set[int]]] = {}
    biases: set[str] = set()
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ValueError(f"LoRA tensor {key!r} must hold finite floating-point values, got {tensor.dtype}"
                             f"{' with NaN/inf' if tensor.is_floating_point() else ''}")
        module, _, kind = key.partition(".lora_")
        prefix = module.split(".", 1)[0]
        if kind == "B.bias":
            biases.add(prefix)
            continue
        if kind not in ("A.weight", "B.weight", "embedding_A", "embedding_B"):
            continue
        if tensor.ndim < 2:
            raise ValueError(f"LoRA tensor {key!r} must be a matrix, got the shape {tuple(tensor.shape)}")
        rank = tensor.shape[0] if "A" in kind else tensor.shape[1]  # A: (r, in), B: (out, r)
        ranks.setdefault(prefix, {}).setdefault(module, set()).add(rank)
    for part in ranks.values():
        mixed = {m: sorted(r) for m, r in part.items() if len(r) > 1}
        if mixed:
            raise ValueError(f"LoRA file: lora_A and lora_B of one module must share a rank, got {mixed}")
    for prefix, part in ranks.items():
        config = {k.removeprefix(f"{prefix}."): v for k, v in (metadata or {}).items() if k.startswith(f"{prefix}.")}
        found = {r for module_ranks in part.values() for r in module_ranks}
        claimed = [config["r"]] if "r" in config else []
        claimed += list((config.get("rank_pattern") or {}).values())
        wrong = [r for r in claimed if isinstance(r, bool) or not isinstance(r, int) or r not in found]
        if wrong:
            raise ValueError(f"LoRA file: its header claims rank {wrong[0]!r} for the {prefix}, but its tensors have "
                             f"ranks {sorted(found)}; the header does not describe the weights")
        alphas = [config["lora_alpha"]] if "lora_alpha" in config else []
        for alpha in alphas + list((config.get("alpha_pattern") or {}).values()):
            _check_finite(f"{prefix} lora_alpha", alpha)
        if config.get("use_dora"):
            raise ValueError(f"LoRA file: its header asks for DoRA (`use_dora`) for the {prefix}; var-clip loads "
                             "LoRA adapters only")
        if config.get("lora_bias") and prefix not in biases:
            raise ValueError(f"LoRA file: its header asks for `lora_bias` for the {prefix}, but the file holds no "
                             "`lora_B.bias` tensors; the header does not describe the weights")


def check_adapter_words(words, name: str) -> list[str]:
    """``words`` as a sorted list of distinct lower-case words (what :func:`~var_clip.vocabulary.caption_words` finds
    in a caption); a ValueError naming ``name`` for anything else."""
    if isinstance(words, (str, bytes)) or not isinstance(words, Sequence):
        raise ValueError(f"{name} must be a list of words, got {type(words).__name__}")
    if len(words) > MAX_ADAPTER_WORDS:
        raise ValueError(f"{name} holds {len(words):,} words; at most {MAX_ADAPTER_WORDS:,} are allowed")
    bad = [w for w in words if not isinstance(w, str) or len(w) > MAX_WORD_LENGTH or caption_words(w) != [w]]
    if bad:
        raise ValueError(f"{name} must hold single lower-case words (letters, an apostrophe; at most "
                         f"{MAX_WORD_LENGTH} characters), got {str(bad[0])[:80]!r}")
    return sorted(set(words))


def recordable_words(words: Sequence[str]) -> list[str]:
    """The words of ``words`` a LoRA file can record (:func:`check_adapter_words` accepts them all): caption words no
    longer than ``MAX_WORD_LENGTH``, the first ``MAX_ADAPTER_WORDS`` of them."""
    return [w for w in words if len(w) <= MAX_WORD_LENGTH and caption_words(w) == [w]][:MAX_ADAPTER_WORDS]


def _json_header(header: Mapping[str, str], key: str, path: Path):
    """The JSON value under ``key`` of a safetensors header (None when absent), or a ValueError naming the file."""
    raw = header.get(key)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise ValueError(f"{str(path)!r}: its `{key}` header is not JSON") from None


def _local_lora_file(path: Path, weight_name: str | None) -> Path:
    """The safetensors file a local path names, or a ValueError that says why it is not one."""
    if path.is_dir():
        path = path / (weight_name or LORA_WEIGHT_NAME)
        if not path.is_file():
            pickled = sorted(p.name for p in path.parent.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            found = f"; it holds {pickled}, which var-clip does not load (pickle)" if pickled else ""
            raise ValueError(f"no {path.name!r} in {str(path.parent)!r}{found}: pass the safetensors file, or its "
                             "folder with `weight_name`")
    check_regular_file(path, "LoRA file")  # a FIFO or device would block the reads below
    if is_pickle_file(path):
        raise ValueError(f"{str(path)!r} is a pickled file: unpickling can run code, so var-clip loads LoRA weights "
                         "from safetensors only. Convert it where you trust it: "
                         "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                         "'pytorch_lora_weights.safetensors')")
    return path


class VARCLIPLoraLoaderMixin(LoraBaseMixin):
    """diffusers' LoRA API for var-clip's text pipelines; adapters live on the ``transformer`` and, optionally, on the
    ``text_encoder`` (one adapter name covers both parts).

    ``load_lora_weights(path_or_repo, adapter_name=...)`` adds an adapter (several can be loaded; the last one loaded
    is active), ``set_adapters([...], adapter_weights=[...])`` activates and weights them, ``fuse_lora(lora_scale=...)``
    merges the active ones into the weights (``unfuse_lora()`` subtracts them again), ``unload_lora_weights()``
    removes every adapter and leaves the base weights exactly as they were (when nothing is fused),
    ``save_lora_weights(folder, transformer_lora_layers=...)`` writes diffusers' file. ``disable_lora``,
    ``enable_lora``, ``delete_adapters``, ``get_active_adapters`` and ``get_list_adapters`` come from diffusers.
    """

    _lora_loadable_modules = [TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX]
    transformer_name = TRANSFORMER_PREFIX
    text_encoder_name = TEXT_ENCODER_PREFIX

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                        weight_name: str | None = None, subfolder: str | None = None,
                        return_lora_metadata: bool = False, **hub_kwargs):
        """The tensors of a LoRA file (and, with ``return_lora_metadata``, its adapter metadata, or None).

        ``pretrained_model_name_or_path_or_dict``: a safetensors file, a folder holding ``weight_name`` (default
        ``pytorch_lora_weights.safetensors``), a Hub repo id (the file is downloaded with ``huggingface_hub``;
        ``revision``, ``token``, ``cache_dir``, ``local_files_only`` are passed on) or a state dict.
        """
        state_dict, metadata, _ = cls._read_lora(pretrained_model_name_or_path_or_dict, weight_name, subfolder,
                                                 **hub_kwargs)
        return (state_dict, metadata) if return_lora_metadata else state_dict

    @classmethod
    def _read_lora(cls, pretrained_model_name_or_path_or_dict, weight_name: str | None = None,
                   subfolder: str | None = None, **hub_kwargs) -> tuple[dict, dict | None, list[str]]:
        """The tensors, the adapter metadata (or None) and the words the adapter taught (``[]`` when it records
        none) of a LoRA file or state dict, checked."""
        words: list[str] = []
        if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
            state_dict, metadata = dict(pretrained_model_name_or_path_or_dict), None
        else:
            source = Path(pretrained_model_name_or_path_or_dict).expanduser()
            if subfolder:
                source_local = source / subfolder
            else:
                source_local = source
            if source_local.exists():
                path = _local_lora_file(source_local, weight_name)
            else:
                from huggingface_hub import hf_hub_download

                unknown = set(hub_kwargs) - {"revision", "token", "cache_dir", "local_files_only", "force_download"}
                if unknown:
                    raise ValueError(f"unexpected keyword arguments {sorted(unknown)}")
                path = Path(hf_hub_download(str(pretrained_model_name_or_path_or_dict),
                                            weight_name or LORA_WEIGHT_NAME, subfolder=subfolder, **hub_kwargs))
                path = _local_lora_file(path, None)
            try:
                state_dict = safetensors.torch.load_file(path, device="cpu")
                with safetensors.safe_open(path, framework="pt") as handle:
                    header = handle.metadata() or {}
            except safetensors.SafetensorError as error:
                raise ValueError(f"{str(path)!r} is not a readable safetensors file: {error}") from error
            metadata = _json_header(header, LORA_METADATA_KEY, path)
            words = check_adapter_words(_json_header(header, ADAPTER_WORDS_KEY, path) or [],
                                        f"{str(path)!r}: its `{ADAPTER_WORDS_KEY}` header")
        is_lora = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
        if not state_dict or not all(any(part in k for part in is_lora) for k in state_dict):
            odd = [k for k in state_dict if not any(part in k for part in is_lora)][:3]
            raise ValueError(f"not a LoRA file in diffusers' peft layout (keys `...lora_A.weight` / "
                             f"`...lora_B.weight`): {'it is empty' if not state_dict else f'found {odd}'}")
        _check_lora_contents(state_dict, metadata)
        return state_dict, metadata, words

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          hotswap: bool = False, **kwargs) -> None:
        """Load a LoRA file as adapter ``adapter_name`` (default ``default_<n>``) and make it the active one.

        Its ``transformer.`` keys go to the transformer, its ``text_encoder.`` keys (if any) to the text encoder, under
        the same adapter name; a file with neither is refused.
        """
        require_peft()
        state_dict, metadata, words = self._read_lora(pretrained_model_name_or_path_or_dict, **kwargs)
        parts = {prefix: any(k.startswith(f"{prefix}.") for k in state_dict)
                 for prefix in (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX)}
        if not any(parts.values()):
            raise ValueError(f"no `{TRANSFORMER_PREFIX}.` or `{TEXT_ENCODER_PREFIX}.` keys in this LoRA file "
                             f"(found e.g. {next(iter(state_dict))!r}): var-clip adapters live on the transformer and "
                             "the text encoder")
        for prefix, present in parts.items():
            if present and getattr(self, prefix, None) is None:
                raise ValueError(f"this LoRA file adapts the {prefix}, and this pipeline has no `{prefix}`")
        if adapter_name is None:  # one name for both parts, so set_adapters and delete_adapters treat them as one
            from diffusers.utils.peft_utils import get_adapter_name

            adapter_name = get_adapter_name(self.transformer if parts[TRANSFORMER_PREFIX] else self.text_encoder)
        taken = [c for c in (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX)
                 if adapter_name in getattr(getattr(self, c, None), "peft_config", {})]
        if taken and not hotswap:
            raise ValueError(f"an adapter named {adapter_name!r} is already loaded ({', '.join(taken)}): pass another "
                             "`adapter_name`, or `delete_adapters` it first")
        if parts[TEXT_ENCODER_PREFIX] and hotswap:
            raise ValueError("`hotswap` replaces transformer adapters only; this file also adapts the text encoder: "
                             "load it under a new `adapter_name`")
        active = self.get_active_adapters()
        try:
            if parts[TRANSFORMER_PREFIX]:
                with warnings.catch_warnings():  # a second named adapter is what set_adapters is for: peft's
                    # "Already found a `peft_config`" warning about it says nothing the caller did not ask for
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
                    self.transformer.load_lora_adapter(state_dict, prefix=TRANSFORMER_PREFIX,
                                                       adapter_name=adapter_name, metadata=metadata, _pipeline=self,
                                                       hotswap=hotswap)
            if parts[TEXT_ENCODER_PREFIX]:
                _load_text_encoder_adapter(self.text_encoder, state_dict, metadata, adapter_name)
        except Exception:
            # a failed load leaves the pipeline as it was: no half-loaded adapter, the same active ones
            if not hotswap:
                for component in (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX):
                    module = getattr(self, component, None)
                    if module is not None and (adapter_name in (getattr(module, "peft_config", None) or {})
                                               or loaded_adapters({component: module}).get(component) == []):
                        remove_adapter(module, adapter_name)
                if active:
                    self.set_adapters(active)
            raise
        self._adapter_words.pop(adapter_name, None)
        if words:
            self._adapter_words[adapter_name] = words
        # a newly loaded adapter is the active one, in every component it adapts and no other
        self.set_adapters(adapter_name)

    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike,
                          transformer_lora_layers: Mapping[str, torch.Tensor] | torch.nn.Module | None = None,
                          text_encoder_lora_layers: Mapping[str, torch.Tensor] | torch.nn.Module | None = None,
                          is_main_process: bool = True, weight_name: str | None = None,
                          transformer_lora_adapter_metadata: dict | None = None,
                          text_encoder_lora_adapter_metadata: dict | None = None,
                          safe_serialization: bool = True, adapter_words: Sequence[str] | None = None) -> Path:
        """Write ``transformer_lora_layers`` and/or ``text_encoder_lora_layers`` (peft's
        ``get_peft_model_state_dict(module, adapter_name=...)``) as diffusers' ``pytorch_lora_weights.safetensors`` in
        ``save_directory``, atomically; returns the file. ``save_directory`` must be new or hold only files var-clip
        writes (:func:`~var_clip.utils.files.check_replaceable`): a user's folder is refused before anything is written.

        ``*_lora_adapter_metadata`` is each part's ``LoraConfig.to_dict()``; with it the file loads with the same rank,
        alpha and targets anywhere. ``adapter_words``: the words the adapter taught that its base model never read
        (lower-case single words); a pipeline that loads the file does not warn about them while it is active.
        """
        if not safe_serialization:
            raise ValueError("var-clip writes LoRA weights as safetensors only (`safe_serialization=True`)")
        parts = {TRANSFORMER_PREFIX: (transformer_lora_layers, transformer_lora_adapter_metadata),
                 TEXT_ENCODER_PREFIX: (text_encoder_lora_layers, text_encoder_lora_adapter_metadata)}
        words = check_adapter_words(adapter_words, "adapter_words") if adapter_words is not None else []
        if not transformer_lora_layers and not text_encoder_lora_layers:
            raise ValueError("pass `transformer_lora_layers` (and/or `text_encoder_lora_layers`), e.g. "
                             "peft.utils.get_peft_model_state_dict(pipe.transformer, adapter_name=...)")
        tensors, packed = {}, {}
        for prefix, (layers, config) in parts.items():
            if not layers:
                continue
            if isinstance(layers, torch.nn.Module):
                layers = layers.state_dict()
            tensors.update({f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in layers.items()})
            packed.update({f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in (config or {}).items()})
        header = {"format": "pt"}
        if packed:
            header[LORA_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True, default=str)
        if words:
            header[ADAPTER_WORDS_KEY] = json.dumps(words)
        name = weight_name or LORA_WEIGHT_NAME
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise ValueError(f"`weight_name` must be a file name ending in .safetensors, got {weight_name!r}")
        path = Path(save_directory) / name
        if is_main_process:
            # the same rule as every command's output folder: new, or holding only what var-clip writes
            folder = resolve_output_dir(save_directory, "save_directory")
            check_replaceable(folder, "save_directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as handle:
                handle.write(safetensors.torch.save(tensors, metadata=header))
        return path

    def save_lora_adapter_weights(self, save_directory: str | os.PathLike, adapter_name: str = "default",
                                  weight_name: str | None = None) -> Path:
        """Write one loaded or trained adapter, with its config, as diffusers' LoRA file: its transformer part and, when
        it adapts the text encoder too, that part."""
        require_peft()
        parts = adapter_parts({c: getattr(self, c, None) for c in (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX)},
                              adapter_name)
        if not parts:
            raise ValueError(f"no adapter {adapter_name!r} in this pipeline (it has {self.get_list_adapters()})")
        return self.save_lora_weights(save_directory, weight_name=weight_name,
                                      adapter_words=self._adapter_words.get(adapter_name), **parts)

    @property
    def _adapter_words(self) -> dict[str, list[str]]:
        """Per loaded adapter, the words its file says it taught. Kept on the transformer (the text encoder where there
        is none), so that pipelines made from this one with ``from_pipe``, which share it, see the same."""
        holder = getattr(self, TRANSFORMER_PREFIX, None)
        if holder is None:
            holder = getattr(self, TEXT_ENCODER_PREFIX, None)
        if holder is None:
            return {}
        return holder.__dict__.setdefault("_var_clip_adapter_words", {})

    def adapter_words(self) -> list[str]:
        """The words the active adapters taught (as their files record them), sorted; ``[]`` without adapters."""
        taught = self._adapter_words
        if not taught:
            return []
        active = set(self.get_active_adapters())
        return sorted({word for name, words in taught.items() if name in active for word in words})

    def _loaded(self, adapter_names: list[str] | str) -> tuple[list[str], dict[str, list[str]]]:
        """``adapter_names`` as a list, and the adapters each component holds; an error naming any not loaded."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        present = self.get_list_adapters()
        missing = sorted(set(names) - {n for held in present.values() for n in held})
        if missing:
            raise ValueError(f"Adapter name(s) {missing} not in the list of present adapters: {present}")
        return names, present

    def set_adapters(self, adapter_names: list[str] | str,
                     adapter_weights: float | dict | list[float] | list[dict] | None = None) -> None:
        """Activate ``adapter_names`` with ``adapter_weights`` (one per adapter, default 1.0; a dict per adapter may
        weigh its components apart, e.g. ``{"transformer": 1.0, "text_encoder": 0.5}``).

        Each component runs the named adapters it holds; a component that holds none of them runs without adapters
        (diffusers' own ``set_adapters`` asks every component for every name). Like diffusers', it does not undo
        ``disable_lora()``: ``enable_lora()`` does.
        """
        names, present = self._loaded(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"{len(names)} adapter names but {len(weights)} `adapter_weights`")
        for weight in weights:
            for value in (weight.values() if isinstance(weight, dict) else [weight]):
                if value is not None:
                    _check_finite("adapter_weights", value)
        for component in (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX):
            module = getattr(self, component, None)
            if module is None or component not in present:
                continue
            here = [(n, w.get(component, 1.0) if isinstance(w, dict) else w)
                    for n, w in zip(names, weights) if n in present[component]]
            if not here:  # no active adapter in this component: it computes exactly what its base weights do
                set_weights_and_activate_adapters(module, [], [])
            elif isinstance(module, PeftAdapterMixin):  # the diffusers transformer
                module.set_adapters([n for n, _ in here], [w for _, w in here])
            else:  # the transformers text encoder
                set_adapters_for_text_encoder([n for n, _ in here], module, [w for _, w in here])

    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        """Remove adapters (all their parts) from the pipeline; a component left without adapters is the plain model
        again (its peft layers are taken out, so ``save_pretrained`` writes weights that load as they are)."""
        names, present = self._loaded(adapter_names)
        if self._weights_before_fusing:
            raise ValueError("adapters are fused into the weights: call `unfuse_lora()` before `delete_adapters`")
        for component, held in present.items():
            for name in (n for n in names if n in held):
                remove_adapter(getattr(self, component), name)
        for name in names:
            self._adapter_words.pop(name, None)

    def get_active_adapters(self) -> list[str]:
        """The adapters active in any component, in the order they were activated."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        active: list[str] = []
        for component in self._lora_loadable_modules:
            module = getattr(self, component, None)
            layer = next((m for m in module.modules() if isinstance(m, BaseTunerLayer)), None) if module else None
            active += [n for n in (layer.active_adapters if layer is not None else []) if n not in active]
        return active

    @property
    def _weights_before_fusing(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per component, a copy of every weight :meth:`fuse_lora` changed, as it was before the first fusion."""
        if "_base_weights" not in self.__dict__:
            self.__dict__["_base_weights"] = {}
        return self.__dict__["_base_weights"]

    def fuse_lora(self, components: Sequence[str] = (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX), lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: list[str] | None = None, **kwargs) -> None:
        """Merge the active adapters (or ``adapter_names``), times ``lora_scale``, into the weights of ``components``.

        The weights it changes are copied first, so that :meth:`unfuse_lora` and :meth:`unload_lora_weights` give
        the base weights back bit for bit (subtracting the merged product again would be off by rounding); each
        adapter keeps its own scale afterwards (diffusers' fusion leaves it multiplied by ``lora_scale``).
        """
        from peft.tuners.tuners_utils import BaseTunerLayer

        _check_finite("lora_scale", lora_scale)
        modules = {c: getattr(self, c, None) for c in components}
        layers = {c: {name: m for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}
                  for c, module in modules.items() if module is not None}
        scalings = {(c, name): dict(getattr(m, "scaling", {}))
                    for c, found in layers.items() for name, m in found.items()}
        for c, found in layers.items():
            saved = self._weights_before_fusing.setdefault(c, {})
            for name, layer in found.items():
                for key, tensor in layer.get_base_layer().named_parameters(recurse=False):
                    saved.setdefault(f"{name}.{key}", tensor.detach().clone())
        super().fuse_lora(components=list(components), lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)
        for (c, name), scaling in scalings.items():
            layers[c][name].scaling.update(scaling)

    def unfuse_lora(self, components: Sequence[str] = (TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX), **kwargs) -> None:
        """Undo :meth:`fuse_lora`: the weights of ``components`` are the base weights again, bit for bit."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        super().unfuse_lora(components=list(components), **kwargs)
        for c in components:
            saved = self._weights_before_fusing.pop(c, None)
            module = getattr(self, c, None)
            if not saved or module is None:
                continue
            with torch.no_grad():
                for name, layer in module.named_modules():
                    if not isinstance(layer, BaseTunerLayer):
                        continue
                    for key, tensor in layer.get_base_layer().named_parameters(recurse=False):
                        if f"{name}.{key}" in saved:
                            tensor.copy_(saved[f"{name}.{key}"])

    def unload_lora_weights(self) -> None:
        """Remove every adapter: the components are the plain base models again, bit for bit (fused or not)."""
        if self._weights_before_fusing:
            self.unfuse_lora(components=list(self._weights_before_fusing))
        super().unload_lora_weights()
        self._adapter_words.clear()
