"""The web demo (`var-clip demo`, and the Space's `app.py`): next-scale generation shown as it happens.

- ``engine``: the one shared pipeline, generation with streamed previews, cancellation, LoRA changes;
- ``uploads``: uploaded images checked by content (type, size, decompression bombs) and fitted to the model;
- ``forms``: the page's fields to requests, and results to what the page shows;
- ``ui``: the Gradio page; ``server``: the command and the temporary workspace it owns.

Only ``ui`` and ``server.serve`` need Gradio (``pip install 'var-clip[demo]'``).
"""
