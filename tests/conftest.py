import pytest

from wan.testing.golden import golden_dir, load_golden


@pytest.fixture
def golden():
    """golden("case") -> GoldenCase; skips when no golden folder is configured, fails when one is missing."""

    def _load(name: str):
        if golden_dir() is None:
            pytest.skip("no golden fixtures: set STABLEAVATAR_GOLDEN_DIR (or provide ../shared/golden)")
        return load_golden(name)

    return _load
