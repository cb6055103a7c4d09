"""Class-conditional VAR for diffusers apps, loaded through diffusers' custom-pipeline mechanism.

    from diffusers import DiffusionPipeline
    from var_clip.hub import CUSTOM_PIPELINES_DIR, check_no_remote_code

    pipe = DiffusionPipeline.from_pretrained(
        check_no_remote_code("path/to/converted/var-d16"),  # trust_remote_code then trusts this file only
        custom_pipeline=str(CUSTOM_PIPELINES_DIR / "pipeline_var.py"),
        trust_remote_code=True,
    )

diffusers copies this file into its modules cache, imports it and uses the one `DiffusionPipeline` subclass it
finds here; the components themselves are loaded from the modules named in `model_index.json`
(`var_clip.models...`), so the var-clip package must be installed (`pip install var-clip`). Tested with
diffusers 0.42.1.
"""

from var_clip import VARPipeline

__all__ = ["VARPipeline"]
