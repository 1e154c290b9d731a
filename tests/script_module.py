"""Import a script that is not in a package (benchmarks/, scripts/, examples/) as a module, for tests."""

import importlib.util
import sys
from pathlib import Path


def load_script(path: Path, name: str | None = None):
    spec = importlib.util.spec_from_file_location(name or Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # a dataclass of the script looks its module up there
    spec.loader.exec_module(mod)
    return mod
