"""docs/reliability.md, training's part: the same seed and data give the same weights, a folder holding
another run is never resumed by mistake, a damaged resume state is one clear error."""
import pytest
from aaclip.train.common.backbone import write_random_weights
from aaclip.data.synth import generate_dataset
from aaclip.train.train_cli import main as train_main
from click.testing import CliRunner

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    paths = generate_dataset(root / "data", classes=["disk"], image_size=64, n_train_normal=3, n_train_anomalous=3,
                             n_test_normal=1, n_test_anomalous=1, seed=5)
    other = generate_dataset(root / "other", classes=["disk"], image_size=64, n_train_normal=3, n_train_anomalous=3,
                             n_test_normal=1, n_test_anomalous=1, seed=6)
    write_random_weights("aaclip-tiny", root / "clip.safetensors", seed=0)
    return root, paths["train"], other["train"]


def fit(root, data, out, *extra):
    return CliRunner().invoke(train_main, [
        "--data", str(data), "--backbone", "aaclip-tiny", "--clip-weights", str(root / "clip.safetensors"),
        "--image-size", "64", "--out", str(out), "--epochs1", "1", "--epochs2", "1", "--batch1", "4", "--batch2", "3",
        "--max-steps", "2", "-q", *extra])


def test_two_runs_with_the_same_seed_give_identical_weights(workspace):
    root, data, _ = workspace
    for name in ("a", "b", "c"):
        r = fit(root, data, root / name, *(["--seed", "7"] if name == "c" else []))
        assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    a, b, c = (load_file(str(root / n / "adapters.safetensors")) for n in ("a", "b", "c"))
    assert sorted(a) == sorted(b) and all(a[k].equal(b[k]) for k in a)  # bit for bit
    assert not all(a[k].equal(c[k]) for k in a)


def test_a_folder_holding_another_run_is_not_resumed(workspace):
    root, data, other = workspace
    assert fit(root, data, root / "run").exit_code == 0
    before = (root / "run" / "adapters.safetensors").read_bytes()
    r = fit(root, other, root / "run", "--epochs2", "2")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "holds another training run (different root); it would be resumed with the wrong data" \
        in r.stderr
    assert (root / "run" / "adapters.safetensors").read_bytes() == before
    r = fit(root, data, root / "run", "--epochs2", "2")  # the same run with more epochs continues
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_resume_state_is_one_error_with_the_way_out(workspace, damage):
    root, data, _ = workspace
    out = root / f"damaged-{damage}"
    assert fit(root, data, out, "--stage", "1").exit_code == 0
    state = out / "train_state.pt"
    state.write_bytes(b"" if damage == "empty" else state.read_bytes()[:200])
    r = fit(root, data, out)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {state} is damaged (")
    assert "delete it to restart training (the weights of the last finished epoch stay in adapters.safetensors)" \
        in r.stderr
