"""Build the Cython kernels in csrc/ into the minissd package.

Every ``csrc/NAME.pyx`` becomes the extension module ``minissd._NAME``.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
extra_compile_args = ["-O3"] if os.name != "nt" else ["/O2"]

extensions = [
    Extension(
        "minissd._" + os.path.splitext(os.path.basename(path))[0],
        [os.path.relpath(path, HERE)],
        include_dirs=[np.get_include(), os.path.join(HERE, "csrc")],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=extra_compile_args,
        depends=sorted(glob.glob(os.path.join(HERE, "csrc", "*.h"))),
    )
    for path in sorted(glob.glob(os.path.join(HERE, "csrc", "*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
