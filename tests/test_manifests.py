"""Manifests: every bad input gets one clear error naming the file, the entry and the fix."""

import pytest

from mc_bench.config import load_manifests
from mc_bench.errors import ManifestError

from conftest import folder_dataset, write_manifests


def test_repository_manifests_are_valid():
    manifests = load_manifests()
    targets = [d for d in manifests.datasets.values() if d.role == "target"]
    assert len(manifests.datasets) >= 40 and len(targets) >= 32
    assert {"smoke", "mini", "cpu-paper"} <= set(manifests.profiles)


def test_valid_local_manifest(local_manifests):
    m = load_manifests(local_manifests)
    assert m.datasets["local"].source_kind == "folder"


@pytest.mark.parametrize("source, needle", [
    ("world:nope", "unknown source 'world:nope'"),
    ("ftp://example.org/data", "unknown source 'ftp://example.org/data'"),
])
def test_unknown_source(tmp_path, source, needle):
    folder = write_manifests(tmp_path, datasets=[folder_dataset(source=source)])
    with pytest.raises(ManifestError) as err:
        load_manifests(folder)
    msg = str(err.value)
    assert needle in msg and "datasets.yaml" in msg and "entry 'local'" in msg and "Fix:" in msg


def test_hub_dataset_needs_revision(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset(source="hf:user/data")])
    with pytest.raises(ManifestError, match="needs a `revision`"):
        load_manifests(folder)


def test_duplicate_ids(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset(), folder_dataset()])
    with pytest.raises(ManifestError, match=r"datasets.yaml, entry #2: duplicate id 'local'.*Fix: give every entry"):
        load_manifests(folder)


def test_unknown_dataset_in_profile(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset()],
                             profiles=[{"id": "p", "datasets": ["local", "missing-one"]}])
    with pytest.raises(ManifestError, match=r"profiles.yaml, profile 'p': unknown dataset 'missing-one'.*Fix: add"):
        load_manifests(folder)


def test_unknown_model_in_profile(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset()],
                             profiles=[{"id": "p", "models": ["sd-nope"], "datasets": ["local"]}])
    with pytest.raises(ManifestError, match=r"profile 'p': unknown model 'sd-nope'"):
        load_manifests(folder)


def test_yaml_type_error(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset(channels="three")])
    with pytest.raises(ManifestError) as err:
        load_manifests(folder)
    msg = str(err.value)
    assert "entry 'local', field `channels`" in msg and "'three'" in msg and "Fix: correct `channels`" in msg


def test_yaml_syntax_error(tmp_path):
    folder = write_manifests(tmp_path)
    (folder / "datasets.yaml").write_text("datasets:\n  - id: a\n   source: [unclosed\n")
    with pytest.raises(ManifestError, match=r"datasets.yaml, line \d+: not valid YAML"):
        load_manifests(folder)


def test_unknown_field_is_rejected(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset(captoin_column="text")])
    with pytest.raises(ManifestError, match="field `captoin_column`"):
        load_manifests(folder)


def test_model_spec_validation(tmp_path):
    good = {"id": "tiny", "source": "zoo/tiny", "family": "tiny-sd", "resolution": 16, "metadata": {"params": 1e6}}
    folder = write_manifests(tmp_path, models=[good, {**good, "id": "bad", "family": "dalle"}])
    with pytest.raises(ManifestError, match=r"models.yaml, entry 'bad', field `family`"):
        load_manifests(folder)


def test_bad_generator_params_name_the_entry(tmp_path):
    from mc_bench.world import generate

    folder = write_manifests(tmp_path, datasets=[folder_dataset(id="w", source="world:animals",
                                                                params={"classes": ["unicorn"]})])
    spec = load_manifests(folder).datasets["w"]
    with pytest.raises(ManifestError, match=r"entry 'w', field `params`: bad generator parameters.*unicorn"):
        generate(spec, 16)


def test_check_profiles_can_be_skipped_by_tools_that_rewrite_models(tmp_path):
    folder = write_manifests(tmp_path, datasets=[folder_dataset()],
                             profiles=[{"id": "p", "models": ["not-yet"], "datasets": ["local"]}])
    assert "p" in load_manifests(folder, check_profiles=False).profiles
    with pytest.raises(ManifestError, match="unknown model 'not-yet'"):
        load_manifests(folder)
