"""Seeded fuzzing of the files ecflow reads: network, pairs, job and ONNX files are mutated
(bytes, attributes, shapes, links, storage) and fed to the commands that read them. Every run
must end with exit 0 and a valid output, or exit 2 and one ``ecflow: error:`` line; never a
traceback, a partial output or a crash.

Byte mutations of HDF5 files hit the data regions and the end of the file (truncation):
measured, a byte flipped in the global heap of a variable-length string attribute makes the
HDF5 C library loop forever inside ``H5Aread``, which no Python-level check can stop, so
metadata is mutated through h5py instead (which writes well-formed HDF5 with hostile content).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest

from ecflow import interop, networks
from ecflow.cli import main
from ecflow.engines.base import TrainConfig
from ecflow.engines.jobs import write_job_file

SEED = 20240721
N_HDF5 = 40
"""Mutations per HDF5 kind (network, pairs, job) and per mutation family; ONNX gets as many."""

HOSTILE_TEXT = ["[/]", "[bold red]x", "\x1b[2J\x1b]0;t\x07", "layer\x00", "١", "²", "",
                "x" * 5000, "../../etc/passwd"]


def _run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _check(code, out, err, case, written=None):
    assert "Traceback" not in err, f"{case}: {err}"
    if code == 0:
        if written is not None:
            assert written.is_file(), case
        return
    assert code == 2, f"{case}: exit {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error: "), f"{case}: {err!r}"
    if written is not None:
        assert not written.exists(), f"{case}: partial output left"


# --- valid files ---------------------------------------------------------------------------------


def _valid_files(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(SEED)
    net = networks.glorot_normal((3, 4, 1), ["tanh", "identity"], 0)
    x = rng.uniform(-1, 1, (20, 3))
    files = {
        "network": networks.write_network(folder / "net.h5", net, x=x, y=net(x),
                                          attrs={"note": "teacher", "seed": 3}),
        "pairs": networks.write_pairs(folder / "pairs.h5", x, net(x), attrs={"seed": 1}),
        "job": write_job_file(folder / "job.h5", x, net(x),
                              networks.glorot_normal((3, 2, 1), ["tanh", "identity"], 1),
                              TrainConfig(max_seconds=0.3, max_steps=5)),
    }
    files["onnx"] = interop.write_onnx(folder / "net.onnx", net)
    return files


def _commands(kind: str, path: Path, out: Path) -> list[tuple[tuple, Path | None]]:
    if kind == "network":
        return [(("info", path), None),
                (("query", "--teacher", path, "--n", 7, "--out", out), out)]
    if kind == "pairs":
        return [(("info", path), None),
                (("make-job", "--data", path, "--hidden", 2, "--out", out), out)]
    if kind == "job":
        return [(("train-job", path, "--out", out), out)]
    return [(("info", path), None), (("import", path, "--out", out), out)]


# --- HDF5 mutations ------------------------------------------------------------------------------


def _data_spans(path: Path) -> list[tuple[int, int]]:
    spans = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
            spans.append((obj.id.get_offset(), obj.id.get_storage_size()))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return spans


def _mutate_bytes(src: Path, dst: Path, rng) -> str:
    data = bytearray(src.read_bytes())
    if rng.random() < 0.4:
        n = int(rng.integers(0, len(data)))
        dst.write_bytes(bytes(data[:n]))
        return f"truncated to {n}"
    spans = _data_spans(src)
    off, size = spans[int(rng.integers(len(spans)))]
    for _ in range(int(rng.integers(1, 5))):
        i = off + int(rng.integers(size))
        data[i] = int(rng.integers(256))
    dst.write_bytes(bytes(data))
    return f"data bytes flipped at {off}"


def _random_value(rng):
    choices = [
        lambda: str(rng.choice(HOSTILE_TEXT)),
        lambda: np.arange(int(rng.integers(0, 5))),
        lambda: float(rng.choice([np.nan, np.inf, -1.0, 1e308, 0.5])),
        lambda: int(rng.choice([-1, 0, 2, 2**62])),
        lambda: np.array([b"a", b"b"]),
        lambda: np.zeros((2, 2)),
        lambda: True,
    ]
    return choices[int(rng.integers(len(choices)))]()


def _datasets(f) -> list[str]:
    names = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _groups(f) -> list[str]:
    names = ["/"]
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) else None)
    return names


def _mutate_structure(f, rng, secret: Path, other: Path) -> str:
    datasets, groups = _datasets(f), _groups(f)
    op = int(rng.integers(9))
    if op == 0:  # an attribute set to a hostile value
        g = f[groups[int(rng.integers(len(groups)))]]
        keys = list(g.attrs.keys()) or ["activation"]
        key = keys[int(rng.integers(len(keys)))]
        g.attrs[key] = _random_value(rng)
        return f"attr {g.name}:{key}"
    name = datasets[int(rng.integers(len(datasets)))]
    parent, leaf = f[name].parent, name.rsplit("/", 1)[-1]
    if op == 1:  # another shape, dtype or compression
        shape = tuple(int(d) for d in rng.choice([0, 1, 2, 3, 4, 10**5, 10**9],
                                                size=int(rng.integers(0, 4))))
        dtype = rng.choice(["f8", "f4", "f2", "i8", "u1", "S4", "c16"])
        del f[name]
        kwargs = dict(shape=shape, dtype=dtype)
        if shape and all(shape) and np.prod(shape, dtype=float) > 1e4:
            kwargs.update(compression="gzip", chunks=tuple(min(d, 64) for d in shape))
        parent.create_dataset(leaf, **kwargs)
        return f"{name} as {dtype}{shape}"
    if op == 2:
        del f[name]
        return f"{name} deleted"
    if op == 3:
        f.move(name, f"{parent.name.rstrip('/')}/{rng.choice(HOSTILE_TEXT[:6]) or 'x'}")
        return f"{name} renamed"
    if op == 4:
        values = f[name][()]
        del f[name]
        parent.create_dataset(leaf, data=np.where(rng.random(np.shape(values)) < 0.5,
                                                  np.nan, values) if np.ndim(values) else values)
        return f"{name} with NaN"
    if op == 5:
        del f[name]
        parent[leaf] = h5py.ExternalLink(str(other), "/layers/0/weight")
        return f"{name} as an external link"
    if op == 6:
        shape = f[name].shape or (1,)
        del f[name]
        parent.create_dataset(leaf, shape=shape, dtype="f8",
                              external=[(str(secret), 0, int(np.prod(shape)) * 8)])
        return f"{name} in external storage"
    if op == 7:
        shape = f[name].shape or (1,)
        layout = h5py.VirtualLayout(shape=shape, dtype="f8")
        layout[...] = h5py.VirtualSource(str(other), "/layers/0/weight", shape=shape)
        del f[name]
        parent.create_virtual_dataset(leaf, layout)
        return f"{name} virtual"
    del f[name]
    parent[leaf] = np.zeros(3)
    g = f.create_group(f"extra{int(rng.integers(1000))}")
    g.attrs["activation"] = "tanh"
    return f"{name} replaced, extra group"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    secret = folder / "secret.bin"
    secret.write_bytes(b"SECRET!!" * 4096)
    return folder, _valid_files(folder), secret


@pytest.mark.parametrize("kind", ["network", "pairs", "job"])
def test_mutated_hdf5_files_are_one_line_or_valid(corpus, kind, monkeypatch):
    folder, files, secret = corpus
    monkeypatch.setenv("ECFLOW_MAX_ARRAY_BYTES", str(64 << 20))
    rng = np.random.default_rng([SEED, ["network", "pairs", "job"].index(kind)])
    src = files[kind]
    for k in range(2 * N_HDF5):
        case = folder / f"{kind}-{k}.h5"
        if k % 2:
            what = _mutate_bytes(src, case, rng)
        else:
            case.write_bytes(src.read_bytes())
            with h5py.File(case, "r+") as f:
                what = _mutate_structure(f, rng, secret, files["network"])
        for args, written in _commands(kind, case, folder / f"out-{kind}-{k}.h5"):
            code, out, err = _run(*args)
            _check(code, out, err, f"{kind} {k} ({what}): {args[0]}", written)
            assert "SECRET" not in out + err
            if written is not None and written.exists():
                assert b"SECRET" not in written.read_bytes()
                written.unlink()


# --- ONNX mutations ------------------------------------------------------------------------------


def _mutate_onnx(src: Path, dst: Path, rng, secret: Path) -> str:
    op = int(rng.integers(6))
    if op == 0:
        data = bytearray(src.read_bytes())
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        dst.write_bytes(bytes(data))
        return "bytes flipped"
    if op == 1:
        data = src.read_bytes()
        dst.write_bytes(data[: int(rng.integers(len(data)))])
        return "truncated"
    model = onnx.load(str(src))
    g = model.graph
    if op == 2:  # declared dimensions
        vi = [*g.input, *g.output][int(rng.integers(len(g.input) + len(g.output)))]
        dim = vi.type.tensor_type.shape.dim[int(rng.integers(2))]
        dim.dim_value = int(rng.choice([-5, 0, 1, 10**12, 7]))
        what = f"dim of {vi.name} = {dim.dim_value}"
    elif op == 3:  # names and op types
        node = g.node[int(rng.integers(len(g.node)))]
        node.op_type = str(rng.choice(["Tanh", "Relu", "Foo", "Gemm", "Softmax", "[/]"]))
        g.output[0].name = str(rng.choice(HOSTILE_TEXT[:4] + ["output"]))
        what = f"node {node.op_type}, output {g.output[0].name!r}"
    elif op == 4:  # initializer shape and data
        t = g.initializer[int(rng.integers(len(g.initializer)))]
        t.dims[:] = [int(d) for d in rng.choice([0, 1, 3, 4, 10**6], size=int(rng.integers(1, 3)))]
        what = f"initializer {t.name} dims {list(t.dims)}"
    else:  # external data pointing somewhere
        t = g.initializer[int(rng.integers(len(g.initializer)))]
        t.ClearField("raw_data")
        t.ClearField("double_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        location = str(rng.choice([str(secret), "../secret.bin", "missing.bin", "w.bin"]))
        for key, value in (("location", location), ("offset", "0"), ("length", "96")):
            e = t.external_data.add()
            e.key, e.value = key, value
        what = f"external data in {location}"
    dst.write_bytes(model.SerializeToString())
    return what


def test_mutated_onnx_files_are_one_line_or_valid(corpus):
    folder, files, secret = corpus
    rng = np.random.default_rng([SEED, 3])
    onnx_dir = folder / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    (onnx_dir / "w.bin").write_bytes(np.zeros(12).tobytes())
    for k in range(2 * N_HDF5):
        case = onnx_dir / f"m{k}.onnx"
        what = _mutate_onnx(files["onnx"], case, rng, secret)
        for args, written in _commands("onnx", case, folder / f"out-onnx-{k}.h5"):
            code, out, err = _run(*args)
            _check(code, out, err, f"onnx {k} ({what}): {args[0]}", written)
            assert "SECRET" not in out + err
            if written is not None and written.exists():
                assert b"SECRET" not in written.read_bytes()
                written.unlink()


def test_the_fuzz_corpus_starts_from_valid_files(corpus):
    folder, files, _ = corpus
    for kind, path in files.items():
        for args, written in _commands(kind, path, folder / f"valid-{kind}.h5"):
            code, out, err = _run(*args)
            assert code == 0, f"{kind} {args[0]}: {err}"
            if written is not None:
                assert written.is_file()
                os.unlink(written)
