"""rope.cu cannot rot unseen, and is fast by design: compiled with nvcc to PTX (no GPU needed) and read, and
compiled with NVRTC exactly as CupyBackend compiles it.

PTX criteria ("fast by design"), checked per kernel entry for sm_80 and sm_90:

* ``rope_apply`` and ``rope_cast`` (the per-call kernels): no local memory at all (no ``.local`` frame, no
  ``ld.local``/``st.local``: nothing spills, no struct is selected through memory), no call (everything is
  inlined), and no integer ``div``/``rem`` of any width (row indices are split by multiply-shift).
* ``rope_apply``: no ``fma`` of any kind, and every float64 ``mul``/``add``/``sub`` carries ``.rn`` (an
  explicit ``__d*_rn``, which ptxas may not contract): the rotation rounds exactly as numba's
  ``x1 * c - x2 * s`` (fastmath off, no FMA), so GPU float64 results equal numba's bit for bit.
* Table kernels: no integer ``div``/``rem`` (2-D grid, no index splitting; ``#pragma unroll 1`` keeps the
  trip-count division of unrolled grid-stride loops out), the float32 angle is ``mul.rn.f32``, and no
  ``sin.approx``/``cos.approx`` anywhere (accurate sincosf/sincos; their slow-path argument reduction is
  the only local memory, in the table kernels, which run once per cache growth).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources

import pytest

from ropeflow.backends import _cupy

NVCC = shutil.which("nvcc")
ARCHS = ["sm_80", "sm_90"]


def _compile_ptx(tmp_path, arch: str) -> str:
    src = resources.files("ropeflow.backends").joinpath("kernels/rope.cu")
    out = tmp_path / f"rope_{arch}.ptx"
    proc = subprocess.run(
        [NVCC, "-ptx", f"-arch={arch}", "-std=c++14", "-DROPEFLOW_INSTANTIATE", str(src), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def entries(ptx: str) -> dict[str, str]:
    """Kernel entry name -> its PTX body (parameters and instructions)."""
    found = {m.group(1): m.group(2) for m in
             re.finditer(r"(?ms)^(?:\.visible |\.weak )?\.entry (\w+)\((.*?)^\}", ptx)}
    assert found, "no .entry in the PTX"
    return found


def instructions(body: str, pattern: str) -> list[str]:
    return re.findall(rf"(?m)^\s*(?:@%p\d+\s+)?({pattern})\b", body)


@pytest.fixture(scope="module", params=ARCHS)
def ptx(request, tmp_path_factory) -> tuple[str, str]:
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    return request.param, _compile_ptx(tmp_path_factory.mktemp(request.param), request.param)


def test_rope_cu_compiles_to_ptx(ptx):
    arch, text = ptx
    kernels = entries(text)
    assert "rope_table_ref" in kernels
    assert "_Z16rope_table_exactIfEvPKdxxiddPT_S3_" in kernels and "_Z16rope_table_exactIdEvPKdxxiddPT_S3_" in kernels
    # every template instance the runtime asks NVRTC for exists (explicitly instantiated here)
    applies = [n for n in _cupy.name_expressions() if n.startswith("rope_apply<")]
    casts = [n for n in _cupy.name_expressions() if n.startswith("rope_cast<")]
    assert len(applies) == 24 and sum(k.startswith("_Z10rope_apply") for k in kernels) == 24
    assert len(casts) == 4 and sum(k.startswith("_Z9rope_cast") for k in kernels) == 4
    for mangled in ("IffLi0E", "IfdLi1E", "IddLi2E", "I9rope_halffLi0E", "I9rope_bf16dLi2E"):
        assert any(k.startswith(f"_Z10rope_apply{mangled}") for k in kernels), mangled
    # accurate sin/cos only: no fast-math approximations anywhere
    assert "sin.approx" not in text and "cos.approx" not in text


def test_per_call_kernels_have_no_local_memory_calls_or_integer_division(ptx):
    arch, text = ptx
    checked = 0
    for name, body in entries(text).items():
        if not (name.startswith("_Z10rope_apply") or name.startswith("_Z9rope_cast")):
            continue
        checked += 1
        assert ".local" not in body, f"{arch} {name}: a local-memory frame or access"
        assert not instructions(body, r"call(?:\.uni)?"), f"{arch} {name}: a call"
        assert not instructions(body, r"(?:div|rem)\.[su]\d+"), f"{arch} {name}: an integer division"
    assert checked == 28


def test_rotation_rounds_explicitly_without_fma(ptx):
    arch, text = ptx
    for name, body in entries(text).items():
        if not name.startswith("_Z10rope_apply"):
            continue
        assert not instructions(body, r"fma\.\S+"), f"{arch} {name}: an FMA"
        ops = instructions(body, r"(?:mul|add|sub)(?:\.\w+)*\.f64")
        loose = [op for op in ops if ".rn" not in op]
        assert not loose, f"{arch} {name}: contractable float64 arithmetic {loose}"
        # x1*c, x2*s, x2*c, x1*s, sign*s, and the sub and add of the two outputs
        assert sum(op.startswith("mul.rn") for op in ops) >= 5, f"{arch} {name}: {ops}"
        assert "sub.rn.f64" in ops and "add.rn.f64" in ops, f"{arch} {name}: {ops}"


def test_table_kernels_have_no_integer_division_and_pin_the_angle(ptx):
    arch, text = ptx
    for name, body in entries(text).items():
        if "rope_table" not in name:
            continue
        assert not instructions(body, r"(?:div|rem)\.[su]\d+"), f"{arch} {name}: an integer division"
        if name == "rope_table_ref":
            assert instructions(body, r"mul\.rn\.f32"), f"{arch} {name}: the angle is not mul.rn.f32"
        else:
            assert instructions(body, r"mul\.rn\.f64"), f"{arch} {name}: the angle is not mul.rn.f64"


def test_ptx_criteria_catch_a_violation(tmp_path):
    """The criteria can fail: a kernel with a 64-bit division and a contractable product trips both."""
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    src = tmp_path / "bad.cu"
    src.write_text('extern "C" __global__ void bad(double* x, long long n, long long d) {\n'
                   "    long long i = (blockIdx.x * blockDim.x + threadIdx.x) / d;\n"
                   "    if (i < n) x[i] = x[i] * x[i + 1] - x[i + 2] * x[i + 3];\n}\n")
    out = tmp_path / "bad.ptx"
    subprocess.run([NVCC, "-ptx", "-arch=sm_80", str(src), "-o", str(out)], check=True, timeout=300)
    body = entries(out.read_text())["bad"]
    assert instructions(body, r"(?:div|rem)\.[su]\d+")
    assert instructions(body, r"fma\.\S+") or [o for o in instructions(body, r"mul(?:\.\w+)*\.f64") if ".rn" not in o]


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_rope_cu_assembles_to_cubin(tmp_path):
    """ptxas runs too (it checks the inline PTX of the float16 conversions)."""
    src = resources.files("ropeflow.backends").joinpath("kernels/rope.cu")
    out = tmp_path / "rope.cubin"
    proc = subprocess.run([NVCC, "-cubin", "-arch=sm_80", "-std=c++14", "-DROPEFLOW_INSTANTIATE", str(src), "-o",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        pytest.skip("cuda-bindings is not installed (pip install 'ropeflow[test]' installs it)")
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings load libnvrtc lazily
        pytest.skip(f"NVRTC is not loadable ({exc}); pip install nvidia-cuda-nvrtc")
    return nvrtc


def _check(nvrtc, result, prog=None):
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if prog is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf.decode(errors="replace")
        raise AssertionError(f"NVRTC: {err}\n{log}")
    return result[1:]


@pytest.mark.parametrize("arch", ["80", "90"])
def test_nvrtc_compiles_what_cupy_backend_compiles(arch):
    """The RawModule's source, options and name_expressions, through NVRTC (no GPU or driver needed). CuPy adds
    ``-arch=compute_XX`` for the device; every name expression must resolve to a kernel."""
    nvrtc = _nvrtc()
    source = _cupy.kernel_source().encode()
    (prog,) = _check(nvrtc, nvrtc.nvrtcCreateProgram(source, b"rope.cu", 0, [], []))
    try:
        names = _cupy.name_expressions()
        for name in names:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, name.encode()))
        options = [o.encode() for o in _cupy.COMPILE_OPTIONS] + [f"-arch=compute_{arch}".encode()]
        _check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(options), options), prog)
        lowered = {}
        for name in names:
            (low,) = _check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, name.encode()))
            lowered[name] = low.decode() if isinstance(low, bytes) else str(low)
        (size,) = _check(nvrtc, nvrtc.nvrtcGetPTXSize(prog))
        buf = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    kernels = entries(buf.decode())
    assert f".target sm_{arch}" in buf.decode()
    assert set(lowered.values()) | {"rope_table_ref"} == set(kernels), "name expressions and entries differ"
    assert len(set(lowered.values())) == len(names)


def test_kernel_source_has_line_directive():
    src = _cupy.kernel_source()
    assert src.startswith('#line 1 "rope.cu"\n')
    assert "rope_table_ref" in src and "__fmul_rn" in src
    for intrinsic in ("__sinf(", "__cosf(", "__sincosf(", "__expf(", "#include"):
        assert intrinsic not in src
