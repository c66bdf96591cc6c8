"""The command line: help, version, one-line errors with exit status 2, and what each command reports."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ropeflow
from ropeflow import cli
from ropeflow.bench import Progress

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "inspect", "plot", "bench", "tables", "backends"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``ropeflow argv`` run in this process."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)], ids=["top", *COMMANDS])
def test_help_is_plain_text_with_defaults(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli([*argv, "--help"], capsys)
    assert rc == 0
    assert "usage: ropeflow" in out
    for rest in ("``", ":func:", ":class:", ":mod:"):
        assert rest not in out, f"raw reST {rest!r} in --help"
    if argv and argv[0] in ("demo", "tables", "bench"):
        assert "(default: " in out
    if not argv:
        for command in COMMANDS:
            assert command in out


def test_every_option_with_a_default_shows_it() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        for action in p._actions:
            if action.default not in (None, False, "==SUPPRESS==") and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and out.startswith(f"ropeflow {ropeflow.__version__} ")


# ------------------------------------------------------------------------------------------------- errors
BAD = {
    "tables --dim 63": "--dim",
    "tables --dim -4": "--dim",
    "tables --seq-len 0": "--seq-len",
    "tables --base 1": "--base",
    "tables --base nan": "--base",
    "tables --dtype int8": "--dtype",
    "tables --precision fast": "--precision",
    "tables --preset nope": "--preset",
    "tables --preset deepseek-v3 --dim 64": "--dim",
    "tables --preset deepseek-v3 --config x.json": "--config",
    "tables --config missing/config.json": "missing/config.json",
    "tables --seq-len 16777217": "seq_len",
    # too large to allocate: one line naming seq_len, not a traceback or max_position_embeddings
    "tables --seq-len 100000000000000000000 --precision exact": "seq_len: 100000000000000000000 positions",
    "tables --preset llama-3.1-8b --seq-len 100000000000000000000 --precision exact": "seq_len: 1",
    "demo --seq-len 0": "--seq-len",
    "demo --dim 63": "--dim",
    "demo --seq-len x": "--seq-len",
    "inspect missing.json": "missing.json",
    "inspect": "target",
    "plot deepseek-v3": "--output",
    "plot deepseek-v3 -o fig.jpg": "-o/--output",
    "plot deepseek-v3 -o fig": "-o/--output",
    "plot nope -o fig.png": "nope",
    "bench --repeats 0": "--repeats",
    "bench --backend gpu": "--backend",
    "bench --plot fig.gif": "--plot: unknown image format",
    "plot deepseek-v3 -o fig.png --error --error-positions 99999999999999": "--error-positions: must be <= 16777216",
    "frobnicate": "command",
    "bench --json no-such-folder/r.json": "--json: no folder",  # before the run, not after it
    "bench --plot no-such-folder/r.png": "--plot: no folder",
    "plot deepseek-v3 -o no-such-folder/f.png": "-o/--output: no folder",
    "tables --preset gemma-3-4b-it": "--layer-type",
    "inspect x.json --json --frob": "unrecognized",
}


def test_hints_name_only_options_the_command_has(capsys: pytest.CaptureFixture[str]) -> None:
    """A library message suggesting precision='exact' gets the command-line spelling only where the command
    has --precision."""
    rc, _, err = run_cli(["tables", "--seq-len", "16777217"], capsys)
    assert rc == 2 and "(on the command line: --precision exact)" in err
    # demo has no --precision: its bound is checked as an argument, without a suggestion it cannot take
    rc, _, err = run_cli(["demo", "--seq-len", "16777217"], capsys)
    assert rc == 2 and "--seq-len: must be <= 16777216 (2**24" in err and "precision" in err
    assert "precision='exact'" not in err and "--precision" not in err


@pytest.mark.parametrize("line", list(BAD))
def test_bad_input_is_one_line_and_exit_2(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(line.split(), capsys)
    assert rc == 2, (line, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ropeflow") and "error:" in lines[0]
    assert BAD[line] in lines[0]
    assert "Traceback" not in err


def test_bad_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "notjson.json": ("{not json", "not valid JSON"),
        "list.json": ("[1, 2]", "JSON object"),
        "nofield.json": ('{"rope_theta": 10000}', "missing"),
        "badscaling.json": ('{"head_dim": 64, "max_position_embeddings": 4096, '
                            '"rope_scaling": {"rope_type": "yarn"}}', "factor"),
        "oddim.json": ('{"head_dim": 63, "max_position_embeddings": 4096}', "dim"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        for argv in (["inspect", str(tmp_path / name)], ["tables", "--config", str(tmp_path / name)]):
            rc, _, err = run_cli(argv, capsys)
            assert rc == 2 and len(err.strip().splitlines()) == 1 and expected in err, (name, err)
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["inspect", str(tmp_path / "empty")], capsys)
    assert rc == 2 and "holds no config.json" in err


def test_warnings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"head_dim": 64, "max_position_embeddings": 4096, '
                    '"rope_scaling": {"rope_type": "linear", "factor": 2.0, "foo": 1}}')
    rc, out, err = run_cli(["inspect", str(path)], capsys)
    assert rc == 0 and "rope type                 linear" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeflow inspect: warning: ") and "'foo'" in lines[0]


def test_module_entry_point_has_no_traceback() -> None:
    """The real process: ``python -m ropeflow`` with bad input exits 2 with one stderr line."""
    proc = subprocess.run([sys.executable, "-m", "ropeflow", "tables", "--dim", "63"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ropeflow tables: error: argument --dim: must be a positive even integer, got 63 "
        "(see 'ropeflow tables --help')"]


# --------------------------------------------------------------------------------------------------- tables
def _matrix(text: str, name: str) -> np.ndarray:
    block = re.search(rf"{name}\[:\d+, :\d+\] =\n(\[\[.*?\]\])", text, re.S).group(1)
    return np.array([[float(v) for v in row.split()] for row in re.findall(r"\[([^\[\]]+)\]", block)])


@pytest.mark.parametrize("precision,dtype", [("reference", "float32"), ("exact", "float64"),
                                             ("exact", "float16"), ("reference", "bfloat16")])
def test_tables_values(precision: str, dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    rc, out, _ = run_cli(["tables", "--seq-len", "8", "--rows", "3", "--cols", "5", "--precision", precision,
                          "--dtype", dtype, "--base", "500"], capsys)
    assert rc == 0
    assert f"{dtype}, {precision} precision" in out
    p = np.arange(3.0)[:, None]
    angle = p * 500.0 ** (-np.arange(0, 64, 2)[:5] / 64)
    tol = {"float32": 1e-6, "float64": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
    np.testing.assert_allclose(_matrix(out, "cos"), np.cos(angle), atol=tol)
    np.testing.assert_allclose(_matrix(out, "sin"), np.sin(angle), atol=tol)


def test_tables_preset_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["tables", "--preset", "llama-3.1-8b", "--seq-len", "4", "--cols", "3"], capsys)
    assert rc == 0 and "llama-3.1-8b: llama3 rope, dim 128, base 500000" in out
    angle = np.arange(4.0)[:, None] * 500000.0 ** (-np.arange(0, 128, 2)[:3] / 128)  # high frequencies: unscaled
    np.testing.assert_allclose(_matrix(out, "cos"), np.cos(angle), atol=1e-6)
    (tmp_path / "config.json").write_text(json.dumps(ropeflow.presets.load("llama-3.1-8b")))
    rc, out2, _ = run_cli(["tables", "--config", str(tmp_path), "--seq-len", "4", "--cols", "3"], capsys)
    assert rc == 0 and out2.split("\n", 1)[1] == out.split("\n", 1)[1]


# ---------------------------------------------------------------------------------------------------- demo
def test_demo_explains_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["demo", "--seq-len", "4096"], capsys)
    assert rc == 0
    assert "backends agree within 4 float32 ulps of 1.0 (4 x 2**-24 = 2.38e-07): yes" in out
    assert "own drift" in out and "precision='exact'" in out
    ref = float(re.search(r"reference precision, float32 table: max error (\S+)", out).group(1))
    exact = float(re.search(r"exact precision, +float32 table: max error (\S+)", out).group(1))
    assert 1e-4 < ref < 3e-4  # DESIGN 1.5: 1.5e-4 at 4096 positions
    assert exact <= 2.0**-24


# ------------------------------------------------------------------------------------------------- inspect
def _yarn_wavelengths(dim: int, base: float, factor: float, original: int, fast: float, slow: float) -> np.ndarray:
    """DeepSeek-V3's yarn_find_correction_range and linear ramp, written out independently."""
    def corr(r: float) -> float:
        return dim * math.log(original / (r * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(corr(fast)), 0), min(math.ceil(corr(slow)), dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    inv = base ** (-np.arange(0, dim, 2) / dim)
    return 2 * math.pi / (inv / factor * ramp + inv * (1 - ramp))


def test_inspect_deepseek(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["inspect", "deepseek-v3", "--json"], capsys)
    assert rc == 0
    (rep,) = json.loads(out)
    waves = _yarn_wavelengths(64, 10000.0, 40, 4096, 32, 1)
    assert rep["rope_type"] == "yarn" and rep["dim"] == 64 and rep["base"] == 10000.0
    assert rep["original_context"] == 4096 and rep["extended_context"] == 163840
    assert rep["attention_scaling"] == 1.0
    assert rep["softmax_scale_multiplier"] == pytest.approx((0.1 * math.log(40) + 1) ** 2, rel=1e-12)
    assert rep["softmax_scale"] == pytest.approx(192**-0.5 * (0.1 * math.log(40) + 1) ** 2, rel=1e-12)
    assert rep["wavelength_shortest"] == pytest.approx(2 * math.pi, rel=1e-12)
    assert rep["wavelength_longest"] == pytest.approx(waves.max(), rel=1e-9)
    assert rep["wavelengths_beyond_original"] == int((waves > 4096).sum()) == 13
    assert rep["layout"] == "deepseek"  # DeepSeek-V3's interleaved-to-halves rotation (rope_interleave=True)
    rc, text, _ = run_cli(["inspect", "deepseek-v3"], capsys)
    for line in ("rope type                 yarn", "original context          4096",
                 "extended context          163840", "softmax-scale multiplier  x 1.87385 (softmax scale 0.135234)",
                 "beyond original context   13 of 32 wavelengths", "layout                    deepseek"):
        assert line in text


def test_inspect_config_folder_with_layer_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"head_dim": 128, "max_position_embeddings": 32768, "rope_theta": 1e6,
           "layer_types": ["sliding_attention"] * 3 + ["full_attention"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc, out, _ = run_cli(["inspect", str(tmp_path)], capsys)
    assert rc == 0
    assert "original context          32768 (not stated: taken as max_position_embeddings)" in out
    assert "layer types               sliding_attention x 3, full_attention x 1 (4 layers)" in out
    waves = 2 * math.pi * 1e6 ** (np.arange(0, 128, 2) / 128)
    assert f"beyond original context   {int((waves > 32768).sum())} of 64 wavelengths" in out


def test_inspect_reports_each_layer_type_and_the_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """Gemma 3: sliding-window layers on rope_local_base_freq (1e4), full-attention layers on rope_theta (1e6)
    with linear scaling: one section each. GPT-J rotates interleaved pairs."""
    rc, out, _ = run_cli(["inspect", "gemma-3-4b-it", "--json"], capsys)
    assert rc == 0
    reps = {r["layer_type"]: r for r in json.loads(out)}
    assert set(reps) == set(ropeflow.layer_types(ropeflow.presets.load("gemma-3-4b-it")))
    assert reps["sliding_attention"]["base"] == 10000.0 and reps["full_attention"]["base"] == 1e6
    assert reps["full_attention"]["rope_type"] == "linear" and reps["sliding_attention"]["rope_type"] == "default"
    rc, out, _ = run_cli(["inspect", "gpt-j-6b", "--json"], capsys)
    assert rc == 0 and json.loads(out)[0]["layout"] == "interleaved"


_PLAIN_LONGEST = 2 * math.pi * 10000.0 ** (62 / 64)


@pytest.mark.parametrize("scaling,original,extended,longest,attention", [
    ({"rope_type": "linear", "factor": 4.0}, 4096, 4096, 4 * _PLAIN_LONGEST, 1.0),
    ({"rope_type": "ntk", "factor": 4.0}, 4096, 4096, 2 * math.pi * (10000.0 * 4 ** (64 / 62)) ** (62 / 64), 1.0),
    ({"rope_type": "dynamic", "factor": 4.0}, 4096, 16384,
     2 * math.pi * (10000.0 * (4 * 4 - 3) ** (64 / 62)) ** (62 / 64), 1.0),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [2.0] * 32,
      "original_max_position_embeddings": 1024}, 1024, 4096, 2 * _PLAIN_LONGEST,
     math.sqrt(1 + math.log(4) / math.log(1024))),
], ids=["linear", "ntk", "dynamic", "longrope"])
def test_inspect_rope_types(scaling: dict, original: int, extended: int, longest: float, attention: float,
                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Contexts, longest wavelength and attention scaling, from each rope type's formula written out here."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"head_dim": 64, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                                "rope_scaling": scaling}))
    rc, out, _ = run_cli(["inspect", str(path), "--json"], capsys)
    assert rc == 0
    (rep,) = json.loads(out)
    assert (rep["rope_type"], rep["original_context"], rep["extended_context"]) == (scaling["rope_type"], original,
                                                                                   extended)
    assert rep["wavelength_longest"] == pytest.approx(longest, rel=1e-9)
    assert rep["attention_scaling"] == pytest.approx(attention, rel=1e-6)


@pytest.mark.parametrize("name", ropeflow.presets.names())
def test_inspect_every_preset(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["inspect", name, "--json"], capsys)
    assert rc == 0
    for rep in json.loads(out):
        assert rep["wavelength_shortest"] <= rep["wavelength_longest"]
        assert 0 <= rep["wavelengths_beyond_original"] <= rep["n_frequencies"] == rep["dim"] // 2
        assert rep["original_context"] <= rep["extended_context"]


# ---------------------------------------------------------------------------------------------------- plot
def test_plot_png_and_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png, svg = tmp_path / "s.png", tmp_path / "s.svg"
    rc, out, _ = run_cli(["plot", "deepseek-v3", "llama-3.1-8b", "-o", str(png)], capsys)
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out
    rc, _, err = run_cli(["plot", "kimi-k2", "-o", str(svg), "--error", "--error-positions", "2048",
                          "--title", "t"], capsys)
    text = svg.read_text()
    assert rc == 0 and "<svg" in text and "2048 positions" in err
    assert "reference (solid) vs exact (dashed) precision" in text


def test_layer_types_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A preset with a rotary configuration per layer type (Gemma 3): ``tables`` asks for ``--layer-type`` by
    name and builds the one given (its values those of ``from_hf_config(..., layer_type=...)``); ``plot`` draws
    every layer type, or the one given."""
    rc, _, err = run_cli(["tables", "--preset", "gemma-3-4b-it"], capsys)
    assert rc == 2 and "--layer-type: gemma-3-4b-it has a rotary configuration per layer type" in err
    assert "sliding_attention, full_attention" in err
    rc, _, err = run_cli(["tables", "--layer-type", "full_attention"], capsys)
    assert rc == 2 and "--layer-type: needs --preset or --config" in err
    for layer_type in ("sliding_attention", "full_attention"):
        rc, out, _ = run_cli(["tables", "--preset", "gemma-3-4b-it", "--layer-type", layer_type, "--rows", "3",
                              "--cols", "4", "--precision", "exact"], capsys)
        rope = ropeflow.RotaryEmbedding.from_preset("gemma-3-4b-it", layer_type=layer_type, precision="exact")
        cos = rope.cos_sin(16)[0][:3, :4].astype(np.float64)
        assert rc == 0 and f"gemma-3-4b-it ({layer_type})" in out
        printed = np.array([float(v) for v in re.findall(r"-?\d+\.\d*", out.split("cos[:3, :4] =")[1]
                                                         .split("sin[")[0])]).reshape(3, 4)
        np.testing.assert_allclose(printed, cos, atol=1e-6)
    if pytest.importorskip("matplotlib"):
        svg = tmp_path / "g.svg"
        rc, _, _ = run_cli(["plot", "gemma-3-4b-it", "-o", str(svg)], capsys)
        text = svg.read_text()
        assert rc == 0 and "gemma-3-4b-it (sliding_attention)" in text and "gemma-3-4b-it (full_attention)" in text
        rc, _, _ = run_cli(["plot", "gemma-3-4b-it", "-o", str(svg), "--layer-type", "full_attention"], capsys)
        text = svg.read_text()
        assert rc == 0 and "(full_attention)" in text and "(sliding_attention)" not in text


def test_precision_error_panel_data() -> None:
    from ropeflow._plot import precision_error

    rope = ropeflow.RotaryEmbedding.from_preset("deepseek-v3", backend="numpy")
    pos, ref, exact = precision_error(rope, 8192, bins=40)
    assert pos[-1] == 8192 and np.all(np.diff(pos) > 0)
    assert exact.max() <= 2.0**-24  # DESIGN 1.5: exact precision, float32 tables
    assert ref.max() > 100 * exact.max()  # the reference's float32 drift
    assert ref[-1] > ref[0]


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    for argv in (["plot", "deepseek-v3", "-o", str(tmp_path / "x.png")],
                 ["bench", "--quick", "--plot", str(tmp_path / "b.png")]):
        rc, _, err = run_cli(argv, capsys)
        assert rc == 2 and err.strip().splitlines() == [
            f"ropeflow {argv[0]}: error: plotting needs matplotlib, which is not installed: "
            "pip install 'ropeflow[plot]'"]
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------- bench
def test_bench_small(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole bench path on tiny sizes: printed tables, JSON results, figure. No timing is asserted."""
    from ropeflow.bench import apply as bench_apply
    from ropeflow.bench import tables as bench_tables

    monkeypatch.setattr(bench_tables, "QUICK_CPU_SIZES", [(64, 8), (128, 16)])
    monkeypatch.setattr(bench_apply, "QUICK_CPU_CASES", [("prefill", (1, 2, 16, 32), 1, "head-major", "float32"),
                                                         ("prefill", (1, 2, 16, 32), 1, "token-major", "bfloat16")])
    monkeypatch.setattr(bench_apply, "_jax_rotate", lambda: None)
    monkeypatch.setattr(bench_tables, "MEASURE_STARTUP", False)  # fresh processes: seconds; run by --quick
    monkeypatch.setattr(bench_tables, "optional_torch", lambda: (None, None))  # torch: see the next test
    monkeypatch.setattr(bench_apply, "optional_torch", lambda: (None, None))
    out_json = tmp_path / "b.json"
    argv = ["bench", "--quick", "--repeats", "1", "--json", str(out_json), "--no-progress"]
    if "matplotlib" in sys.modules or _has_matplotlib():
        argv += ["--plot", str(tmp_path / "b.png")]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert "== tables (quick, cpu) ==" in out and "== apply (quick, cpu) ==" in out
    assert "cache hit:" in out and "decode loop 1..2048" in out
    res = json.loads(out_json.read_text())
    assert [r["case"] for r in res["tables"]["rows"]] == ["64 x 8", "128 x 16"]
    assert [r["case"] for r in res["apply"]["rows"]] == [
        "prefill q(1, 2, 16, 32) k heads 1 head-major float32",
        "prefill q(1, 2, 16, 32) k heads 1 token-major bfloat16"]
    for suite in ("tables", "apply"):
        for row in res[suite]["rows"]:
            assert set(row["ms"]) == set(res[suite]["columns"])
            assert all(row["ms"][c] > 0 for c in ("numpy", "numba"))
    assert err == ""  # --no-progress: nothing on stderr
    if "--plot" in argv:
        assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_seed_code_matches_ropeflow() -> None:
    """The PyTorch code the benchmarks race against computes what ropeflow computes."""
    torch = pytest.importorskip("torch")
    from ropeflow.bench import _seed

    cos, sin = _seed.table_builder(64, 10000.0)(512)
    rope = ropeflow.RotaryEmbedding(64, 512, backend="numpy")
    r_cos, r_sin = rope.cos_sin(512)
    # float32 angles from inv_freq within 2 ulps (DESIGN 1.5): a few 1e-5 at 512 positions
    np.testing.assert_allclose(cos.numpy(), r_cos, atol=1e-4)
    np.testing.assert_allclose(sin.numpy(), r_sin, atol=1e-4)
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 64)).astype(np.float32)
    pos = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [100, 101, 102, 103, 104, 105, 106, 107]])
    want = ropeflow.apply_rotary(x, r_cos, r_sin, pos)
    got = _seed.apply_rotary_half(torch.from_numpy(x), torch.from_numpy(np.array(r_cos)),
                                  torch.from_numpy(np.array(r_sin)), torch.from_numpy(pos))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_benchmark_scripts_are_wrappers() -> None:
    for script in ("bench_tables.py", "bench_apply.py"):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 0 and "--backend {cpu,cupy}" in proc.stdout and "--repeats" in proc.stdout
    if "cupy" not in ropeflow.available_backends():
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_apply.py"), "--backend", "cupy"],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "cupy cannot run here" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ progress
class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_waits_then_draws_and_clears() -> None:
    clock, stream, out = _Clock(), _Tty(), io.StringIO()
    bar = Progress(4, stream=stream, clock=clock, delay=1.0, width=4)
    bar.step("a")
    assert stream.getvalue() == ""  # a short run shows no bar
    clock.t = 1.5
    bar.step("b")
    assert stream.getvalue().endswith("[#...] 1/4 b")
    bar.echo("result line", out)
    assert out.getvalue() == "result line\n"
    assert stream.getvalue().endswith("[##..] 2/4 b")  # cleared, line printed, redrawn
    bar.close()
    assert stream.getvalue().endswith("\r" + " " * len("[##..] 2/4 b") + "\r")


def test_progress_bar_off_when_not_a_terminal() -> None:
    clock, stream = _Clock(), io.StringIO()
    bar = Progress(2, stream=stream, clock=clock, delay=0.0)
    clock.t = 5
    bar.step("a")
    bar.echo("x", io.StringIO())
    bar.close()
    assert stream.getvalue() == ""


def test_inspect_names_the_factor_whose_extended_context_overflows(tmp_path, capsys):
    """A dynamic config whose factor overflows the base at its extended context was reported as a seq_len
    error (inspect has no seq_len) with a 300-digit length; tables on the same file worked."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
                               "max_position_embeddings": 4096, "rope_theta": 10000.0,
                               "rope_scaling": {"rope_type": "dynamic", "factor": 1e300}}))
    rc, _, err = run_cli(["inspect", str(cfg)], capsys)
    assert rc == 2 and "error: scaling['factor']: the frequencies overflow at the extended context (4.1e+303" in err
    rc, _, _ = run_cli(["tables", "--config", str(cfg), "--seq-len", "4"], capsys)
    assert rc == 0


def test_inspect_describes_a_config_reference_precision_cannot_hold(tmp_path, capsys):
    """A base past float32's range cannot be built in reference precision; inspect (float64 figures) still
    describes it, and plot --error says that its comparison needs reference precision, without pointing to a
    --precision option the command does not have."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
                               "max_position_embeddings": 4096, "rope_theta": 1e39}))
    rc, out, _ = run_cli(["inspect", str(cfg)], capsys)
    assert rc == 0 and "base (rope_theta)         1e+39" in out
    if _has_matplotlib():
        rc, _, err = run_cli(["plot", str(cfg), "-o", str(tmp_path / "f.png"), "--error"], capsys)
        assert rc == 2 and "error: --error: " in err and "plot it without --error" in err and "--precision" not in err
