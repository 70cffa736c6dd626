"""The CPU kind decides the precision and where benchmark results go: detected from the flags and the
kernels torch actually runs, so an AVX-512 machine capped to AVX2 (bench.run --isa avx2) trains and
reports as an AVX2 one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.runtime import ISA_CAPS, _cpuinfo

ROOT = Path(__file__).resolve().parent.parent
_DESCRIBE = ("import json; from tunelab.runtime import cpu_description, cpu_has_bf16, resolve_precision; "
             "print(json.dumps({**cpu_description(), 'bf16': cpu_has_bf16(), 'precision': resolve_precision('auto', 'cpu')}))")


def uncapped_env() -> dict:
    """This process's environment without any ISA cap (numba's feature list included)."""
    return {k: v for k, v in os.environ.items() if k not in ISA_CAPS and k != "NUMBA_CPU_FEATURES"}


def describe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _DESCRIBE], capture_output=True, text=True, check=True,
                         env={**uncapped_env(), **env}).stdout
    return json.loads(out)


def test_the_kind_follows_the_flags_and_torchs_capability():
    native = describe()
    flags = _cpuinfo()[1]
    expected = ("amx-bf16" if "amx_bf16" in flags else "avx512-bf16" if "avx512_bf16" in flags
                else "avx512" if "avx512f" in flags and native["torch_capability"] == "AVX512"
                else "avx2" if "avx2" in flags else "other")
    assert native["kind"] == expected and "isa_cap" not in native
    assert native["precision"] == ("bf16" if native["bf16"] else "fp32")


def test_an_avx2_cap_makes_an_avx512_machine_an_avx2_one():
    if "avx512f" not in _cpuinfo()[1]:
        pytest.skip("no AVX-512 on this CPU: nothing to cap")
    from bench.common import ISA_ENV

    capped = describe(**ISA_ENV["avx2"])
    assert capped["torch_capability"] == "AVX2" and capped["kind"] == "avx2"
    assert capped["isa_cap"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                 "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "NUMBA_CPU_NAME": "haswell"}
    assert capped["bf16"] is False and capped["precision"] == "fp32"  # no bf16 autocast on emulated kernels
    # Only the first three decide the kind: numba's target alone leaves torch's kernels at AVX-512.
    assert "isa_cap" not in describe(NUMBA_CPU_NAME="haswell")


_DROPOUT_ASM = ("from tunelab.models.dropout_kernel import _kernel, warm; warm(); "
                "print('\\n'.join(_kernel.inspect_asm().values()))")


def test_the_avx2_cap_compiles_the_dropout_kernel_without_avx512(tmp_path):
    """The fused dropout kernel is numba code compiled for the host CPU; under the cap it must be AVX2 code
    (its 64-bit multiplies: AVX-512's vpmullq natively, emulated on AVX2), or capped timings flatter it."""
    flags = _cpuinfo()[1]
    if not {"avx512f", "avx512dq"} <= flags:
        pytest.skip("no AVX-512 on this CPU: nothing to cap")
    from bench.common import ISA_ENV

    def asm(env: dict, cache: Path) -> str:
        return subprocess.run([sys.executable, "-c", _DROPOUT_ASM], capture_output=True, text=True, check=True,
                              env={**uncapped_env(), "NUMBA_CACHE_DIR": str(cache), **env}).stdout

    native, capped = asm({}, tmp_path / "native"), asm(ISA_ENV["avx2"], tmp_path / "capped")  # fresh: compiled, not loaded
    assert "vpmullq" in native and "ymm" in capped
    assert "vpmullq" not in capped and "zmm" not in capped


def test_bench_tables_compare_tunelab_with_each_baseline(tmp_path):
    """bench/table.py on the records of two baselines: a row per side and a ratio table per baseline, with
    the issue's target for each and the quality difference."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench.table import write_readme
    finally:
        sys.path.remove(str(ROOT))

    def rec(impl, eps, f1):
        return {"impl": impl, "size": 500, "precision": "fp32", "steps": 16, "examples_per_s": eps, "tokens_per_s": eps * 30,
                "train_seconds": 500 / eps, "peak_rss_mb": 1000.0, "val_macro_f1": f1,
                "versions": {"torch": "2.13.0"}}

    machine = {"cpu": "Test CPU", "cpu_flags": ["avx2", "fma"], "cpu_kind": "avx2", "torch_capability": "AVX2",
               "cores": 2, "isa_cap": {"ATEN_CPU_CAPABILITY": "avx2"}}
    result = {"workload": "sentiment", "baseline": "hf", "baselines": ["hf", "hf-expert"], "repeats": 1, "minutes": 3.0,
              "date": "today", "machine": machine, "gemm": [{"fp32": 100.0, "fp32_median": 90.0, "bf16": None,
                                                              "bf16_median": None, "bf16_skipped": "no fast bf16"}],
              "gemm_peak_gflops": {"fp32": 100.0},
              "records": [rec("hf", 40.0, 60.0), rec("hf-expert", 50.0, 61.0), rec("tunelab", 100.0, 61.5)]}
    (tmp_path / "sentiment.json").write_text(json.dumps(result))
    write_readme(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| 500 | hf-expert | fp32 | 16 |" in text and "kernels capped by ATEN_CPU_CAPABILITY=avx2" in text
    assert "| 500 | 2.50x (target >= 2.0x) | +1.50 |" in text  # vs the docs' defaults
    assert "| 500 | 2.00x (target >= 1.5x) | +0.50 |" in text  # vs the expert's
    assert "bf16 not measured (no fast bf16)" in text and "all 3.0 min" in text
