"""Choosing and checking the llama.cpp build for a CPU, without building anything."""

from __future__ import annotations

import json
import sys

from ragtune.generate import llamacpp, llamacpp_build

AVX2 = {"avx2", "fma", "f16c", "bmi2", "sse4_2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512vbmi", "avx512_bf16"}


def test_variant_follows_the_cpu():
    assert llamacpp_build.pick_variant(AVX512) == "avx512"
    assert llamacpp_build.pick_variant(AVX512 - {"avx512_bf16"}) == "avx2"  # all of a variant's flags or none
    assert llamacpp_build.pick_variant(AVX2) == "avx2"
    assert llamacpp_build.pick_variant({"sse4_2"}) is None
    # wheels of different variants never share a cache folder
    assert llamacpp_build.wheel_dir("avx2") != llamacpp_build.wheel_dir("avx512")


def test_a_build_for_another_cpu_is_refused_before_import(tmp_path, monkeypatch):
    """A venv built on an AVX-512 machine, now on an AVX2 one: a clear reason, and llama_cpp is never
    imported (importing it would die with an illegal instruction)."""
    marker = tmp_path / "ragtune-llamacpp.json"
    marker.write_text(json.dumps({"variant": "avx512", "version": llamacpp_build.VERSION,
                                  "requires": list(llamacpp_build.VARIANTS["avx512"][0])}))
    monkeypatch.setattr(llamacpp_build, "MARKER", marker)
    monkeypatch.setattr(llamacpp, "cpu_flags", lambda: AVX2)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # an import attempt would raise ImportError
    reason = llamacpp.unavailable_reason()
    assert reason is not None and "avx512f" in reason and "make llamacpp" in reason
    monkeypatch.setattr(llamacpp, "cpu_flags", lambda: AVX512)
    assert "not installed" in llamacpp.unavailable_reason()  # the CPU fits; only the (blocked) import fails


def test_ensure_skips_when_the_installed_build_fits(tmp_path, monkeypatch):
    marker = tmp_path / "ragtune-llamacpp.json"
    marker.write_text(json.dumps({"variant": "avx2", "version": llamacpp_build.VERSION, "requires": ["avx2"]}))
    monkeypatch.setattr(llamacpp_build, "MARKER", marker)
    monkeypatch.setattr(llamacpp_build, "cpu_flags", lambda: AVX2)
    monkeypatch.setattr(llamacpp_build.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    assert llamacpp_build.ensure() == 0
