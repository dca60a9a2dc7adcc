"""Builds the compiled book core (`mmengine/book/_core.pyx`, Cython to C++) and the compiled
fast path of pricing and the inproc hops (`mmengine/_fastpath.pyx`, Cython to C) with the
package: `pip install -e .` / `make venv` compile them from source; the rest is in
pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "mmengine.book._core",
                ["mmengine/book/_core.pyx"],
                language="c++",
                extra_compile_args=["-O2"],
            ),
            Extension(
                "mmengine._fastpath",
                ["mmengine/_fastpath.pyx"],
                extra_compile_args=["-O2"],
            ),
        ],
        compiler_directives={"language_level": "3"},
    )
)
