"""weights_manifest.toml loading and validation, and the one error line a bad manifest gives."""

from __future__ import annotations

import pytest

from helpers import stderr_lines
from imgforge.cli import main
from imgforge.errors import ManifestError
from imgforge.manifest import DEFAULT_MANIFEST, TASKS, NetworkSpec, get_model, load_manifest, models_for_task

SHA = "ab" * 32
COMMIT = "cd" * 20

VALID = f"""
[models.tiny-hub]
task = "sample"
arch = "ddpm_unet"
description = "a Hub model"
license = "mit"
config = {{ channels = 3 }}
files.weights = {{ hub = "org/tiny", revision = "{COMMIT}", path = "sub/w.safetensors", sha256 = "{SHA.upper()}", size = 12 }}
files.config = {{ hub = "org/tiny", revision = "", path = "config.json", sha256 = "" }}

[models.tiny-url]
task = "translate"
arch = "pix2pix"
description = "a URL model"
direction = "BtoA"
files.generator = {{ urls = ["http://a.example/x/gen.pth", "https://b.example/gen.pth"] }}
files.mapping = {{ urls = ["http://a.example/ckpt.zip"], member = "ckpt/map/latest.pth", sha256 = "{SHA}" }}
"""


def test_valid_manifest_parses_every_field(tmp_path, write_manifest):
    write_manifest(tmp_path, VALID)
    models = load_manifest()
    assert list(models) == ["tiny-hub", "tiny-url"]
    hub = models["tiny-hub"]
    assert (hub.task, hub.arch, hub.license, hub.homepage, hub.direction) == ("sample", "ddpm_unet", "mit", None, None)
    assert hub.config == {"channels": 3}
    weights = hub.files["weights"]
    assert (weights.hub, weights.path, weights.revision, weights.sha256, weights.size) == (
        "org/tiny", "sub/w.safetensors", COMMIT, SHA, 12)
    assert weights.pinned and weights.basename == "w.safetensors"
    config = hub.files["config"]
    assert (config.revision, config.sha256, config.size, config.pinned) == (None, None, None, False)
    url = models["tiny-url"]
    assert url.direction == "BtoA" and url.license == "" and url.config == {}
    generator = url.files["generator"]
    assert generator.urls == ("http://a.example/x/gen.pth", "https://b.example/gen.pth")
    assert (generator.path, generator.hub, generator.member, generator.pinned) == ("gen.pth", None, None, False)
    mapping = url.files["mapping"]
    assert (mapping.path, mapping.member, mapping.pinned) == ("ckpt/map/latest.pth", "ckpt/map/latest.pth", True)
    assert hub.networks is None and url.networks is None


def test_networks_table(tmp_path, write_manifest):
    """Which networks a model has: family (default: the arch), file role (default: the network's name), a
    config file, the exports used, load options and describe settings."""
    write_manifest(tmp_path, _model("""files.w = { hub = "o/r", path = "w.bin" }
files.c = { hub = "o/r", path = "c.json" }
networks.unet = { family = "ddpm_unet", file = "w", config_file = "c", parts = ["unet"], options = { x = 1 } }
networks.w = { settings = { size = 512 } }"""))
    (model,) = load_manifest().values()
    assert model.networks == {
        "unet": NetworkSpec("unet", "ddpm_unet", "w", "c", ("unet",), {"x": 1}, {}),
        "w": NetworkSpec("w", "a", "w", None, None, {}, {"size": 512})}


def _model(body: str, name: str = "m") -> str:
    return f'[models.{name}]\ntask = "sample"\narch = "a"\ndescription = "d"\n{body}\n'


GOOD_FILE = 'files.w = { hub = "o/r", path = "w.bin" }'


@pytest.mark.parametrize(
    "text, expected",
    [
        (_model(GOOD_FILE + '\ncolour = "red"'), "unknown key(s) colour"),
        ('[models.m]\ntask = "sample"\narch = "a"\n' + GOOD_FILE, "missing description"),
        (_model(GOOD_FILE).replace('arch = "a"', "arch = 3"), "arch must be a non-empty string"),
        (_model(GOOD_FILE).replace('"sample"', '"paint"'), "task 'paint' is not one of"),
        (_model('files.w = { path = "w.bin" }'), "exactly one source"),
        (_model('files.w = { hub = "o/r", path = "w.bin", urls = ["http://x/w.bin"] }'), "exactly one source"),
        (_model('files.w = { hub = "o/r", path = "w.bin", sha256 = "abc" }'), "sha256 must be 64 hex"),
        (_model(f'files.w = {{ hub = "o/r", path = "w.bin", sha256 = "{"g" * 64}" }}'), "sha256 must be 64 hex"),
        (_model('files.w = { hub = "o/r", path = "w.bin", revision = "main" }'), "revision must be a 40-hex"),
        (_model('files.w = { hub = "o/r", path = "w.bin", size = "12" }'), "size must be a positive"),
        (_model('files.w = { hub = "o/r", path = "w.bin", size = true }'), "size must be a positive"),
        (_model('files.w = { hub = "o/r", path = "w.bin", mirror = 1 }'), "unknown key(s) mirror"),
        (_model('files.w = { hub = "o/r" }'), "needs path"),
        (_model('files.w = { hub = "o/r", path = "../w.bin" }'), "relative path"),
        (_model('files.w = { urls = [] }'), "non-empty list"),
        (_model('files.w = { urls = ["ftp://x/w.bin"] }'), "not an http(s) URL"),
        (_model('files.w = { urls = ["http://x/w.bin"], revision = "" }'), "belongs to hub files"),
        (_model('files.w = { hub = "o/r", path = "w.bin", member = "a" }'), "belongs to URL sources"),
        (_model(GOOD_FILE + '\ndirection = "AtoB"'), "direction is for translate models only"),
        (_model('files = {}'), "files must be a table"),
        (_model(GOOD_FILE + "\nconfig = 3"), "config must be a table"),
        (_model(GOOD_FILE) + _model(GOOD_FILE), "model [models.m] is declared twice"),
        ('title = "zoo"\n' + _model(GOOD_FILE), "unknown top-level key(s) title"),
        (_model(GOOD_FILE, name='"bad name"'), "model names use letters"),
        ("[models.m\n", "Expected ']'"),
        (_model(GOOD_FILE + "\nnetworks = 3"), "networks must be a table"),
        (_model(GOOD_FILE + '\nnetworks.n = { file = "x" }'), "file 'x' is not one of the model's files (w)"),
        (_model(GOOD_FILE + '\nnetworks.n = { file = "w", config_file = "c" }'), "config_file 'c' is not one"),
        (_model(GOOD_FILE + '\nnetworks.w = { parts = "encoder" }'), "parts must be a non-empty list"),
        (_model(GOOD_FILE + '\nnetworks.w = { package_file = "lpips" }'), "package_file is a package's name and"),
        (_model(GOOD_FILE + '\nnetworks.w = { options = 3 }'), "options must be a table"),
        (_model(GOOD_FILE + '\nnetworks.w = { role = "x" }'), "unknown key(s) role"),
    ],
)
def test_invalid_manifest_is_one_line_error_naming_the_table(tmp_path, write_manifest, text, expected):
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as error:
        load_manifest()
    message = str(error.value)
    assert expected in message
    assert "\n" not in message and str(path) in message
    if expected not in ("Expected ']'", "unknown top-level key(s) title"):  # errors about one model name it
        assert "[models.m" in message or "[models.bad name]" in message


def test_manifest_errors_keep_the_table_name(here, capfd, monkeypatch):
    (here / "unknownkey.toml").write_text('[models.t1]\ntask = "sample"\nfoo = 1\n')
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(here / "unknownkey.toml"))
    assert main(["models", "list"]) == 1
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: {here / 'unknownkey.toml'}: [models.t1]: unknown key(s) foo; allowed: ")


def test_a_binary_manifest_is_named(here, capfd, monkeypatch):
    (here / "binary.toml").write_bytes(bytes(range(256)) * 4)
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(here / "binary.toml"))
    assert main(["models", "list"]) == 1
    assert stderr_lines(capfd) == [f"error: {here / 'binary.toml'}: not a model manifest (TOML is UTF-8 text; "
                                   "this file is not)"]


def test_missing_manifest_file_is_a_manifest_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(tmp_path / "nowhere.toml"))
    with pytest.raises(ManifestError, match="cannot read the model manifest"):
        load_manifest()


def test_edited_manifest_is_read_again(tmp_path, write_manifest):
    write_manifest(tmp_path, _model(GOOD_FILE, name="first"))
    assert list(load_manifest()) == ["first"]
    write_manifest(tmp_path, _model(GOOD_FILE, name="second") + "# longer, so the size differs too\n")
    assert list(load_manifest()) == ["second"]


def test_get_model_suggests_close_names(tmp_path, write_manifest):
    write_manifest(tmp_path, VALID)
    assert get_model("tiny-url").name == "tiny-url"
    with pytest.raises(ManifestError, match="unknown model 'tiny-hb'; did you mean tiny-hub"):
        get_model("tiny-hb")
    with pytest.raises(ManifestError) as error:
        get_model("zzzzzzzz")
    assert "did you mean" not in str(error.value)


def test_models_for_task(tmp_path, write_manifest):
    write_manifest(tmp_path, VALID)
    assert [m.name for m in models_for_task("translate")] == ["tiny-url"]
    assert models_for_task("restore") == []
    with pytest.raises(ManifestError, match="unknown task"):
        models_for_task("paint")


def test_shipped_manifest_is_valid(monkeypatch):
    monkeypatch.delenv("IMGFORGE_MANIFEST", raising=False)
    models = load_manifest()
    assert models == load_manifest(DEFAULT_MANIFEST)
    assert models, "the shipped zoo is empty"
    for entry in models.values():
        assert entry.task in TASKS and entry.description and entry.files
        if entry.task == "translate":
            assert entry.direction in ("AtoB", "BtoA")


def test_repo_root_manifest_is_the_package_file():
    root_link = DEFAULT_MANIFEST.parent.parent / "weights_manifest.toml"
    if not root_link.exists():
        pytest.skip("not running from a source checkout")
    assert root_link.resolve() == DEFAULT_MANIFEST.resolve()
