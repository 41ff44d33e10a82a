"""Build driver: setup.py only runs CMake; every compiler flag lives in CMakeLists.txt."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMake builds (no sources for setuptools itself)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build the ``bebr_python`` CMake target into the extension's directory."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("BEBR_BUILD_TYPE", "Release")
        args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DBEBR_PYTHON_OUTPUT_DIR={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DBEBR_BUILD_PYTHON=ON",
            "-DBEBR_BUILD_TESTS=OFF",
            "-DBEBR_BUILD_BENCHMARKS=OFF",
        ]
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        subprocess.run(["cmake", *args], check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "bebr_python",
                        "--parallel", jobs], check=True)


setup(
    ext_modules=[CMakeExtension("bebr._C")],
    cmdclass={"build_ext": CMakeBuild},
)
