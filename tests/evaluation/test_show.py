"""`hashtagkit show`: the right images, the right hashtags, matches highlighted, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hashtagkit.cli.main import cli
from hashtagkit.evaluation import score_split
from hashtagkit.metrics import recall_per_image
from hashtagkit.show import MATCH_COLOR, draw_sheet, select_rows, sheet_entries, sheet_photos
from hashtagkit.stores import open_store


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A demo store (real JPEGs) with features that carry the labels, and a knn run on it."""
    tmp = tmp_path_factory.mktemp("show")
    store = tmp / "demo.zarr"
    assert invoke("prepare", "demo", "-o", store, "--n", "40").exit_code == 0
    s = open_store(store, mode="r+")
    labels = s.labels().astype(np.float32)
    rng = np.random.default_rng(0)
    X = np.concatenate([labels, labels], axis=1) + rng.random((len(labels), 2 * labels.shape[1])).astype(np.float32)
    c = labels.shape[1]
    rows = s.init_features(2 * c, "float32", [{"name": "object", "columns": [0, c]},
                                              {"name": "scene", "columns": [c, 2 * c]}], chunk_rows=16)
    for chunk, start in enumerate(range(0, len(X), rows)):
        s.write_chunk(chunk, X[start:start + rows], np.ones(len(X[start:start + rows]), bool))
    run = tmp / "run"
    res = invoke("fit", store, "--head", "knn", "--set", "k=3", "--set", "pca=null", "-o", run)
    assert res.exit_code == 0, res.output
    return store, run


def test_select_rows_orders_and_breaks_ties_by_seed():
    recall = np.array([0.0, 0.5, 0.0, 1.0, 0.0, 0.25, 1.0, 0.0])
    worst = select_rows(recall, 3, "worst", seed=0)
    assert set(recall[worst]) == {0.0}  # only the zero-recall images
    best = select_rows(recall, 3, "best", seed=0)
    assert list(recall[best]) == [1.0, 1.0, 0.5]
    picks = {tuple(select_rows(recall, 2, "worst", seed=s)) for s in range(10)}
    assert len(picks) > 1  # the seed chooses among the tied failures
    assert select_rows(recall, 2, "worst", seed=3).tolist() == select_rows(recall, 2, "worst", seed=3).tolist()
    sample = select_rows(recall, 5, "random", seed=1)
    assert len(set(sample.tolist())) == 5 and sample.tolist() == select_rows(recall, 5, "random", seed=1).tolist()
    assert len(select_rows(recall, 50, "random")) == len(recall)  # n is capped at the split


def test_entries_match_a_direct_computation(demo_run):
    store, run = demo_run
    scored = score_split(run)
    positions = np.arange(len(scored.rows))
    entries = sheet_entries(scored, positions, top=5)
    vocab = scored.store.vocab
    for pos, e in zip(positions, entries, strict=True):
        order = sorted(range(len(vocab)), key=lambda c: (-scored.scores[pos, c], c))[:5]
        truth = {vocab[c] for c in np.flatnonzero(scored.labels[pos])}
        assert [t for t, _, _ in e.predicted] == [vocab[c] for c in order]
        assert all(hit == (t in truth) for t, _, hit in e.predicted)
        assert {t for t, _ in e.truth} == truth
        assert {t for t, hit in e.truth if hit} == {t for t, _, hit in e.predicted if hit}
        assert e.recall == pytest.approx(sum(hit for _, _, hit in e.predicted) / len(truth))
    assert recall_per_image(scored.scores, scored.labels, 5).mean() == pytest.approx(np.mean([e.recall for e in entries]))


def test_sheet_highlights_exactly_the_matches(demo_run, tmp_path):
    store, run = demo_run
    scored = score_split(run)
    entries = sheet_entries(scored, select_rows(recall_per_image(scored.scores, scored.labels, 5), 6, "best"), top=5)
    opened = open_store(store)
    fig = draw_sheet(entries, sheet_photos(opened, opened.image_root, entries), "t", cols=3)
    red = sorted(t.get_text().split()[0] for t in fig.texts if t.get_color() == MATCH_COLOR)
    expected = sorted([f"#{t}" for e in entries for t, _, hit in e.predicted if hit]
                      + [f"#{t}" for e in entries for t, hit in e.truth if hit])
    assert red and red == expected
    assert len(fig.axes) == 6 and all(ax.images for ax in fig.axes)  # every photo drawn


def test_show_cli_writes_sheet_and_lists_images(demo_run, tmp_path):
    store, run = demo_run
    out = tmp_path / "sheet.png"
    res = invoke("show", run, "--n", "5", "--worst", "--cols", "5", "-o", out)
    assert res.exit_code == 0, res.output
    listed = [line.split("\t") for line in res.stdout.splitlines()]
    assert len(listed) == 5 and all(p.endswith(".jpg") for _, p, *_ in listed)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * im.height  # 5 columns, one row
    again = invoke("show", run, "--n", "5", "--worst", "-o", out)
    assert again.exit_code == 2 and "already exists" in again.output
    assert invoke("show", run, "-o", tmp_path / "sheet.txt").exit_code == 2


def test_show_streams_the_split_and_scores_only_the_drawn_photos(demo_run, tmp_path, monkeypatch):
    """The CLI picks the same worst images as the whole-matrix reference, while the split is
    scored 7 rows at a time and only the 4 drawn photos are scored together."""
    from hashtagkit import evaluation
    from hashtagkit.heads import Head

    store, run = demo_run
    scored = score_split(run)
    want = scored.rows[select_rows(recall_per_image(scored.scores, scored.labels, 5), 4, "worst", seed=2)]
    batched = evaluation._batches
    monkeypatch.setattr(evaluation, "_batches", lambda st, h, v, r, b: batched(st, h, v, r, 7))
    sizes = []
    predict = Head.predict_proba if type(scored.head).predict_proba is Head.predict_proba else type(scored.head).predict_proba
    monkeypatch.setattr(type(scored.head), "predict_proba", lambda self, X: sizes.append(len(X)) or predict(self, X))
    res = invoke("show", run, "--n", "4", "--worst", "--seed", "2", "-o", tmp_path / "w.png")
    assert res.exit_code == 0, res.output
    assert [int(line.split("\t")[0]) for line in res.stdout.splitlines()] == want.tolist()
    assert max(sizes) == 7 and sizes[-1] == 4 and sum(sizes) == len(scored.rows) + 4


def test_show_missing_image_is_drawn_not_fatal(demo_run, tmp_path):
    store, run = demo_run
    images = tmp_path / "imgs"
    images.mkdir()  # an empty folder: every photo is missing
    scored = score_split(run)
    entries = sheet_entries(scored, np.arange(2), top=5)
    fig = draw_sheet(entries, sheet_photos(open_store(store), images, entries), "t")
    assert sum("image missing" in t.get_text() for ax in fig.axes for t in ax.texts) == 2
    res = invoke("show", run, "--n", "2", "--images", images, "-o", tmp_path / "s.png")
    assert res.exit_code == 0 and (tmp_path / "s.png").stat().st_size > 0


def test_show_refuses_a_store_without_images(tmp_path):
    store = tmp_path / "p.zarr"
    assert invoke("prepare", "planted", "-o", store, "--n", "60", "--dim", "8").exit_code == 0
    assert invoke("fit", store, "--head", "popularity", "-o", tmp_path / "run").exit_code == 0
    res = invoke("show", tmp_path / "run", "-o", tmp_path / "s.png")
    assert res.exit_code == 2 and "has no images" in res.output and not (tmp_path / "s.png").exists()
