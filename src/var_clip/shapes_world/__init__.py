"""The shapes world: a tiny, fully specified image–caption world, its generator and its evaluator.

The embedded default model is trained on this world (its normative description is the spec ``shapes_world.md``), so
that the pipeline makes meaningful images offline and so that how faithfully an image follows its caption can be
*measured*. One module per idea, listed from the bottom up: each imports only modules listed before it.

- ``spec``: the words (``COLORS``, ``SHAPES``, ``SIZES``, ``POSITIONS``, ``RELATIONS``), ``HELD_OUT_PAIRS``,
  the spec's thresholds, its region and relation rules, and the caption templates' phrases;
- ``extension``: ``WorldExtension``, an extra colour, size or place (or a new name for a world colour or shape) and
  its meaning on the canvas. ``render_scene``, ``parse_caption``, ``detect_objects``, ``score_image`` and
  ``generate_dataset`` take one as ``extension=``; without it everything is the spec's world;
- ``scenes``: ``ShapeObject`` / ``Scene``;
- ``captions``: noun phrases, the captions of a scene (``caption_variants``) and ``parse_caption``;
- ``random_scenes``: ``sample_scene`` and ``sample_extension_scene``, random scenes and their captions;
- ``render``: ``render_scene``;
- ``evaluate``: ``detect_objects`` / ``score_image`` / ``summarize_scores``, the faithfulness evaluator;
- ``prompts``: ``evaluation_prompts``, the report's fixed prompt sets, and ``extension_prompts``;
- ``dataset``: ``generate_dataset``, a Hugging Face ``imagefolder`` of scenes.

Coordinates are continuous canvas coordinates: pixel ``(i, j)`` (column ``i``, row ``j``) covers ``[i, i+1) x [j, j+1)``
and ``y`` grows downward. An object's ``(cx, cy)`` is the centre of its bounding box; the evaluator measures the same
quantity from a pixel mask as ``(x_min + x_max + 1) / 2``.
"""

from .captions import (
    CaptionSpec,
    ObjectSpec,
    agree_articles,
    article,
    caption_variants,
    noun_phrase,
    parse_caption,
    rename_word,
)
from .dataset import generate_dataset
from .evaluate import DetectedObject, detect_objects, score_image, summarize_scores
from .extension import MAX_EXTENSION_SIDE, MIN_EXTENSION_SIDE, WorldExtension
from .prompts import evaluation_prompts, extension_prompts
from .random_scenes import RandomSource, sample_extension_scene, sample_scene
from .render import render_scene
from .scenes import Scene, ShapeObject
from .spec import (
    BACKGROUND,
    CAPTION_PREFIXES,
    COLOR_TOLERANCE,
    COLORS,
    FILL_RATIOS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    MIN_OBJECT_AREA,
    ONE_OBJECT_PROBABILITY,
    PLACEMENT_MARGIN,
    POSITION_MENTION_PROBABILITY,
    POSITION_PHRASES,
    POSITIONS,
    REGION_HIGH,
    REGION_LOW,
    RELATION_MIN_OFFSET,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZE_BOUNDARY_PX,
    SIZE_MENTION_PROBABILITY,
    SIZES,
    SUPERSAMPLE,
    position_holds,
    relation_holds,
    size_class,
)

__all__ = [
    "BACKGROUND",
    "CAPTION_PREFIXES",
    "COLORS",
    "COLOR_TOLERANCE",
    "FILL_RATIOS",
    "HELD_OUT_PAIRS",
    "IMAGE_SIZE",
    "MAX_EXTENSION_SIDE",
    "MIN_EXTENSION_SIDE",
    "MIN_OBJECT_AREA",
    "ONE_OBJECT_PROBABILITY",
    "PLACEMENT_MARGIN",
    "POSITIONS",
    "POSITION_MENTION_PROBABILITY",
    "POSITION_PHRASES",
    "REGION_HIGH",
    "REGION_LOW",
    "RELATIONS",
    "RELATION_MIN_OFFSET",
    "RELATION_PHRASES",
    "SHAPES",
    "SIZES",
    "SIZE_BOUNDARY_PX",
    "SIZE_MENTION_PROBABILITY",
    "SUPERSAMPLE",
    "CaptionSpec",
    "DetectedObject",
    "ObjectSpec",
    "RandomSource",
    "Scene",
    "ShapeObject",
    "WorldExtension",
    "agree_articles",
    "article",
    "caption_variants",
    "detect_objects",
    "evaluation_prompts",
    "extension_prompts",
    "generate_dataset",
    "noun_phrase",
    "parse_caption",
    "position_holds",
    "relation_holds",
    "rename_word",
    "render_scene",
    "sample_extension_scene",
    "sample_scene",
    "score_image",
    "size_class",
    "summarize_scores",
]
