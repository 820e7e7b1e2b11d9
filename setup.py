"""What pyproject.toml cannot say: the repository's `config/` ships inside the package as `skipper/config/`.

`config/skipper.yaml` stays the one source of the defaults (a top-level directory users edit and
mount); the wheel carries it as package data, which `skipper.core.settings` reads with
`importlib.resources`. Everything else about the build is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    # Namespace discovery, as pyproject's `packages.find` did, so that asset folders (static/, templates/) are packages too.
    packages=[*find_namespace_packages(include=["skipper", "skipper.*"], exclude=["*.__pycache__"]), "skipper.config"],
    package_dir={"skipper.config": "config"},
)
