from travel.train import fit


def test_two_step_fit_writes_run_folder(tiny_config, tmp_path):
    result = fit(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    assert result.step == 4 and not result.interrupted
    for name in ("config.json", "metrics.jsonl", "state.pt", "tiny.safetensors"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]


def test_fit_refuses_to_train_over_an_earlier_run(tiny_config, tmp_path):
    import pytest

    from travel.errors import ConfigError

    fit(tiny_config, tmp_path / "run")
    before = (tmp_path / "run" / "tiny.safetensors").read_bytes()
    (tmp_path / "run" / ".state.pt.abc.tmp").write_bytes(b"torn")  # what a hard kill during a save leaves
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(tiny_config, tmp_path / "run")
    assert (tmp_path / "run" / "tiny.safetensors").read_bytes() == before
    assert not (tmp_path / "run" / ".state.pt.abc.tmp").exists()

    fit(tiny_config, tmp_path / "run", overwrite=True)
    steps = [line.count('"step"') for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == tiny_config.train.steps  # the old run's lines are gone, not followed by new ones


def test_cli_overwrite_flag(domains, tmp_path):
    from typer.testing import CliRunner

    from travel.cli import app

    source, target = domains
    args = ["fit", "--src", str(source), "--dst", str(target), "--run-dir", str(tmp_path / "run"), "--steps", "2",
            "--size", "16", "--load-size", "18", "--channels", "8", "--depth", "2", "--vec-len", "8", "--batch-size", "2"]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already holds a run" in again.stderr
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
