"""Builds the compiled book core (`mmengine/book/_core.pyx`, Cython to C++) with the package:
`pip install -e .` / `make venv` compile it from source; the rest is in pyproject.toml."""

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
            )
        ],
        compiler_directives={"language_level": "3"},
    )
)
