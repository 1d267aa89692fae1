"""maskdla.allocator: glibc's malloc told to keep freed memory, unless the user chose."""
from __future__ import annotations

import subprocess
import sys

import pytest

from maskdla import allocator


class FakeLibc:
    """Records mallopt calls; refuses the values in ``refused``."""

    def __init__(self, refused=()):
        self.calls, self.refused = [], set(refused)

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return 0 if (parameter, value) in self.refused else 1


@pytest.fixture
def clean_environment(monkeypatch):
    for name in (allocator.OPT_OUT,) + allocator._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_three_settings_are_applied(clean_environment):
    libc = FakeLibc()
    clean_environment.setattr(allocator, "_glibc", lambda: libc)
    assert allocator.keep_freed_memory() is True
    assert libc.calls == [(allocator.M_MMAP_THRESHOLD, 1 << 30),
                          (allocator.M_TRIM_THRESHOLD, 2 ** 31 - 1),
                          (allocator.M_TOP_PAD, 1 << 30)]


def test_an_older_glibc_gets_the_largest_mmap_threshold_it_takes(clean_environment):
    libc = FakeLibc(refused=[(allocator.M_MMAP_THRESHOLD, 1 << 30)])
    clean_environment.setattr(allocator, "_glibc", lambda: libc)
    assert allocator.keep_freed_memory() is True
    assert libc.calls[:2] == [(allocator.M_MMAP_THRESHOLD, 1 << 30),
                              (allocator.M_MMAP_THRESHOLD, 32 << 20)]
    refusing = FakeLibc(refused=[(allocator.M_TOP_PAD, 1 << 30)])
    clean_environment.setattr(allocator, "_glibc", lambda: refusing)
    assert allocator.keep_freed_memory() is False  # a setting that did not take is said


@pytest.mark.parametrize("name, value", [("MASKDLA_MALLOC", "default"),
                                         ("MALLOC_TOP_PAD_", "0"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_the_users_choice_wins(clean_environment, name, value):
    libc = FakeLibc()
    clean_environment.setattr(allocator, "_glibc", lambda: libc)
    clean_environment.setenv(name, value)
    assert allocator.keep_freed_memory() is False and libc.calls == []


def test_no_glibc_changes_nothing(clean_environment):
    clean_environment.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_every_command_applies_it_before_it_runs(tmp_path):
    """run_main applies the settings before the command (in a child process, since they
    stay for the life of the process; mallopt has no getter, so the child records what
    keep_freed_memory answered there)."""
    code = ("import maskdla.allocator as a, maskdla.cli as c; seen = []\n"
            "real = a.keep_freed_memory\n"
            "c.keep_freed_memory = lambda: seen.append(real())\n"
            "try:\n    c.run_main(lambda argv: 0, [])\n"
            "except SystemExit as e:\n    print(seen, e.code)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.stdout.split() == ["[True]", "0"], result.stderr
