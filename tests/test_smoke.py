from travel.train import fit


def test_two_step_fit_writes_run_folder(tiny_config, tmp_path):
    result = fit(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    assert result.step == 4 and not result.interrupted
    for name in ("config.json", "metrics.jsonl", "state.pt", "tiny.safetensors"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
