"""Parameter and MAC counts against the paper, and the token count at every stage."""

from __future__ import annotations

import pytest
import timm

import t2tvit  # noqa: F401  - registers the T2T-ViT models with timm
from t2tvit.summary import count_macs, summarize

# MACs at 224 as the paper's README states them (one decimal).
PAPER_GMACS = {"t2t_vit_7": 1.1, "t2t_vit_10": 1.5, "t2t_vit_12": 1.8, "t2t_vit_14": 4.8, "t2t_vit_t_14": 6.1}


@pytest.mark.parametrize(("name", "gmacs"), PAPER_GMACS.items())
def test_macs_match_the_paper(name: str, gmacs: float) -> None:
    assert round(count_macs(timm.create_model(name), (3, 224, 224)) / 1e9, 1) == gmacs


def test_macs_grow_with_image_size_and_leave_the_model_untouched() -> None:
    model = timm.create_model("t2t_vit_7", img_size=384)
    macs = count_macs(model, (3, 384, 384))
    assert 3.5 * count_macs(timm.create_model("t2t_vit_7"), (3, 224, 224)) < macs
    assert not any(p.is_meta for p in model.parameters())  # counted on a meta copy


def test_stages_of_t2t_vit_7() -> None:
    s = summarize(timm.create_model("t2t_vit_7_distilled"))
    assert s.params == 4_567_734 and s.frozen_params == 198 * 256 + 2 * 32 * 64
    tokens = [(st.tokens, st.dim) for st in s.stages]
    assert tokens == [(0, 3), (3136, 147), (3136, 64), (784, 576), (784, 64), (196, 576), (196, 256), (198, 256)]
