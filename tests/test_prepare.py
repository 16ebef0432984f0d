import itertools
from pathlib import Path

import pytest
from datasets import Dataset

from pipeline.data.corpus import read_splits, write_splits
from pipeline.errors import UserError
from pipeline.params import SPLITS, DataParams
from pipeline.prepare import prepare, split_documents, split_stats

ARTICLE = [" = {title} = \n", "\n", " First line of {title} .\n", "\n", " = = Part = = \n", " More of {title} .\n"]


def article(title: str) -> list[str]:
    return [line.format(title=title) for line in ARTICLE]


def local_params(**fields) -> DataParams:
    return DataParams(source="local", **fields)


def test_local_files_per_split_keep_every_line_and_count_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for split in SPLITS:
        Path(f"{split}.txt").write_text("".join(article(split)))
    splits = prepare(local_params(train_file="train.txt", validation_file="validation.txt", test_file="test.txt"))
    assert "".join(splits["train"]["text"]) == "".join(article("train"))
    stats = split_stats(splits)
    characters = sum(map(len, article("test")))
    assert stats["test"] == {"lines": 6, "empty_lines": 2, "characters": characters}


def test_single_file_is_split_by_whole_documents_with_a_fixed_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    titles = [f"Article {index}" for index in range(20)]
    Path("all.txt").write_text("".join(line for title in titles for line in article(title)))
    params = local_params(single_file="all.txt", split_fractions=[0.8, 0.1, 0.1], split_seed=3)
    first, second = prepare(params), prepare(params)
    assert all(first[split]["text"] == second[split]["text"] for split in SPLITS)
    headings = {split: [t for t in first[split]["text"] if t.startswith(" = ") and "= =" not in t] for split in SPLITS}
    assert [len(headings[split]) for split in SPLITS] == [16, 2, 2]
    assert sorted(itertools.chain(*headings.values())) == sorted(f" = {title} = \n" for title in titles)
    # Every document arrives whole: each heading is followed by its own five lines.
    train_lines = first["train"]["text"]
    start = train_lines.index(headings["train"][0])
    title = headings["train"][0][3:-4]
    assert train_lines[start : start + 6] == article(title)
    other_seed = prepare(local_params(single_file="all.txt", split_fractions=[0.8, 0.1, 0.1], split_seed=4))
    assert other_seed["test"]["text"] != first["test"]["text"]


def test_documents_without_headings_split_at_empty_lines_each_whole_in_one_split():
    documents = [["a\n", "b\n"], ["\n", "c\n"], ["\n", "d\n"], ["\n", "e\n"]]
    splits = split_documents([line for document in documents for line in document], [0.5, 0.25, 0.25], seed=0)
    assert [len(splits[split]) for split in SPLITS] == [4, 2, 2]
    for document in documents:
        homes = [split for split in SPLITS if _contains_run(splits[split], document)]
        assert len(homes) == 1, (document, splits)


def _contains_run(lines: list[str], run: list[str]) -> bool:
    return any(lines[start : start + len(run)] == run for start in range(len(lines) - len(run) + 1))


@pytest.mark.parametrize("ending", ["\r\n", "\r", "\n"], ids=["crlf", "cr", "lf"])
def test_a_single_file_of_40_articles_puts_each_article_whole_in_exactly_one_split(tmp_path, monkeypatch, ending):
    """Each article has lines found nowhere else; a heading missed (CRLF: " = T = \\r") would glue two articles."""
    monkeypatch.chdir(tmp_path)
    articles = {f"Article {index}": [line.replace("\n", ending) for line in article(f"Article {index}")]
                for index in range(40)}  # fmt: skip
    Path("all.txt").write_bytes("".join(line for lines in articles.values() for line in lines).encode())
    splits = prepare(local_params(single_file="all.txt", split_fractions=[0.9, 0.05, 0.05]))
    texts = {split: splits[split]["text"] for split in SPLITS}
    for title, lines in articles.items():
        homes = [split for split in SPLITS if _contains_run(texts[split], lines)]
        assert len(homes) == 1, f"{title} is whole in {homes}"
        body = f" First line of {title} .{ending}"
        assert sum(text.count(body) for split in SPLITS for text in texts[split]) == 1
    # 36 / 2 / 2 articles of 6 lines: every line is in exactly one split, none lost or doubled.
    assert [len(texts[split]) for split in SPLITS] == [216, 12, 12]


def test_a_split_that_would_be_empty_is_refused_with_the_counts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("few.txt").write_text("".join(line for title in ("A", "B", "C") for line in article(title)))
    with pytest.raises(UserError) as caught:
        prepare(local_params(single_file="few.txt", split_fractions=[0.9, 0.05, 0.05]))
    message = str(caught.value)
    assert "holds 3 document(s)" in message and "[0.9, 0.05, 0.05]" in message
    assert "the validation, test split(s) empty (train 3, validation 0, test 0 documents)" in message
    assert "\n" not in message
    three = prepare(local_params(single_file="few.txt", split_fractions=[0.4, 0.3, 0.3]))
    assert [len(three[split]) for split in SPLITS] == [6, 6, 6]


def test_subset_is_a_prefix_of_each_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("t.txt").write_text("".join(article("x")))
    params = local_params(train_file="t.txt", validation_file="t.txt", test_file="t.txt", max_validation_lines=2)
    splits = prepare(params)
    assert splits["validation"]["text"] == article("x")[:2]
    assert len(splits["train"]) == 6


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "no text in it"),
        (b"\n \n", "no text in it"),
        (b"ok\n\xff\xfe bad\n", "not UTF-8 text (bad byte at offset 3)"),
    ],
)
def test_unusable_local_text_is_refused_with_the_file_named(tmp_path, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    Path("bad.txt").write_bytes(content)
    with pytest.raises(UserError, match=r"bad\.txt") as caught:
        prepare(local_params(single_file="bad.txt"))
    assert expected in str(caught.value)


def test_missing_local_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"nope\.txt: no such file"):
        prepare(local_params(train_file="nope.txt", validation_file="nope.txt", test_file="nope.txt"))


def test_hub_source_goes_through_load_dataset(tmp_path):
    """`load_dataset` also takes a local dataset folder: the same call as for wikitext, with no network."""
    hub_folder = tmp_path / "fake-wikitext"
    hub_folder.mkdir()
    write_splits(hub_folder, {split: Dataset.from_dict({"text": article(split)}) for split in SPLITS})
    splits = prepare(DataParams(source="hub", hub_dataset=str(hub_folder), hub_config=None))
    assert splits["validation"]["text"] == article("validation")


def test_unreachable_hub_dataset_says_how_to_go_offline():
    with pytest.raises(UserError) as caught:
        prepare(DataParams(source="hub", hub_dataset="no-such-org/no-such-dataset", hub_config=None))
    assert "data.hub_dataset='no-such-org/no-such-dataset'" in str(caught.value)
    assert "data.source: local" in str(caught.value)


def test_prepared_splits_round_trip_byte_identically(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    write_splits(first, {split: Dataset.from_dict({"text": article(split)}) for split in SPLITS})
    write_splits(second, {split: Dataset.from_dict({"text": d["text"]}) for split, d in read_splits(first).items()})
    for split in SPLITS:
        assert (first / f"{split}.parquet").read_bytes() == (second / f"{split}.parquet").read_bytes()
