"""Datasets: prompts streamed from text, JSONL, CSV/TSV, Parquet and HF folders (issue #15)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from tlprobes._datasets import read_prompts
from tlprobes._errors import InputError, MissingExtraError, TLProbesError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# prompts with commas, quotes, tabs-free unicode and a U+2028 inside: every format must keep them
PROMPTS = [f'Prompt {i}: "she said", then {"é" * (i % 3)}her cat\u2028sat.' for i in range(257)]


def _write_all(d: Path, prompts: list[str]) -> dict[str, Path]:
    """The same prompts (and a per-prompt ``word`` column) in every format."""
    words = [f"w{i}" for i in range(len(prompts))]
    paths = {}
    paths["text"] = d / "p.txt"
    paths["text"].write_text("# a comment line\n" + "\n\n".join(prompts) + "\n", encoding="utf-8")
    paths["jsonl"] = d / "p.jsonl"
    paths["jsonl"].write_text(
        "".join(json.dumps({"text": p, "word": w, "n": i}) + "\n"
                for i, (p, w) in enumerate(zip(prompts, words, strict=True))), encoding="utf-8")
    paths["csv"] = d / "p.csv"
    with paths["csv"].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "word"])
        writer.writerows(zip(prompts, words, strict=True))
    paths["parquet"] = d / "p.parquet"
    pq.write_table(pa.table({"n": list(range(len(prompts))), "text": prompts, "word": words}),
                   paths["parquet"], row_group_size=50)
    paths["arrow"] = d / "arrow_only"
    paths["arrow"].mkdir()
    table = pa.table({"text": prompts, "word": words})
    with pa.OSFile(str(paths["arrow"] / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=40):
                writer.write_batch(batch)
    try:
        import datasets
    except ImportError:
        pass
    else:
        paths["hf"] = d / "hf"
        datasets.Dataset.from_dict({"text": prompts, "word": words}).save_to_disk(str(paths["hf"]))
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _write_all(tmp_path_factory.mktemp("datasets"), PROMPTS)


FORMATS = ["text", "jsonl", "csv", "parquet", "arrow", "hf"]


def _col(fmt: str) -> str | None:
    return None if fmt == "text" else "text"  # the tables have two text columns: name it


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_text_files_prompts(files, fmt):
    if fmt not in files:
        pytest.skip("datasets is not installed")
    stream = read_prompts(files[fmt], column=_col(fmt))
    assert list(stream) == list(read_prompts(files["text"])) == PROMPTS
    assert list(stream) == PROMPTS  # iterable again
    assert stream.count() == len(PROMPTS)
    assert stream.digest() == read_prompts(files["text"]).digest()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("start,stop", [(0, 3), (45, 105), (49, 51), (250, None), (256, 400), (300, None)])
def test_iter_range_is_a_slice(files, fmt, start, stop):
    if fmt not in files:
        pytest.skip("datasets is not installed")
    stream = read_prompts(files[fmt], column=_col(fmt))
    assert list(stream.iter_range(start, stop)) == PROMPTS[start:stop]


@pytest.mark.parametrize("fmt", FORMATS)
def test_limit(files, fmt):
    if fmt not in files:
        pytest.skip("datasets is not installed")
    stream = read_prompts(files[fmt], column=_col(fmt), limit=60)
    assert list(stream) == PROMPTS[:60]
    assert stream.count() == 60
    assert list(stream.iter_range(55, 70)) == PROMPTS[55:60]
    assert list(read_prompts(files[fmt], column=_col(fmt),
                             limit=10_000)) == PROMPTS


@pytest.mark.parametrize("fmt", FORMATS)
def test_len_and_slices(files, fmt):
    if fmt not in files:
        pytest.skip("datasets is not installed")
    stream = read_prompts(files[fmt], column=_col(fmt))
    assert len(stream) == len(PROMPTS)
    assert len(read_prompts(files[fmt], column=_col(fmt), limit=7)) == 7
    assert stream[5:9] == PROMPTS[5:9] and stream[250:300] == PROMPTS[250:300]
    assert stream[-3:] == PROMPTS[-3:] and stream[:2] == PROMPTS[:2]
    assert stream[0] == PROMPTS[0] and stream[-1] == PROMPTS[-1] and stream[100] == PROMPTS[100]
    with pytest.raises(IndexError, match="out of range for 257 prompts"):
        stream[257]
    with pytest.raises(InputError, match="step 1"):
        stream[::2]
    assert list(read_prompts(files[fmt], column=_col(fmt))) == PROMPTS  # list() of a fresh stream


def test_a_stream_pickles_as_its_path(files):
    import pickle

    stream = read_prompts(files["parquet"], column="text", limit=9)
    len(stream)
    copy = pickle.loads(pickle.dumps(stream))
    assert copy == stream and list(copy) == PROMPTS[:9] and len(pickle.dumps(stream)) < 1000


def test_sharded_run_over_a_stream_equals_the_list(files, tmp_path):
    """tp.run(..., shard_size=, out=) takes a stream: each shard reads its own range of the file."""
    import tlprobes as tp

    model = tp.load_model()
    prompts = [f"Mary saw her dog number {i}." for i in range(10)]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": prompts}), path, row_group_size=3)
    want = tp.run(model, prompts, tp.ResidualMean(), tp.Residual(positions="last"), batch_size=2)
    from tlprobes._datasets import PromptStream

    ranges = []
    real = PromptStream.iter_range

    def spy(self, start, stop):
        ranges.append((start, stop))
        return real(self, start, stop)

    PromptStream.iter_range = spy
    try:
        got = tp.run(model, read_prompts(path), tp.ResidualMean(), tp.Residual(positions="last"),
                     batch_size=2, shard_size=4, out=tmp_path / "run")
    finally:
        PromptStream.iter_range = real
    assert {(0, 4), (4, 8), (8, 10)} <= set(ranges)  # each shard read its own rows from the file
    assert got.inputs.prompts == prompts
    plain = tp.run(model, read_prompts(path), tp.ResidualMean(), batch_size=2)  # unsharded too
    assert plain.inputs.prompts == prompts
    import torch

    assert torch.equal(want.residual.resid, got.residual.resid)
    for key, value in want.residual_mean.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(value, got.residual_mean.state_dict()[key], rtol=1e-12, atol=0)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "arrow", "hf"])
def test_rows_carry_every_column(files, fmt):
    """Per-prompt columns (words, labels, targets) come with each row, as a suite's TSV gives them."""
    if fmt not in files:
        pytest.skip("datasets is not installed")
    stream = read_prompts(files[fmt], column="text")
    rows = list(stream.rows(10, 13))
    assert [r["text"] for r in rows] == PROMPTS[10:13]
    assert [r["word"] for r in rows] == ["w10", "w11", "w12"]
    assert "word" in stream.columns


def test_column_missing_names_the_columns(files):
    for fmt in ("jsonl", "csv", "parquet", "arrow"):
        with pytest.raises(InputError) as err:
            read_prompts(files[fmt], column="txet")
        msg = str(err.value)
        assert "'txet'" in msg and "'text'" in msg and "'word'" in msg, msg
        assert "did you mean 'text'" in msg
        assert isinstance(err.value, ValueError)


def test_ambiguous_column_names_the_text_columns(files):
    for fmt in ("jsonl", "csv", "parquet", "arrow"):
        with pytest.raises(InputError, match=r"several text columns.*'text', 'word'"):
            read_prompts(files[fmt])
    # the one text column is taken when there is one
    with pytest.raises(InputError, match="does not hold text"):
        read_prompts(files["parquet"], column="n")


def test_text_file_has_no_columns(files):
    with pytest.raises(InputError, match="no columns"):
        read_prompts(files["text"], column="text")


def test_bad_inputs(tmp_path, files):
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(InputError, match=r"\.jsonl"):
        read_prompts(tmp_path / "p.json")
    with pytest.raises(InputError, match="limit"):
        read_prompts(files["text"], limit=0)
    with pytest.raises(InputError, match="unknown dataset format 'xml'"):
        read_prompts(files["text"], format="xml")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(InputError, match=r"bad.jsonl:2 is not valid JSON"):
        list(read_prompts(bad))
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), nulls)
    with pytest.raises(InputError, match="row 1 of column 'text' is None"):
        list(read_prompts(nulls))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,word\na,b\nc\n")
    with pytest.raises(InputError, match="row 1 has 1 fields"):
        list(read_prompts(ragged, column="text"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.txt:1 is not UTF-8"):
        list(read_prompts(latin))
    assert issubclass(MissingExtraError, (TLProbesError, ImportError))


def test_datasetdict_folder_names_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]}),
                               "test": datasets.Dataset.from_dict({"text": ["c"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"splits 'train', 'test'.*dd/train"):
        read_prompts(tmp_path / "dd")
    assert list(read_prompts(tmp_path / "dd" / "test")) == ["c"]


def test_missing_extra_is_named(tmp_path, files, monkeypatch):
    """Without pyarrow a Parquet file fails with the extra to install, not a bare ImportError."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'tlprobes\[data\]'"):
        read_prompts(files["parquet"])
    assert list(read_prompts(files["text"])) == PROMPTS  # text needs nothing extra


def test_hf_folder_without_datasets_reads_its_arrow_files(files, monkeypatch):
    if "hf" not in files:
        pytest.skip("datasets is not installed")
    monkeypatch.setitem(sys.modules, "datasets", None)
    stream = read_prompts(files["hf"], column="text")
    assert list(stream) == PROMPTS
    assert list(stream.iter_range(100, 103)) == PROMPTS[100:103]


def _peak_kib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv"])
def test_streaming_memory_does_not_grow_with_the_file(tmp_path, fmt):
    """100,000 prompts through the iterator: the peak stays far below the file's size (about 7 MB),
    and equals the peak over a file ten times shorter within a few KiB."""
    def write(n: int) -> Path:
        path = tmp_path / f"big{n}.{ {'text': 'txt'}.get(fmt, fmt) }"
        with path.open("w", encoding="utf-8", newline="") as f:
            if fmt == "csv":
                f.write("text\n")
            for i in range(n):
                line = f"This is prompt number {i:06d} with a few words in it."
                f.write(json.dumps({"text": line}) + "\n" if fmt == "jsonl" else line + "\n")
        return path

    big, small = write(100_000), write(10_000)
    counted = {}

    def consume(path: Path):
        def go():
            n = 0
            for prompt in read_prompts(path):
                n += len(prompt) > 0
            counted[path] = n
        return go

    peak_big = _peak_kib(consume(big))
    peak_small = _peak_kib(consume(small))
    assert counted[big] == 100_000 and counted[small] == 10_000
    assert big.stat().st_size > 5_000_000
    assert peak_big < 512, f"peak {peak_big:.0f} KiB reading a {big.stat().st_size >> 20} MiB file"
    assert peak_big < peak_small + 64, (peak_big, peak_small)


def test_parquet_streaming_memory(tmp_path):
    """Parquet is read one batch at a time: pyarrow's peak allocation (its own pool, which
    tracemalloc does not see) stays far below the table's size. Run in a fresh process so the
    pool's peak is this read's alone."""
    path = tmp_path / "big.parquet"
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:  # 20 row groups of 5,000 prompts
        for chunk in range(20):
            writer.write_table(pa.table({"text": [f"prompt {chunk} {i} " + "x" * 200
                                                  for i in range(5000)]}, schema=schema))
    script = textwrap.dedent(f"""
        import pyarrow as pa
        from tlprobes._datasets import read_prompts
        pool = pa.default_memory_pool()
        before = pool.max_memory()
        n = sum(1 for _ in read_prompts({str(path)!r}))
        print(n, before, pool.max_memory())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    n, before, peak = map(int, out.stdout.split())
    table_bytes = 100_000 * 215
    assert n == 100_000
    assert peak < table_bytes / 4, (before, peak, table_bytes)  # read_table: > table_bytes


# -- suites and the CLI ---------------------------------------------------------------------------

REPO_PROBES = Path(__file__).resolve().parents[1] / "probes"


def _suite_with_dataset(tmp_path: Path, dataset_lines: str, prompts_lines: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(
        '[suite]\nname = "pos"\nstudy = "trajectories"\n\n'
        f"[prompts]\n{prompts_lines}\n[dataset]\n{dataset_lines}\n"
        '[analysis]\nword_column = "word"\ngroup_column = "pos"\ngroups = ["NOUN", "ADJ"]\n')
    return path


def test_suite_dataset_equals_its_tsv_prompt_file(tmp_path):
    """[dataset] gives the same prompts and per-prompt columns as the shipped TSV prompt file."""
    import pandas as pd

    from tlprobes.suites import load_suite

    tsv = load_suite(REPO_PROBES / "nouns_adjectives.toml")
    frame = pd.read_csv(REPO_PROBES / "prompts" / "pos_words.tsv", sep="\t", keep_default_na=False)
    assert frame["word_index"].dtype.kind == "i"  # an int column comes back as text, as from the TSV
    (tmp_path / "data").mkdir()
    frame.to_parquet(tmp_path / "data" / "pos.parquet", row_group_size=17)
    suite = load_suite(_suite_with_dataset(
        tmp_path, 'path = "data/pos.parquet"\ncolumn = "sentence"\n'))
    assert suite.prompts == tsv.prompts
    assert suite.columns == tsv.columns
    assert suite.to_dict()["dataset"]["format"] == "parquet"
    assert suite.to_dict()["n_prompts"] == len(tsv.prompts)
    limited = load_suite(_suite_with_dataset(
        tmp_path, f'path = "{tmp_path / "data" / "pos.parquet"}"\ncolumn = "sentence"\nlimit = 9\n'))
    assert limited.prompts == tsv.prompts[:9] and limited.columns["pos"] == tsv.columns["pos"][:9]


def test_suite_dataset_errors(tmp_path):
    from tlprobes.suites import SuiteError, load_suite

    (tmp_path / "d.jsonl").write_text('{"sentence": "Mary saw her dog.", "word": "dog"}\n')
    with pytest.raises(SuiteError, match=r"s.toml:\d+: dataset .* no column 'sentense'.*'sentence', 'word'"):
        load_suite(_suite_with_dataset(tmp_path, 'path = "d.jsonl"\ncolumn = "sentense"\n'))
    with pytest.raises(SuiteError, match="not both"):
        load_suite(_suite_with_dataset(tmp_path, 'path = "d.jsonl"\n', 'file = "d.jsonl"\n'))
    with pytest.raises(SuiteError, match=r"\[dataset\] needs the key 'path'"):
        load_suite(_suite_with_dataset(tmp_path, 'column = "sentence"\n'))
    with pytest.raises(SuiteError, match=r"unknown key 'colum' in \[dataset\]"):
        load_suite(_suite_with_dataset(tmp_path, 'path = "d.jsonl"\ncolum = "x"\n'))
    with pytest.raises(SuiteError, match="target ' him'.*absent from prompt 0"):
        load_suite(_suite_with_dataset(tmp_path, 'path = "d.jsonl"\ncolumn = "sentence"\n',
                                       'target = " him"\n'))
    suite = load_suite(_suite_with_dataset(tmp_path, 'path = "d.jsonl"\ncolumn = "sentence"\n',
                                           'target = " her"\n'))
    assert suite.prompts == ["Mary saw her dog."] and suite.columns["word"] == ["dog"]


def test_cli_dataset_flags_run_the_same_prompts(tmp_path, capsys):
    """`tlprobes run --dataset --column --limit` on the shipped model: the same numbers as the suite's
    own prompt file cut to the same length; the manifest records the dataset."""
    from tlprobes.cli import main as cli
    from tlprobes.suites import load_results

    lines = [ln for ln in (REPO_PROBES / "prompts" / "general.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    data = tmp_path / "general.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": p, "note": "x"}) + "\n"
                            for i, p in enumerate(lines)))
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(["run", "path_length", "--limit", "6", "--out", str(a), "--quiet"]) == 0
    assert cli(["run", "path_length", "--dataset", str(data), "--column", "prompt", "--limit", "6",
                "--out", str(b), "--quiet"]) == 0
    ra, rb = load_results(a), load_results(b)
    assert ra.manifest["suite"]["n_prompts"] == rb.manifest["suite"]["n_prompts"] == 6
    assert rb.manifest["suite"]["dataset"]["path"] == str(data)
    assert rb.manifest["suite"]["dataset"]["column"] == "prompt"
    assert set(ra.tables) == set(rb.tables)
    for name in ra.tables:
        import pandas as pd

        pd.testing.assert_frame_equal(ra.tables[name], rb.tables[name])
    capsys.readouterr()
    assert cli(["run", "path_length", "--dataset", str(data), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "several text columns" in err and "'prompt', 'note'" in err
    assert cli(["run", "path_length", "--column", "prompt", "--out", str(tmp_path / "c")]) == 2
    assert "--dataset PATH" in capsys.readouterr().err
    assert cli(["run", "path_length", "--limit", "0"]) == 2
