"""The ``privquant`` command line: quantize -> eval, --json output, and user errors as one line
``privquant: error: ...`` on stderr with exit status 2 (in-process and as a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privquant.cli import main
from privquant.quant.spec import BitAssignment, LayerBits

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EVAL_KEYS = {"fp32_top1", "fakequant_top1", "int_top1", "n"}


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _no_result(stdout: str) -> bool:
    """Nothing on stdout, or (under --json) only the error object."""
    if stdout == "":
        return True
    return set(json.loads(stdout)) == {"error", "exit_status"}


def _one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    line = lines[0]
    assert line.startswith("privquant: error: "), line
    assert "Traceback" not in err
    for n in needles:
        assert n in line, (n, line)
    return line


def _one_json(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {out!r}"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("privquant")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "privquant.cli"]


def _subprocess(args: list[str], **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [*_cli(), *map(str, args)], capture_output=True, text=True, timeout=300, env=full_env
    )


@pytest.fixture(scope="module")
def cli_artifact(tmp_path_factory):
    """lenet5 quantized through the CLI (w8a8, 64 calibration images)."""
    out = tmp_path_factory.mktemp("cli") / "lenet5.pq"
    rc = main(
        ["quantize", "--model", "lenet5", "--bits", "w8a8", "--calib", "64", "--out", str(out)]
    )
    assert rc == 0 and out.is_file()
    return out


# ---------------------------------------------------------------------- happy path
def test_quantize_json(capsys, tmp_path):
    out = tmp_path / "l.pq"
    rc, stdout, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--bits",
            "w4a8",
            "--calib",
            "32",
            "--out",
            out,
            "--json",
        ],
    )
    assert rc == 0, err
    res = _one_json(stdout)
    assert res["model"] == "lenet5" and res["out"] == str(out)
    assert res["bits"] == BitAssignment(default=LayerBits(4, 8)).to_dict()
    assert res["calibration_images"] == 32 and res["qat_epochs"] == 0
    import privquant

    q = privquant.load(out)
    assert res["content_hash"] == q.content_hash
    assert res["architecture_hash"] == q.architecture_hash()


def test_quantize_then_eval_json(capsys, cli_artifact):
    rc, stdout, err = _run(
        capsys,
        ["eval", cli_artifact, "--data", "fashion-mnist-sample", "--limit", "100", "--json"],
    )
    assert rc == 0, err
    res = _one_json(stdout)
    assert res.keys() >= EVAL_KEYS
    assert res["n"] == 100 and res["model"] == "lenet5"
    for k in ("fp32_top1", "fakequant_top1", "int_top1"):
        assert 0.0 <= res[k] <= 100.0
        assert res[k] * res["n"] / 100 == pytest.approx(round(res[k] * res["n"] / 100))
    assert res["fp32_top1"] >= 80.0  # shipped, trained weights
    assert abs(res["fakequant_top1"] - res["int_top1"]) <= 1.0


def test_eval_text_output(capsys, cli_artifact):
    rc, stdout, _ = _run(
        capsys, ["eval", cli_artifact, "--data", "fashion-mnist-sample", "--limit", "20"]
    )
    assert rc == 0
    assert len(stdout.strip().splitlines()) == 1
    assert "integer program" in stdout and "20" in stdout


def test_eval_agrees_with_api(capsys, cli_artifact, sample):
    import privquant

    rc, stdout, _ = _run(
        capsys, ["eval", cli_artifact, "--data", "fashion-mnist-sample", "--limit", "50", "--json"]
    )
    assert rc == 0
    images, labels = sample
    want = privquant.load(cli_artifact).evaluate(images[:50], labels[:50])
    got = _one_json(stdout)
    for k in want:
        assert got[k] == want[k], k


def test_quantize_with_assignment_file(capsys, tmp_path):
    a = BitAssignment(
        layers={"conv2": LayerBits(3, 5), "fc1": LayerBits(6, 4)}, default=LayerBits(8, 8)
    )
    path = tmp_path / "a.json"
    a.save(path)
    out = tmp_path / "m.pq"
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--assignment",
            path,
            "--calib",
            "16",
            "--out",
            out,
            "--json",
        ],
    )
    assert rc == 0, err
    import privquant

    q = privquant.load(out)
    assert q.bits == a
    ops = {op.name: op for op in q.program.ops if op.kind in ("conv2d", "linear")}
    assert ops["conv2"].attrs["w_bits"] == 3 and ops["fc1"].attrs["w_bits"] == 6
    assert ops["conv1"].attrs["w_bits"] == 8


def test_quantize_with_weights_file(capsys, tmp_path):
    from privquant.models import build_model

    torch.manual_seed(3)
    wpath = tmp_path / "w.pt"
    torch.save(build_model("lenet5").state_dict(), wpath)
    out = tmp_path / "w.pq"
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--weights",
            wpath,
            "--bits",
            "w8a8",
            "--calib",
            "8",
            "--out",
            out,
        ],
    )
    assert rc == 0, err
    import privquant

    q = privquant.load(out)
    state = torch.load(wpath, weights_only=True)
    assert torch.equal(q.graph.node("conv1").weight, state["conv1.weight"])


# ---------------------------------------------------------------------- user errors (in-process)
@pytest.mark.parametrize(
    "bits,needle",
    [
        ("w9a1", "weight bit width 9 out of range"),
        ("w1a4", "weight bit width 1 out of range"),
        ("w4a9", "activation bit width 9 out of range"),
        ("x", "'x'"),
        ("w4", "'w4'"),
    ],
)
def test_bad_bits(capsys, tmp_path, bits, needle):
    out = tmp_path / "x.pq"
    rc, stdout, err = _run(capsys, ["quantize", "--model", "lenet5", "--bits", bits, "--out", out])
    assert rc == 2
    _one_error_line(err, needle)
    assert stdout == "" and not out.exists()


def test_bits_and_assignment_exclusive(capsys, tmp_path):
    a = tmp_path / "a.json"
    BitAssignment.uniform("w4a4").save(a)
    for extra in ([], ["--bits", "w4a4", "--assignment", a]):
        rc, _, err = _run(
            capsys, ["quantize", "--model", "lenet5", *extra, "--out", tmp_path / "x.pq"]
        )
        assert rc == 2
        _one_error_line(err, "--bits")


@pytest.mark.parametrize(
    "text",
    [
        "{broken",
        '{"layers": {"conv1": {"w": 9, "a": 4}}}',
        '{"layers": {"conv9": {"w": 4, "a": 4}}}',
    ],
)
def test_bad_assignment_file(capsys, tmp_path, text):
    a = tmp_path / "a.json"
    a.write_text(text)
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--assignment",
            a,
            "--calib",
            "4",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err)


def test_missing_assignment_file(capsys, tmp_path):
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--assignment",
            tmp_path / "none.json",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err, "not found")


def test_tie_conflict_assignment(capsys, tmp_path):
    a = BitAssignment(
        layers={"layers.1.0.conv1": LayerBits(4, 4), "layers.1.0.downsample.0": LayerBits(4, 6)},
        default=LayerBits(8, 8),
    )
    path = tmp_path / "a.json"
    a.save(path)
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "resnet8",
            "--assignment",
            path,
            "--calib",
            "4",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err, "layers.1.0.downsample.0")


def test_missing_weights_file(capsys, tmp_path):
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--weights",
            tmp_path / "none.pt",
            "--bits",
            "w4a4",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err, "none.pt")


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_bad_weights_file(capsys, tmp_path, content):
    wpath = tmp_path / "w.pt"
    if content is None:  # a valid checkpoint of the wrong model
        from privquant.models import build_model

        torch.save(build_model("resnet8").state_dict(), wpath)
    else:
        wpath.write_bytes(content)
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--weights",
            wpath,
            "--bits",
            "w4a4",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err, "w.pt")


def test_unknown_model(capsys, tmp_path):
    rc, _, err = _run(
        capsys, ["quantize", "--model", "vgg16", "--bits", "w4a4", "--out", tmp_path / "x.pq"]
    )
    assert rc == 2
    _one_error_line(err, "vgg16")


def test_output_directory_missing(capsys, tmp_path):
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--bits",
            "w8a8",
            "--calib",
            "4",
            "--out",
            tmp_path / "no" / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err, "directory")


def test_eval_missing_artifact(capsys, tmp_path):
    rc, _, err = _run(capsys, ["eval", tmp_path / "none.pq", "--data", "fashion-mnist-sample"])
    assert rc == 2
    _one_error_line(err, "artifact", "none.pq")


def test_eval_truncated_artifact(capsys, tmp_path, cli_artifact):
    raw = cli_artifact.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.pq"
        bad.write_bytes(raw[:cut])
        rc, stdout, err = _run(capsys, ["eval", bad, "--data", "fashion-mnist-sample", "--json"])
        assert rc == 2 and _no_result(stdout)
        _one_error_line(err, "artifact")


def test_eval_tampered_artifact(capsys, tmp_path, cli_artifact):
    raw = bytearray(cli_artifact.read_bytes())
    for pos in (40, len(raw) // 2, len(raw) - 40):
        data = bytearray(raw)
        data[pos] ^= 0x10
        bad = tmp_path / f"flip{pos}.pq"
        bad.write_bytes(bytes(data))
        rc, stdout, err = _run(capsys, ["eval", bad, "--data", "fashion-mnist-sample", "--json"])
        assert rc == 2 and _no_result(stdout)
        _one_error_line(err, "artifact")


def test_eval_dataset_missing(capsys, monkeypatch, tmp_path, cli_artifact):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PRIVQUANT_FMNIST_DIR", str(empty))
    rc, stdout, err = _run(capsys, ["eval", cli_artifact, "--data", "fashion-mnist", "--json"])
    assert rc == 2 and _no_result(stdout)
    _one_error_line(err, "dataset-fashion-mnist", str(empty))


def test_eval_bad_limit(capsys, cli_artifact):
    for limit in ("-1", "0"):
        rc, _, err = _run(
            capsys, ["eval", cli_artifact, "--data", "fashion-mnist-sample", "--limit", limit]
        )
        assert rc == 2
        _one_error_line(err)


def test_eval_cifar_artifact_has_no_dataset(capsys, tmp_path):
    out = tmp_path / "m.pq"
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "mobilenetv2-cifar",
            "--bits",
            "w4a4",
            "--calib",
            "2",
            "--out",
            out,
        ],
    )
    assert rc == 0, err
    rc, _, err = _run(capsys, ["eval", out, "--data", "fashion-mnist-sample"])
    assert rc == 2
    _one_error_line(err, "mobilenetv2-cifar")


def test_quantize_zero_calibration_images_cifar(capsys, tmp_path):
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "resnet18-cifar",
            "--bits",
            "w4a4",
            "--calib",
            "0",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err)


def test_quantize_zero_calibration_images_fmnist(capsys, tmp_path):
    rc, _, err = _run(
        capsys,
        [
            "quantize",
            "--model",
            "lenet5",
            "--bits",
            "w4a4",
            "--calib",
            "0",
            "--out",
            tmp_path / "x.pq",
        ],
    )
    assert rc == 2
    _one_error_line(err, "calibration")


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "x.pq", "--data", "cifar10"],
        ["quantize", "--bits", "w4a4", "--out", "x.pq"],  # --model missing
        ["frobnicate"],
        [],
    ],
)
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err


# ---------------------------------------------------------------------- real processes
def test_subprocess_bad_bits_one_line(tmp_path):
    r = _subprocess(["quantize", "--model", "lenet5", "--bits", "w9a1", "--out", tmp_path / "x.pq"])
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privquant: error: "), r.stderr
    assert "bit width 9 out of range" in lines[0]


def test_subprocess_tampered_artifact_one_line(tmp_path, cli_artifact):
    data = bytearray(cli_artifact.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "bad.pq"
    bad.write_bytes(bytes(data))
    r = _subprocess(["eval", bad, "--data", "fashion-mnist-sample", "--json"])
    assert r.returncode == 2 and _no_result(r.stdout)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privquant: error: "), r.stderr
    assert "artifact" in lines[0]


def test_subprocess_eval_json_stdout_is_one_object(cli_artifact):
    r = _subprocess(
        ["eval", cli_artifact, "--data", "fashion-mnist-sample", "--limit", "100", "--json"]
    )
    assert r.returncode == 0, r.stderr
    res = _one_json(r.stdout)
    assert res.keys() >= EVAL_KEYS and res["n"] == 100
