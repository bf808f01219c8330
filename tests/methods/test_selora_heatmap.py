"""SeLoRA's rank heatmaps follow the paper's layout (Fig. 3: text encoder layer x q/k/v/out/fc; Fig. 4: U-Net block x attn1/attn2 q/k/v/out)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from hf_cxr_diffusion.methods.selora.heatmap import TEXT_ENCODER_ROWS, UNET_ATTENTION_ROWS, plot_rank_heatmap, rank_panels

TE = "text_encoder.text_model.encoder.layers.{layer}.{part}"
TE_PARTS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "out": "self_attn.out_proj",
            "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}
#: SD 1.5's attention blocks (down 0-2 x 2, mid, up 1-3 x 3) in data-flow order, labelled as in the paper's Fig. 4
SD15_BLOCKS = [(f"down_blocks.{b}.attentions.{a}", f"d{b}{a}") for b in range(3) for a in range(2)] + [
    ("mid_block.attentions.0", "mid")] + [(f"up_blocks.{b}.attentions.{a}", f"u{b}{a}") for b in range(1, 4) for a in range(3)]


def _sd15_like_ranks() -> dict[str, int]:
    ranks = {}
    for layer in range(12):
        for row, part in TE_PARTS.items():
            ranks[TE.format(layer=layer, part=part)] = 1 + layer + TEXT_ENCODER_ROWS.index(row)
    for col, (block, _) in enumerate(SD15_BLOCKS):
        for attn in ("attn1", "attn2"):
            for row, proj in ATTN.items():
                ranks[f"unet.{block}.transformer_blocks.0.{attn}.{proj}"] = 100 * col + UNET_ATTENTION_ROWS.index(f"{attn}_{row}")
        ranks[f"unet.{block}.transformer_blocks.0.ff.net.2"] = 7
    ranks["unet.time_embedding.linear_1"] = 3
    ranks["unet.up_blocks.3.resnets.2.time_emb_proj"] = 5
    return ranks


def test_panels_have_the_papers_rows_and_columns_and_put_every_rank_in_its_cell():
    text, unet, other = rank_panels(_sd15_like_ranks())
    assert text.rows == list(TEXT_ENCODER_ROWS) and text.columns == [str(i) for i in range(12)]
    assert text.values[TEXT_ENCODER_ROWS.index("fc1"), 7] == 1 + 7 + 4
    assert unet.rows == list(UNET_ATTENTION_ROWS)  # attn1_q .. attn1_out, attn2_q .. attn2_out
    assert unet.columns == [label for _, label in SD15_BLOCKS]  # d00 d01 d10 d11 d20 d21 mid u10 .. u32 (input to output)
    assert unet.values[UNET_ATTENTION_ROWS.index("attn2_k"), unet.columns.index("u21")] == 100 * unet.columns.index("u21") + 5
    assert not np.isnan(unet.values).any() and not np.isnan(text.values).any()
    assert set(other.rows) == {"ff.net.2", "linear_1", "time_emb_proj"}  # the layers the paper's figures do not show
    assert np.nansum(other.values) == 7 * len(SD15_BLOCKS) + 3 + 5 and np.isnan(other.values).sum() == other.values.size - 18


def test_partial_targets_give_only_their_rows(tmp_path):
    ranks = {f"unet.mid_block.attentions.0.transformer_blocks.1.attn2.{p}": 2 for p in ("to_q", "to_k")}
    (panel,) = rank_panels(ranks)
    assert panel.rows == ["attn2_q", "attn2_k"] and panel.columns == ["mid.1"]
    png = plot_rank_heatmap(_sd15_like_ranks(), tmp_path / "heatmap.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 600
    assert math.isclose(panel.values.sum(), 4)
