"""verify's re-run runs the scratch clone's own code, not the checkout the venv was installed from.

    .venv/bin/python -m pytest -q tests/test_verify_rerun_code.py

The venv's editable install maps ``pipeline_src`` to the checkout it was made in; a clone at an older commit
run with that venv would run HEAD's code while its dvc.lock hashed the commit's files (the published qata-real
row failed at preprocess for this reason). The re-run's environment puts the clone first.
"""

from __future__ import annotations

import os

from pipeline_src import verify


def _fake_clone(tmp_path):
    clone = tmp_path / "repo"
    (clone / "pipeline_src").mkdir(parents=True)
    (clone / "pipeline_src" / "__init__.py").write_text("")
    return clone


def test_the_rerun_environment_imports_the_clone_s_pipeline_src(tmp_path):
    clone = _fake_clone(tmp_path)
    assert verify._code_in(clone, verify._rerun_env({}, clone)) is None


def test_without_it_the_venv_s_checkout_would_run(tmp_path):
    clone = _fake_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    why = verify._code_in(clone, env)
    assert why is not None and "not the clone" in why, why
