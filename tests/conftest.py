"""Shared test setup: nothing a test does may touch the user's ~/.cache/maskdla."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_corpus_cache(tmp_path_factory):
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MASKDLA_CACHE", str(tmp_path_factory.mktemp("maskdla-cache")))
    yield
    patcher.undo()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A factory: ``tiny_checkpoint(min_size, max_size)`` -> the path of a checkpoint of a
    seeded, untrained vovnet19slim for the prediction bench's classes (made once per size)."""
    import torch

    from maskdla.bench.predict import CLASSES
    from maskdla.model import build_model

    made = {}

    def make(min_size: int, max_size: int):
        if (min_size, max_size) not in made:
            torch.manual_seed(0)
            model = build_model("vovnet19slim", len(CLASSES) + 1, min_size=min_size,
                                max_size=max_size)
            config = {"backbone": "vovnet19slim", "norm": None, "min_size": [min_size],
                      "max_size": max_size, "classes": list(CLASSES)}
            path = tmp_path_factory.mktemp("model") / f"tiny-{min_size}.pth"
            torch.save({"model": model.state_dict(), "optimizer": None, "scheduler": None,
                        "scaler": None, "epoch": 0, "iteration": 0, "rng": None,
                        "config": config, "classes": list(CLASSES)}, path)
            made[min_size, max_size] = path
        return made[min_size, max_size]

    return make


@pytest.fixture()
def write_scans(tmp_path):
    """A factory: ``write_scans({"a.png": (height, width), "box/b.jpg": ...})`` writes
    seeded random RGB images at those paths under tmp_path/scans and returns that folder."""
    import numpy as np
    from PIL import Image

    def write(sizes):
        rng = np.random.default_rng(0)
        root = tmp_path / "scans"
        root.mkdir(exist_ok=True)
        for relative, size in sizes.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
        return root

    return write
