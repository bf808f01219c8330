"""Cells of the study tables: mean over seeds, sample sd when there are several, an em dash when empty."""

from __future__ import annotations

from hf_cxr_diffusion.study.tables import EMPTY, cell_values, format_cell


def test_cells_average_seeds_and_count_run_numbers_once() -> None:
    rows = [{"variant": "lora", "run": f"lora-s{s}", "condition": c, "fid": fid, "class_consistency": cc}
            for s, fid in ((0, 10.0), (1, 12.0)) for c, cc in (("No Finding", 0.5 + s / 4), ("Cardiomegaly", 0.25))]
    assert cell_values(rows, "lora", "fid") == [10.0, 12.0]  # one per run, not one per condition row
    assert format_cell(cell_values(rows, "lora", "fid"), 2) == "11.00 ± 1.41"
    assert format_cell(cell_values(rows, "lora", "class_consistency", "No Finding"), 1, 100) == "62.5 ± 17.7"
    assert format_cell(cell_values(rows, "lora", "clip_score"), 2) == EMPTY
    assert format_cell([0.123456], 3) == "0.123"
