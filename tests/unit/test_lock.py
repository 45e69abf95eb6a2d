"""The lock files agree with pyproject.toml, the test environment is the lock, and the only
OpenCV is the headless build.

requirements.lock (what the worker image installs) and requirements-test.lock (the same
pins plus the test tools, what `make install` installs) are compiled from pyproject.toml by
`make lock`; both leave out pyimgaug's opencv-python.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements.lock"
TEST_LOCK = REPO / "requirements-test.lock"
LEFT_OUT = {"opencv-python"}  # pyimgaug's GUI OpenCV: the headless build stands in for it


def pins(lock: Path) -> dict[str, Requirement]:
    """Each pinned requirement of a lock file (markers kept), by canonical name."""
    found = {}
    for line in lock.read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            requirement = Requirement(line.rstrip(" \\"))
            found[canonicalize_name(requirement.name)] = requirement
    return found


def version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


def declared() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    test = [Requirement(r) for r in project["optional-dependencies"]["test"]]
    return runtime, test


def applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate()


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    runtime, test = declared()
    runtime_pins, test_pins = pins(RUNTIME_LOCK), pins(TEST_LOCK)
    for lock_pins, wanted in ((runtime_pins, runtime), (test_pins, runtime + test)):
        for requirement in wanted:
            pinned = lock_pins.get(canonicalize_name(requirement.name))
            assert pinned is not None, f"{requirement} is not in the lock: run `make lock`"
            assert requirement.specifier.contains(version(pinned), prereleases=True), (
                f"{requirement} but the lock pins {version(pinned)}: run `make lock`"
            )
    assert {n: version(r) for n, r in runtime_pins.items()}.items() <= {
        n: version(r) for n, r in test_pins.items()
    }.items(), "the test lock must keep the image's pins"
    assert not LEFT_OUT & (set(runtime_pins) | set(test_pins))
    assert "opencv-python-headless" in runtime_pins


def test_the_lock_holds_nothing_that_pyproject_does_not_need() -> None:
    """Every pin is reached from pyproject.toml through the installed packages' own
    requirements: a dependency dropped from pyproject.toml must leave the lock too."""
    runtime, test = declared()
    test_pins = pins(TEST_LOCK)
    reached: set[str] = set()
    queue = [r for r in runtime + test if applies(r)]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in reached or name in LEFT_OUT:
            continue
        reached.add(name)
        extras = requirement.extras or {""}
        for dependency in metadata.requires(name) or []:
            dep = Requirement(dependency)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                queue.append(dep)
    applicable = {n for n, r in test_pins.items() if applies(r)}
    assert applicable - reached == set(), "pins that nothing needs: run `make lock`"


def test_the_test_environment_is_the_lock() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {
        name: (version(r), installed.get(name))
        for name, r in pins(TEST_LOCK).items()
        if applies(r) and installed.get(name) != version(r)
    }
    assert wrong == {}, "(lock, installed) differ: run `make install`"


def test_one_opencv_the_headless_build() -> None:
    names = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
    assert {n for n in names if n.startswith("opencv")} == {"opencv-python-headless"}
    import cv2

    extension = next(Path(cv2.__file__).parent.rglob("cv2*.so"))
    linked = subprocess.run(["ldd", str(extension)], capture_output=True, text=True).stdout
    assert "not found" not in linked
    assert not [lib for lib in ("libGL", "libX11", "libxcb") if lib in linked], linked


def test_augmentation_output_matches_the_reference() -> None:
    from tests.docker.augment_reference import differences

    assert differences() == []
