"""Build eexit and its C++/CUDA extension ``eexit._C``.

Environment switches:
  EEXIT_CUDA=0          skip the CUDA sources (fast CPU-only iteration)
  EEXIT_CUDA=1          a missing CUDA toolchain is an error
  (unset)               build CUDA when torch has CUDA and nvcc is found
  CUDA_HOME             CUDA toolkit; defaults to /usr/local/cuda when it exists
  TORCH_CUDA_ARCH_LIST  defaults to "8.0;8.6;8.9;9.0+PTX" (Ampere and Hopper)
  MAX_JOBS              parallel compile jobs (ninja)
  EEXIT_DEBUG=1         -O0 -g builds
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"

if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    # torch's own guess follows `which nvcc`, which may be a wrapper outside the toolkit.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)

import torch  # noqa: E402  (after CUDA_HOME is settled)
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda() -> bool:
    flag = os.environ.get("EEXIT_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"EEXIT_CUDA must be 0, 1 or unset, got {flag!r}")
    if flag == "0":
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} was built without CUDA")
    if cpp_extension.CUDA_HOME is None or not os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    ):
        problems.append(f"nvcc not found (CUDA_HOME={cpp_extension.CUDA_HOME!r})")
    if problems and flag == "1":
        raise SystemExit("EEXIT_CUDA=1 but CUDA cannot be built: " + "; ".join(problems))
    if problems:
        print("eexit: building CPU only: " + "; ".join(problems))
    return not problems


def _extension():
    debug = os.environ.get("EEXIT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cxx = opt + ["-fopenmp"]
    args = dict(
        name="eexit._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        # The shared C++ runtime, named before g++'s own -lstdc++: on a GPU image (Ubuntu 24.04,
        # gcc 13, torch 2.11) the link otherwise put libstdc++'s ostream and locale code inside
        # eexit._C, whose second copy of the locale crashed every C++ error message with a number
        # in it (tests/ops/test_torch_library.py and gpu_check's build step check for that copy).
        extra_link_args=["-fopenmp"] + (["-l:libstdc++.so.6"] if sys.platform.startswith("linux") else []),
        py_limited_api=True,
    )
    if _want_cuda():
        args["sources"] += sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
        args["extra_compile_args"]["nvcc"] = opt + [
            "--expt-relaxed-constexpr",
            "-lineinfo",
            "-DEEXIT_WITH_CUDA",
        ]
        args["extra_compile_args"]["cxx"].append("-DEEXIT_WITH_CUDA")
        return cpp_extension.CUDAExtension(**args)
    return cpp_extension.CppExtension(**args)


# Metadata lives in pyproject.toml; this file adds what needs code: the extension and the
# Triton kernels' folder, installed as eexit.kernels.
setup(
    packages=find_packages(include=["eexit", "eexit.*"]) + ["eexit.kernels"],
    package_dir={"eexit.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
