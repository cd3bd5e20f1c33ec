"""Every network family of the registry is covered: conformance fixtures of the original code, a load test, a
build test and an export test. COVERAGE declares which test covers which family; the test below checks it
against `registry.families()`, so that a new family without entries fails, saying what to add."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_conformance import KNOWN_KINDS, fixture_folders

from imgforge.nets import registry

LOAD = "test_registry.py::test_each_family_detects_and_rebuilds_its_weights"
BUILD = "test_registry.py::test_each_family_builds_a_fresh_network_from_its_hyperparameters"
EXPORT = "test_export.py::test_export_checkpoint_of_each_family"


@dataclass(frozen=True)
class Coverage:
    """conformance: fixture kinds (tests/test_conformance.py KNOWN_KINDS, with a folder in
    tests/fixtures/conformance/) whose check runs the family against the original code's outputs; load, build,
    export: tests as "test_file.py::test_function", parametrised with the family's name among their ids (or
    "...::test_function[id]" for another id, or an unparametrised test of that family alone)."""

    conformance: tuple[str, ...]
    load: str = LOAD
    build: str = BUILD
    export: str = EXPORT


COVERAGE = {
    "pix2pix_unet": Coverage(("pix2pix.unet",)),
    "pix2pix_resnet": Coverage(("pix2pix.resnet",)),
    "ddpm_unet": Coverage(("ddpm.unet", "ddpm.ddpm_steps", "ddpm.ddim_steps")),
    "oldphoto_detector": Coverage(("oldphoto.scratch_unet",)),
    "oldphoto_vae": Coverage(("oldphoto.chain_quality", "oldphoto.chain_scratch")),
    "oldphoto_mapping": Coverage(("oldphoto.chain_quality", "oldphoto.chain_scratch")),
    "face_spade": Coverage(("face.spade_generator",)),
    "patchgan": Coverage(("train.pix2pix_step", "train.cyclegan_step")),
    "fid_inception": Coverage(("eval.fid_inception",)),
    "lpips_alex": Coverage(("eval.lpips_alex",)),
}


def _fixture_kinds() -> set[str]:
    return {json.loads((folder / "config.json").read_text()).get("kind") for folder in fixture_folders()}


def _parametrised_ids(function) -> list[str] | None:
    """The ids a test function is parametrised with (the first argument's values), None if it is not."""
    ids = None
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        ids = ids or []
        for value in mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", []):
            if isinstance(value, type(pytest.param(None))):
                ids.append(value.id or str(value.values[0]))
            else:
                ids.append(str(value[0] if isinstance(value, tuple) else value))
    return ids


def _missing_test(family: str, node: str) -> str | None:
    """Why `node` does not cover `family`, or None if it does."""
    where, _, name = node.partition("::")
    function_name, _, wanted = name.partition("[")
    wanted = wanted.rstrip("]") or family
    path = Path(__file__).parent / where
    if not path.is_file():
        return f"{where} does not exist"
    function = getattr(importlib.import_module(path.stem), function_name, None)
    if function is None:
        return f"{where} has no {function_name}"
    ids = _parametrised_ids(function)
    if ids is not None and wanted not in ids:
        return f"{where}::{function_name} is not parametrised with {wanted!r} (its ids: {', '.join(ids)})"
    return None


@pytest.mark.parametrize("family", sorted(registry.families()))
def test_every_family_has_conformance_load_build_and_export_tests(family):
    coverage = COVERAGE.get(family)
    if coverage is None:
        pytest.fail(
            f"network family {family!r} is not covered. Add to COVERAGE in tests/test_families.py: "
            f"{family!r}: Coverage(conformance=(<kind>, ...), load=..., build=..., export=...), where <kind> is a "
            f"fixture kind of the original code's outputs (a folder in tests/fixtures/conformance/, the kind in "
            f"KNOWN_KINDS of tests/test_conformance.py, its check in tests/conformance_checks/), and load/build/"
            f"export name tests that load {family} weights through the registry, build it from its "
            f"hyperparameters (Family.build) and export it to ONNX: the defaults are {LOAD}, {BUILD} and {EXPORT}, "
            f"parametrised over tests/test_registry.py::FAMILIES — adding a small {family} network to its "
            f"_tiny_networks covers all three.", pytrace=False)
    problems = []
    if not coverage.conformance:
        problems.append("no conformance fixture kind")
    kinds = _fixture_kinds()
    for kind in coverage.conformance:
        if kind not in KNOWN_KINDS:
            problems.append(f"conformance kind {kind!r} is not in KNOWN_KINDS of tests/test_conformance.py")
        elif kind not in kinds:
            problems.append(f"no fixture folder of kind {kind!r} in tests/fixtures/conformance/")
    for what in ("load", "build", "export"):
        reason = _missing_test(family, getattr(coverage, what))
        if reason:
            problems.append(f"{what} test: {reason}")
    assert not problems, f"{family}: " + "; ".join(problems)


def test_coverage_names_no_family_the_registry_lacks():
    stale = sorted(set(COVERAGE) - set(registry.families()))
    assert not stale, f"COVERAGE in tests/test_families.py names families the registry does not have: {stale}"
