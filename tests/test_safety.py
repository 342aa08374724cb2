"""Untrusted model files, shared folders and destinations: ecflow refuses with one line (exit 2)
and never reads a file outside the model, writes through a planted link or loses a file."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from ecflow import interop, networks, safety
from ecflow.cli import main
from ecflow.errors import InputError

SECRET = b"ECFLOW-SECRET-" + b"x" * 200


def cli(capsys, *args):
    """Run ``ecflow ARGS`` in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def assert_one_line(rc, err, *, code=2, contains=""):
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ecflow: error: ")
    assert "Traceback" not in err
    assert contains in lines[0]


@pytest.fixture
def teacher(tmp_path):
    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    path = tmp_path / "teacher.h5"
    networks.write_network(path, net)
    return path


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


def _mutate(src, dst, change):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        change(f)
    return dst


def _replace_weight(f, **kwargs):
    del f["layers/0/weight"]
    f["layers/0"].create_dataset("weight", **kwargs)


# --- HDF5 ----------------------------------------------------------------------------------------


def test_external_storage_is_refused_and_never_exported(tmp_path, teacher, secret, capsys):
    bad = _mutate(teacher, tmp_path / "ext.h5", lambda f: _replace_weight(
        f, shape=(4, 3), dtype="f8", external=[(str(secret), 0, 96)]))
    with pytest.raises(InputError, match="external file"):
        networks.read_network(bad)
    rc, _, err = cli(capsys, "export", bad, "--onnx", tmp_path / "out.onnx")
    assert_one_line(rc, err, contains="/layers/0/weight")
    assert not (tmp_path / "out.onnx").exists()


def test_external_and_soft_links_are_refused(tmp_path, teacher, capsys):
    def external(f):
        del f["layers/0/weight"]
        f["layers/0/weight"] = h5py.ExternalLink(str(teacher), "/layers/0/weight")

    def soft(f):
        f["layers/0/w0"] = f["layers/0/weight"][()]
        del f["layers/0/weight"]
        f["layers/0/weight"] = h5py.SoftLink("/layers/0/w0")

    for name, change in (("elink.h5", external), ("soft.h5", soft)):
        bad = _mutate(teacher, tmp_path / name, change)
        rc, _, err = cli(capsys, "info", bad)
        assert_one_line(rc, err, contains="link")


def test_virtual_dataset_is_refused(tmp_path, teacher):
    def virtual(f):
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="f8")
        layout[:] = h5py.VirtualSource(str(teacher), "layers/0/weight", shape=(4, 3))
        del f["layers/0/weight"]
        f["layers/0"].create_virtual_dataset("weight", layout)

    bad = _mutate(teacher, tmp_path / "vds.h5", virtual)
    with pytest.raises(InputError, match="virtual dataset"):
        networks.read_network(bad)


@pytest.mark.parametrize("shape", [(4, 10**8), (10**9, 10**9)])
def test_declared_shapes_are_bounded_before_reading(tmp_path, teacher, shape, capsys):
    # gzip of zeros: a few kB on disk, GBs once read
    bad = _mutate(teacher, tmp_path / "bomb.h5", lambda f: _replace_weight(
        f, shape=shape, dtype="f8", compression="gzip", chunks=(1, 1000), fillvalue=0.0))
    assert bad.stat().st_size < 1 << 20
    rc, _, err = cli(capsys, "info", bad)
    assert_one_line(rc, err, contains="GiB")


def test_array_bound_follows_the_environment(monkeypatch):
    monkeypatch.setenv("ECFLOW_MAX_ARRAY_BYTES", "800")
    safety.check_array_bytes((10, 10), "x")
    with pytest.raises(InputError, match="x: shape"):
        safety.check_array_bytes((10, 11), "x")
    monkeypatch.setenv("ECFLOW_MAX_ARRAY_BYTES", "lots")
    with pytest.raises(InputError, match="ECFLOW_MAX_ARRAY_BYTES"):
        safety.max_array_bytes()


@pytest.mark.parametrize("case", ["format-array", "layers-dataset", "arabic-digit", "superscript",
                                  "version-array", "activation-array"])
def test_odd_schemas_are_one_line(tmp_path, teacher, case, capsys):
    def change(f):
        if case == "format-array":
            f.attrs["ecflow_format"] = np.arange(3)
        elif case == "version-array":
            f.attrs["version"] = np.arange(3)
        elif case == "layers-dataset":
            del f["layers"]
            f["layers"] = np.zeros(3)
        elif case == "arabic-digit":
            f.move("layers/1", "layers/\u0661")
        elif case == "superscript":
            f.move("layers/1", "layers/\u00b2")
        elif case == "activation-array":
            f["layers/0"].attrs["activation"] = np.zeros(2)

    bad = _mutate(teacher, tmp_path / f"{case}.h5", change)
    rc, _, err = cli(capsys, "info", bad)
    assert_one_line(rc, err, contains=str(bad.name))


def test_huge_attribute_is_refused(tmp_path, teacher, capsys):
    bad = tmp_path / "attr.h5"
    with h5py.File(teacher, "r") as src, h5py.File(bad, "w", libver="latest") as f:
        for k, v in src.attrs.items():
            f.attrs[k] = v
        src.copy("layers", f)
        f.attrs["big"] = np.zeros(300_000)  # dense attribute storage: 2.4 MB
    rc, _, err = cli(capsys, "info", bad)
    assert_one_line(rc, err, contains="larger than 1 MiB")


def test_markup_and_escapes_from_files_are_printed_as_text(tmp_path, capsys):
    net = networks.glorot_normal((2, 3, 1), ["tanh", "identity"], 0)
    path = tmp_path / "t.h5"
    networks.write_network(path, net, attrs={"note": "[/] \x1b[2J\x1b]0;title\x07 [bold]x"})
    rc, out, err = cli(capsys, "info", path)
    assert rc == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "[/]" in out and "[bold]x" in out


def test_error_lines_carry_no_control_characters(tmp_path, teacher, capsys):
    bad = _mutate(teacher, tmp_path / "act.h5",
                  lambda f: f["layers/0"].attrs.__setitem__("activation", "x\x1b[31m"))
    rc, _, err = cli(capsys, "info", bad)
    assert_one_line(rc, err)
    assert "\x1b" not in err


# --- ONNX ----------------------------------------------------------------------------------------


def _external_model(tmp_path, location, length=96):
    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    model = interop.network_to_onnx(net)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("double_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, path)
    return path


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, secret, capsys):
    (tmp_path / "model").mkdir()
    os.symlink(secret, tmp_path / "model" / "link.bin")
    os.link(secret, tmp_path / "model" / "hard.bin")
    for location in ("../secret.bin", str(secret), "link.bin", "hard.bin", "missing.bin"):
        path = _external_model(tmp_path, location)
        for command in (("info", path), ("import", path, "--out", tmp_path / "o.h5")):
            rc, out, err = cli(capsys, *command)
            assert_one_line(rc, err, contains="m.onnx")
            assert "SECRET" not in out + err
        assert not (tmp_path / "o.h5").exists()


def test_onnx_external_data_inside_the_folder_is_read(tmp_path):
    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(net.layers[0].weight.astype("<f8").tobytes())
    back = interop.read_onnx_network(_external_model(tmp_path, "w.bin"))
    np.testing.assert_array_equal(back.layers[0].weight, net.layers[0].weight)
    with pytest.raises(InputError, match="past its end"):
        interop.load_onnx(_external_model(tmp_path, "w.bin", length=200))


def test_onnx_negative_dimension_is_one_line(tmp_path, capsys):
    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    model = interop.network_to_onnx(net)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -3
    path = tmp_path / "neg.onnx"
    onnx.save(model, path)
    rc, _, err = cli(capsys, "info", path)
    assert_one_line(rc, err, contains="negative dimension")


def test_onnx_huge_input_dimension_is_refused_before_querying(tmp_path):
    from ecflow import blackbox

    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    model = interop.network_to_onnx(net)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 10**12
    path = tmp_path / "wide.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match="GiB"):
        blackbox.from_onnx(path)


def test_old_onnx_is_refused(monkeypatch):
    monkeypatch.setattr(onnx, "__version__", "1.20.1")
    with pytest.raises(InputError, match="onnx >= 1.21"):
        interop._onnx()


# --- destinations and options --------------------------------------------------------------------


def test_out_equal_to_an_input_or_to_another_output_is_refused_before_work(tmp_path, teacher,
                                                                           capsys):
    before = teacher.read_bytes()
    rc, _, err = cli(capsys, "recover", "--teacher", teacher, "--hidden", "4", "--out", teacher)
    assert_one_line(rc, err, contains="--out")
    rc, _, err = cli(capsys, "recover", "--teacher", teacher, "--hidden", "4",
                     "--out", tmp_path / "x.h5", "--report", tmp_path / "sub" / ".." / "x.h5")
    assert_one_line(rc, err, contains="--report")
    os.symlink(teacher, tmp_path / "alias.h5")
    rc, _, err = cli(capsys, "query", "--teacher", teacher, "--n", "10",
                     "--out", tmp_path / "alias.h5")
    assert_one_line(rc, err, contains="same file")
    rc, _, err = cli(capsys, "export", teacher, "--onnx", tmp_path / "t.onnx")
    assert rc == 0
    rc, _, err = cli(capsys, "import", tmp_path / "t.onnx", "--out", tmp_path / "t.onnx")
    assert_one_line(rc, err, contains="--out")
    assert teacher.read_bytes() == before


def test_a_read_only_destination_is_found_before_work(tmp_path, teacher, capsys, monkeypatch):
    import errno
    import tempfile

    real = tempfile.mkstemp
    locked = tmp_path / "ro"
    locked.mkdir()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, locked):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(safety.tempfile, "mkstemp", mkstemp)
    for extra in (["--out", locked / "o.h5"],
                  ["--out", tmp_path / "o.h5", "--plots", locked / "plots"],
                  ["--out", tmp_path / "o.h5", "--work-dir", locked / "W"]):
        rc, _, err = cli(capsys, "recover", "--teacher", teacher, "--hidden", "4", *extra)
        assert_one_line(rc, err, contains="Read-only")
    assert not list(locked.iterdir())


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, teacher, capsys, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(safety.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    rc, _, err = cli(capsys, "query", "--teacher", teacher, "--n", "100",
                     "--out", tmp_path / "q.h5")
    assert_one_line(rc, err, contains="disk space")
    assert not (tmp_path / "q.h5").exists()
    # a write that still fails for want of space (the HDF5 library's own error) is one line too
    monkeypatch.undo()

    real_file = networks._h5py().File

    def full(path, mode="r", **kwargs):
        if mode == "r":
            return real_file(path, mode, **kwargs)
        raise OSError(28, "Can't write data (file write failed: errno = 28, error message = "
                      "'No space left on device')")

    monkeypatch.setattr(networks._h5py(), "File", full)
    rc, _, err = cli(capsys, "query", "--teacher", teacher, "--n", "100",
                     "--out", tmp_path / "q.h5")
    monkeypatch.undo()
    assert_one_line(rc, err, contains="disk full")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q.h5")]


@pytest.mark.parametrize("args, word", [
    (["recover", "--rho", "1e308"], "--rho"),
    (["recover", "--hidden", "99999999999"], "--hidden"),
    (["recover", "--hidden", "4", "--n-queries", "100000000000"], "--n-queries"),
    (["recover", "--hidden", "4", "--scheduler", "notaurl"], "--scheduler"),
    (["recover", "--hidden", "4", "--workers", "100000000"], "--workers"),
    (["recover", "--hidden", "4", "--students", "1000000000000"], "--students"),
    (["query", "--n", "100000000000"], "--n"),
])
def test_options_that_size_arrays_are_range_checked(tmp_path, teacher, capsys, args, word):
    rc, _, err = cli(capsys, *args, "--teacher", teacher, "--out", tmp_path / "o.h5")
    assert_one_line(rc, err, contains=word)
    assert not (tmp_path / "o.h5").exists()


def test_synthetic_teacher_sizes_are_range_checked(tmp_path, capsys):
    rc, _, err = cli(capsys, "teacher", "synthetic", "--d-in", "100000", "--r", "3",
                     "--out", tmp_path / "t.h5")
    assert_one_line(rc, err, contains="--d-in 100000")
    rc, _, err = cli(capsys, "teacher", "synthetic", "--d-in", "3", "--hidden", "4,99999999999",
                     "--out", tmp_path / "t.h5")
    assert_one_line(rc, err, contains="99999999999")


def test_symlinks_planted_in_output_folders_are_refused(tmp_path, teacher, capsys):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep")
    for option in ("--plots", "--work-dir"):
        folder = tmp_path / option.strip("-")
        folder.mkdir()
        os.symlink(victim, folder / "dendrogram.png")
        rc, _, err = cli(capsys, "recover", "--teacher", teacher, "--hidden", "4",
                         "--out", tmp_path / "o.h5", option, folder)
        assert_one_line(rc, err, contains="symbolic links")
    assert victim.read_bytes() == b"keep"


def test_onnx_external_data_of_a_constant_node_is_checked_too(tmp_path, secret):
    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    model = interop.network_to_onnx(net)
    value = onnx.helper.make_tensor("c", TensorProto.DOUBLE, [12], np.zeros(12))
    value.ClearField("double_data")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", str(secret)
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["unused"], value=value))
    path = tmp_path / "const.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match="outside the model's folder"):
        interop.load_onnx(path)


def test_a_query_npy_declaring_a_huge_shape_is_refused(tmp_path, teacher, capsys):
    from numpy.lib import format as npy_format

    path = tmp_path / "q.npy"
    with open(path, "wb") as fh:  # a header only: 10^6 x 10^6 float64 declared, no data
        npy_format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    rc, _, err = cli(capsys, "recover", "--teacher", teacher, "--hidden", "4",
                     "--queries", path, "--out", tmp_path / "o.h5")
    assert_one_line(rc, err, contains="q.npy")
