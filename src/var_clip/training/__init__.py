"""Training: the VQ-VAE, a CLIP for worlds without one, and the VAR-CLIP transformer, with ``accelerate``.

Entry points (each ``accelerate launch -m var_clip.training.<name>``-able, each with ``build_parser()`` and
``main(argv)``): ``train_vqvae``, ``train_clip``, ``train_var``. Shared machinery: ``data`` (datasets, transforms,
resumable order), ``engine`` (the loop, optimizer, schedule, EMA), ``metrics_log`` (the step log, read back and
drawn by ``var-clip plot-log``), ``checkpointing`` (atomic checkpoints and outputs), ``token_cache`` (precomputed VAR
inputs), ``tokenizer`` (byte-level CLIP tokenizer), ``samples`` (grids).

Submodules are imported on use, so that ``import var_clip`` never pulls in the training dependencies.
"""
