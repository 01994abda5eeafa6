"""CLI defaults shared by every command: ``--data auto``, progress on stderr, ``--version``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import privquant
from privquant.cli import build_parser, main
from privquant.models.data import fashion_mnist_available, resolve_dataset

pytestmark = pytest.mark.usefixtures("torch_single_thread")
LENET = Path(privquant.__file__).resolve().parent / "models" / "weights" / "lenet5-w8a8.pq"


def test_every_data_option_defaults_to_auto():
    p = build_parser()
    for argv in (
        ["eval", "x.pq"],
        ["infer", "x.pq"],
        ["client", "--server", "h:1", "--server-key", "f"],
        ["search", "--model", "lenet5", "--out", "a.json"],
    ):
        assert p.parse_args(argv).data == "auto", argv


def test_auto_is_the_full_set_when_installed_else_the_sample(capsys, monkeypatch, tmp_path):
    full = fashion_mnist_available()
    assert resolve_dataset("auto") == ("fashion-mnist" if full else "fashion-mnist-sample")
    rc = main(["eval", str(LENET), "--limit", "30", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["data"] == resolve_dataset("auto") and res["n"] == 30
    monkeypatch.setenv("PRIVQUANT_FMNIST_DIR", str(tmp_path))  # nothing installed there
    assert resolve_dataset("auto") == "fashion-mnist-sample"
    rc = main(["eval", str(LENET), "--limit", "30", "--json"])
    res2 = json.loads(capsys.readouterr().out)
    assert rc == 0 and res2["data"] == "fashion-mnist-sample"
    if full:  # the sample is the first 500 test images: the same numbers
        assert res2["int_top1"] == res["int_top1"]


def test_eval_progress_goes_to_stderr_json_stays_one_object(capsys):
    art = privquant.load(LENET)
    from privquant.models.data import load_sample

    x, y = load_sample(40)
    art.evaluate(x, y, batch_size=10, progress=True)
    out, err = capsys.readouterr()
    # the bar shows its total (tqdm refreshes at most every 0.1 s: "4/4" may never be drawn)
    assert out == "" and "evaluate" in err and "/4 " in err
    rc = main(["eval", str(LENET), "--data", "fashion-mnist-sample", "--limit", "40", "--json"])
    out, _err = capsys.readouterr()
    assert rc == 0 and len(out.strip().splitlines()) == 1 and json.loads(out)["n"] == 40


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"privquant {privquant.__version__}"
