"""Build the Cython kernels in csrc/ into the minissd package.

Every ``csrc/NAME.pyx`` becomes the extension module ``minissd._NAME``.
"""
import glob
import os
import shlex
import subprocess
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
extra_compile_args = ["-O3"] if os.name != "nt" else ["/O2"]

# Kernels whose loops use cython.parallel.prange: built with OpenMP when the compiler accepts it,
# serially otherwise (same results). MINISSD_OPENMP=0 turns it off.
OPENMP_MODULES = {"im2col"}


def _openmp_flags():
    """["-fopenmp"] when the C compiler builds and links an OpenMP program, else []."""
    if os.name == "nt" or os.environ.get("MINISSD_OPENMP", "1") == "0":
        return []
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            subprocess.run(cc + ["-fopenmp", src, "-o", os.path.join(tmp, "probe")], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError):
            return []
    return ["-fopenmp"]


OPENMP = _openmp_flags()


def _extension(path):
    name = os.path.splitext(os.path.basename(path))[0]
    omp = OPENMP if name in OPENMP_MODULES else []
    return Extension(
        "minissd._" + name,
        [os.path.relpath(path, HERE)],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=extra_compile_args + omp,
        extra_link_args=omp,
    )


extensions = [_extension(path) for path in sorted(glob.glob(os.path.join(HERE, "csrc", "*.pyx")))]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
