"""The phrase-position study: meaning-preserving variants, scored against the canonical caption."""

from __future__ import annotations

import json

import pytest

from var_clip import shapes_world as sw
from var_clip.analysis import phrase_position as pp


@pytest.mark.parametrize("family", list(pp.FAMILIES))
def test_variants_keep_the_meaning_and_the_training_vocabulary(family):
    rows = pp.family_variants(family)
    assert rows
    vocabulary = {w for c in sw.evaluation_prompts(False, 1) + sw.evaluation_prompts(False, 2) for w in c.split()}
    vocabulary |= {w for prefix in sw.CAPTION_PREFIXES for w in prefix.split()}
    for canonical, variants in rows:
        spec = sw.parse_caption(canonical)
        assert any(v.caption == canonical or v.caption.endswith(canonical) for v in variants)  # the trained order
        for v in variants:
            words = {w.strip(",") for w in v.caption.split()}
            assert words <= vocabulary, (v.caption, words - vocabulary)
            if family != "relation":  # one object: the same colour, shape and position, in any order
                assert sw.parse_caption(v.caption.replace(",", "")).objects == spec.objects
    assert len({v.name for v in rows[0][1]}) == len(rows[0][1])


def test_measure_and_plot_on_a_tiny_pipeline(tiny_pipe, tmp_path):
    report = pp.measure_phrase_position(tiny_pipe, samples_per_prompt=1, batch_size=64, output_type="pil")
    assert set(report) == set(pp.FAMILIES)
    for family, rows in report.items():
        for row in rows.values():
            assert 0.0 <= row["accuracy"] <= 1.0 and -1.0 <= row["similarity"] <= 1.0001
            assert row["num_images"] == len(pp.family_variants(family))
    trained = report["relation"]["relation between the objects (trained order)"]
    assert trained["similarity"] == pytest.approx(1.0, abs=1e-5)  # the canonical caption itself
    pp.plot_phrase_position({"tiny": report, "tiny again": report}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(report)
