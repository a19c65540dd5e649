"""``python -m jobs.retrain`` (the README's cron command) ends a run it cannot do with one line
and exit 1, not a traceback: a registry or report folder that is a file, or not writable."""

from __future__ import annotations


def test_a_registry_that_is_a_file_is_one_line_and_exit_1(tmp_path, capsys):
    from jobs.retrain import main

    taken = tmp_path / "models"
    taken.write_text("not a folder")
    code = main([f"--set=model.registry={taken}", "--set=retrain.deployment=prod",
                 f"--set=retrain.history={tmp_path / 'history'}",
                 f"--set=retrain.report_dir={tmp_path / 'reports'}"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("python -m jobs.retrain: error:") and err.count("\n") == 1, err
