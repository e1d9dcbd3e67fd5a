"""Model cards (issue 16): converting, calibrating and saving write an st_leap card with sentence-transformers'
own machinery, never the base model's card byte for byte."""

from __future__ import annotations

import st_leap


def test_converted_model_card_says_what_it_is_and_how_to_load_it(tiny_bert_dir, tmp_path):
    plain = tmp_path / "plain"
    from tests.conftest import stock_model

    stock = stock_model(tiny_bert_dir)
    stock.save(str(plain))
    (plain / "README.md").write_text("# The base model's own card\n")  # what a Hub model ships
    model = st_leap.from_pretrained(str(plain), exit_threshold={"query": 0.9})
    model.save(str(tmp_path / "leap"))
    card = (tmp_path / "leap" / "README.md").read_text()
    assert "The base model's own card" not in card
    for needed in (
        "early-exit",  # tag and text
        "EarlyExitTransformer",
        "pip install -U st-leap",
        'st_leap.load("',
        "trust_remote_code=True",
        "| `exit_threshold` | `{'query': 0.9, 'document': None, 'default': None}` |",
        "No exit rate or speed-up was measured",
        "2605.01058",  # the LEAP citation
    ):
        assert needed in card, needed
    again = st_leap.load(str(tmp_path / "leap"))
    again.save(str(tmp_path / "again"))
    assert "EarlyExitTransformer" in (tmp_path / "again" / "README.md").read_text()
