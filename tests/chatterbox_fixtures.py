"""Session fixtures with the tiny Chatterbox models, shared by the Chatterbox test modules.

Test modules import these names; pytest then caches each session fixture once for the
whole run, whichever module asks first (building the three takes ~40 s here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-chatterbox")


@pytest.fixture(scope="session")
def tiny_model(tiny_workdir: Path) -> Any:
    """The tiny standard model (2 s built-in voice)."""
    from tests.chatterbox_tiny import build_tiny_standard

    return build_tiny_standard(tiny_workdir)


@pytest.fixture(scope="session")
def tiny_multilingual(tiny_workdir: Path, tiny_model: Any) -> Any:
    """The tiny multilingual model, sharing S3Gen and the voice encoder with ``tiny_model``."""
    from tests.chatterbox_tiny import build_tiny_multilingual

    return build_tiny_multilingual(tiny_workdir, share=tiny_model)


@pytest.fixture(scope="session")
def tiny_turbo(tiny_workdir: Path, tiny_model: Any) -> Any:
    """The tiny Turbo model (its own meanflow S3Gen; 5.5 s built-in voice)."""
    from tests.chatterbox_tiny import build_tiny_turbo

    return build_tiny_turbo(tiny_workdir, share=tiny_model)
