"""A Hugging Face ``imagefolder`` dataset of shapes-world scenes and their captions."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from .extension import WorldExtension
from .random_scenes import sample_extension_scene, sample_scene
from .render import render_scene


def generate_dataset(
    output_dir: str | os.PathLike,
    num_images: int,
    seed: int,
    allow_held_out: bool = False,
    show_progress: bool = True,
    extension: WorldExtension | None = None,
) -> Path:
    """Write a Hugging Face ``imagefolder`` dataset of ``num_images`` scenes and return its folder.

    Layout: ``000000.png, 000001.png, ...`` and ``metadata.jsonl`` whose lines read ``{"file_name", "text", "scene"}``
    (``scene`` is ``Scene.to_dict()`` serialised as a JSON string, kept a string so every row has one type). The same
    ``seed`` gives byte-identical files, and the first scenes of a larger dataset with that seed are the same. The
    folder is built in a temporary sibling and renamed into place, so an interrupted run leaves no half dataset.

    With ``extension`` every scene shows one of its words instead (``sample_extension_scene``): fine-tuning data for
    a concept the world does not have, in the world's caption templates.
    """
    output_dir = Path(output_dir)
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if extension is not None and allow_held_out:
        raise ValueError("allow_held_out applies to the world's own scenes; extension scenes never show a "
                         "held-out pair")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not an empty folder; choose a new path")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        rng = random.Random(seed)  # stdlib Mersenne Twister: its stream is stable across Python versions
        digits = max(6, len(str(num_images - 1)))
        lines = []
        for index in tqdm(range(num_images), desc="shapes world", disable=not show_progress):
            if extension is None:
                scene = sample_scene(rng, allow_held_out=allow_held_out)
            else:
                scene = sample_extension_scene(rng, extension)
            file_name = f"{index:0{digits}d}.png"
            render_scene(scene, extension).save(staging / file_name, format="PNG")
            record = {"file_name": file_name, "text": scene.caption, "scene": json.dumps(scene.to_dict(extension))}
            lines.append(json.dumps(record) + "\n")
        (staging / "metadata.jsonl").write_text("".join(lines), encoding="utf-8")
        if output_dir.exists():  # an empty folder: replace it
            output_dir.rmdir()
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
