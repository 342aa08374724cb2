"""The command line as a new user meets it: help, version, flag names in errors, exit codes,
commands that read what others write, and the mode of written files."""

import dataclasses
import json
import os
import stat

import numpy as np
import pytest

import ecflow
from ecflow import networks, teachers
from ecflow.cli import main
from ecflow.cli import recover_cmd
from ecflow.cli._app import _flag_names
from cli_helpers import run


def cli(argv, capsys):
    """``main(argv)`` in-process: its exit code, stdout and stderr."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bad_input_line(code, err):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:"), err
    return lines[0]


@pytest.fixture
def teacher(tmp_path):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "g"), 0)
    return networks.write_network(tmp_path / "t.h5", net)


@pytest.mark.parametrize("args", [[], ["teacher"], ["symmetry"]])
def test_a_group_without_a_command_prints_its_help_once(args, capsys):
    code, out, err = cli(args, capsys)
    assert code == 0 and err == ""
    assert out.count("Usage: ecflow") == 1
    assert "Commands:" in out


@pytest.mark.parametrize("args", [["recover", "-h"], ["synthetic-sweep", "--help"],
                                  ["symmetry", "reduce", "-h"], ["-h"]])
def test_help_shows_no_type_on_flags_and_no_swallowed_brackets(args, capsys):
    code, out, _ = cli(args, capsys)
    assert code == 0 and out.count("Usage: ecflow") == 1
    assert "<bool>" not in out and "-h, --help" in out
    if args[0] == "symmetry":
        assert "Relative tolerance on [w, b]." in out
    if args[0] == "recover":
        assert "--early-stop / --no-early-stop" in out and "3: the run finished" in out


def test_version(capsys):
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"ecflow {ecflow.__version__}"


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--students", 0], "--students must be"),
        (["--gamma", 2], "--gamma must be"),
        (["--beta-deg", 100], "--beta-deg must be"),
        (["--n-queries", 0], "--n-queries must be"),
        (["--max-seconds", -1], "--max-seconds must be"),
        (["--seed", -1], "--seed must be"),
    ],
)
def test_recover_errors_name_the_flags_typed(args, flag, teacher, tmp_path, capsys):
    code, _, err = cli(["recover", "--teacher", teacher, "--rho", 2, "--out",
                        tmp_path / "o.h5", *args], capsys)
    line = bad_input_line(code, err)
    assert flag in line and "_" not in line.split(" must ")[0], line


def test_flag_names_leave_prose_and_unknown_fields_alone():
    class P:
        def __init__(self, name, *opts):
            self.name, self.opts = name, opts

    params = [P("students", "--students"), P("beta_deg", "--beta-deg"), P("out", "--out")]
    assert _flag_names("n_students must be positive", params) == "--students must be positive"
    assert (_flag_names("hidden sizes must be positive", [P("hidden", "--hidden")])
            == "--hidden sizes must be positive")
    assert _flag_names("x: beta_deg too big", params) == "x: --beta-deg too big"
    assert _flag_names("the students of out differ", params) == "the students of out differ"
    assert _flag_names("rmse_tol must be > 0", params) == "rmse_tol must be > 0"
    assert _flag_names("--beta-deg must be small", params) == "--beta-deg must be small"


def test_teacher_errors_name_the_flags(tmp_path, capsys):
    code, _, err = cli(["teacher", "synthetic", "--d-in", 0, "--r", 2, "--out",
                        tmp_path / "t.h5"], capsys)
    assert "--d-in must be a positive integer" in bad_input_line(code, err)


def test_info_reads_a_job_file_from_make_job(teacher, tmp_path, capsys):
    pairs = tmp_path / "p.h5"
    assert cli(["query", "--teacher", teacher, "--n", 50, "--out", pairs], capsys)[0] == 0
    job = tmp_path / "job.h5"
    assert cli(["make-job", "--data", pairs, "--hidden", 3, "--out", job], capsys)[0] == 0
    code, out, err = cli(["info", job], capsys)
    assert code == 0, err
    assert "job" in out and "2-3-1" in out and "50 pairs" in out and "optimizer" in out


def test_query_an_onnx_model_and_info_names_an_exported_g(teacher, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "t.onnx"
    assert cli(["export", teacher, "--onnx", model], capsys)[0] == 0
    pairs = tmp_path / "p.h5"
    code, out, err = cli(["query", "--teacher", model, "--n", 40, "--seed", 3,
                          "--out", pairs], capsys)
    assert code == 0, err
    got = networks.read_pairs(pairs)
    net = networks.read_network(teacher)
    np.testing.assert_allclose(got.y, net.forward(got.x), rtol=1e-12, atol=1e-12)
    code, out, _ = cli(["info", model], capsys)
    row = next(line for line in out.splitlines() if line.strip().startswith("activation"))
    assert " g (" in row and "unknown" not in row


def test_resume_of_a_missing_sweep_folder_is_bad_input(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, _, err = cli(["synthetic-sweep", "--resume", "--out", missing], capsys)
    assert "--resume" in bad_input_line(code, err)
    assert not missing.exists()


def test_files_get_the_mode_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = networks.write_network(tmp_path / "t.h5", teachers.synthetic_teacher(
            teachers.TeacherConfig(2, (2,), "g"), 0))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        os.umask(0o077)
        with networks.atomic_path(tmp_path / "r.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o600
    finally:
        os.umask(old)


def test_cli_output_under_umask_022_is_0644(tmp_path):
    old = os.umask(0o022)
    try:
        res = run("teacher", "synthetic", "--d-in", 2, "--r", 2, "--out", tmp_path / "t.h5")
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "t.h5").st_mode) == 0o644


def _recovery_with(status_name, network):
    from ecflow.recover import RecoverStatus

    def fake(real):
        def wrapped(*args, **kwargs):
            rec = real(*args, **kwargs)
            return dataclasses.replace(rec, status=RecoverStatus[status_name],
                                       network=network(rec))
        return wrapped
    return fake


# an inexact network is written and exits 0: its report says INEXACT (a trained classifier
# recovered to a logit RMSE of 1e-7 is a result, judged against a float64 tolerance of 1e-10)
@pytest.mark.parametrize("status, keep, code", [("NO_CLUSTERS", False, 3),
                                                ("INEXACT", True, 0),
                                                ("RECOVERED", True, 0)])
def test_recover_exit_code_says_whether_a_network_was_recovered(
        status, keep, code, tmp_path, capsys, monkeypatch):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (1,), "tanh"), 4)
    x = teachers.sample_inputs(300, 2, 0)
    pairs = networks.write_pairs(tmp_path / "pairs.h5", x, net.forward(x))
    wrap = _recovery_with(status, lambda rec: rec.network if keep else None)
    monkeypatch.setattr(recover_cmd, "recover", wrap(recover_cmd.recover))
    out = tmp_path / "rec.h5"
    got, stdout, err = cli(["recover", "--data", pairs, "--hidden", 3, "--activation", "tanh",
                            "--students", 2, "--max-seconds", 5, "--workers", 1, "--out", out],
                           capsys)
    assert got == code, err
    assert out.exists() == keep
    assert "Traceback" not in err
    assert err.count("ecflow: error:") == (code == 3)
    assert ("INEXACT" in stdout) == (status == "INEXACT")


def test_sweep_status_and_the_re_clustering_of_a_sweep_unit(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, _ = cli(["synthetic-sweep", "--out", out, "--d-in", "2", "--r", "2", "--rho", "4",
                      "--students", "2", "--n-queries", "300", "--n-fresh", "100",
                      "--max-steps", "30", "--workers", "1", "--no-figures"], capsys)
    assert code == 0
    code, text, _ = cli(["synthetic-sweep", "--status", out, "--workers", "2"], capsys)
    assert code == 0 and "rho 4: 1 of 1 recoveries done" in text and "no run is active" in text
    code, text, err = cli(["cluster", "--sweep", out, "--unit", "d2_r2_t0_rho4",
                           "--out", tmp_path / "rec.h5"], capsys)
    assert code in (0, 3) and "d2_r2_t0_rho4 in the sweep's record" in text
    record = json.loads((out / "recoveries" / "d2_r2_t0_rho4.json").read_text())
    assert (tmp_path / "rec.h5").exists() == (record["recovered_size"] > 0)
    code, _, err = cli(["cluster", "--sweep", out, "--unit", "d9_r2_t0_rho4",
                        "--out", tmp_path / "x.h5"], capsys)
    assert "--unit" in bad_input_line(code, err)
    code, _, err = cli(["synthetic-sweep", "--status", tmp_path], capsys)
    assert "--status" in bad_input_line(code, err)
