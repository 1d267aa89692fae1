"""Shared test setup: nothing a test does may touch the user's ~/.cache/maskdla."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_corpus_cache(tmp_path_factory):
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MASKDLA_CACHE", str(tmp_path_factory.mktemp("maskdla-cache")))
    yield
    patcher.undo()
