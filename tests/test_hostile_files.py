"""Hostile files at the door: FIFOs, devices, sockets and directories where a model, a
certificate, a manifest or a results database is expected; files that never end, YAML that
explodes, JSON of the wrong shape, foreign SQLite files, globs over huge trees, and paths with
spaces and non-ASCII letters.

Every case must end fast as a domain error (its exit code, one message line naming the file
and the field), never a traceback or a hang; nothing may be written where it was not asked
for, and a refused database must stay byte-identical. A hang fails the test: each test runs
under an alarm (a blocking ``open`` is interrupted) and a watchdog that ends the process; the
FIFO and /dev/zero cases also run once through the real command line in a subprocess with a
60 s timeout.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import SAMPLE_MODELS
from lipverify_cli.main import main

import lipverify
from lipverify.batch import ResultsStore, ResultsStoreError, load_manifest, manifest_from_paths
from lipverify.batch import manifest as manifest_mod
from lipverify.certify import files as cert_files
from lipverify.errors import LipverifyError, ModelLoadError, UsageError
from lipverify.runtime import files as rfiles

SAMPLE = SAMPLE_MODELS / "digits_mlp_relu.onnx"
ODD = "dir with spaces é ü/my módel ü ñ.onnx"  # spaces and non-ASCII letters
TEST_SECONDS = 30  # a test slower than this fails (the alarm), a stuck one ends the process


# ----------------------------------------------------------------------------- guards
@pytest.fixture(autouse=True)
def no_hang():
    """Alarm after TEST_SECONDS (interrupts a blocking open of a FIFO), a watchdog that ends
    the process after twice that (a read loop the alarm cannot interrupt), and a check that
    the test was fast."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"hung for more than {TEST_SECONDS} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_SECONDS)
    faulthandler.dump_traceback_later(2 * TEST_SECONDS, exit=True)
    start = time.monotonic()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < TEST_SECONDS


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """tmp_path as the working folder, so a stray relative file would show up in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(folder: Path) -> dict[Path, str]:
    """Every path under ``folder`` with the sha256 of the regular files' bytes."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[p] = "-"
    return out


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lower().startswith("error:")]


def assert_clean_failure(res, code: int, *texts: str) -> None:
    """Exit ``code``, exactly one error line holding every text, no traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = error_lines(res.output)
    assert len(lines) == 1, res.output
    for text in texts:
        assert text in lines[0], res.output


def assert_one_line(message: str, *texts: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    for text in texts:
        assert text in message, message


def make(kind: str, path: Path) -> Path:
    """A non-regular file (or a trap) of ``kind`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "devnull":
        path.symlink_to("/dev/null")
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        if len(os.fsencode(path)) > 100:
            pytest.skip("path too long for a unix socket")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    elif kind == "fifo-link":
        os.mkfifo(path.with_name(path.name + ".target"))
        path.symlink_to(path.name + ".target")
    else:
        raise AssertionError(kind)
    return path


#: kind -> the words the refusal must hold
KINDS = {
    "fifo": "named pipe (FIFO)",
    "fifo-link": "named pipe (FIFO)",
    "devzero": "character device",
    "devnull": "character device",
    "socket": "a socket",
    "directory": "directory",
}


# ------------------------------------------------------------------ the helper module
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call", ["check_regular", "read_regular", "read_regular_text"])
def test_non_regular_files_are_refused_by_the_helper(work, kind, call):
    path = make(kind, work / "thing.bin")
    before = snapshot(work)
    fn = getattr(rfiles, call)
    kwargs = {} if call == "check_regular" else {"max_bytes": 1 << 20}
    with pytest.raises(ModelLoadError) as info:
        fn(path, what="model file", **kwargs)
    assert info.value.exit_code == 3
    assert_one_line(str(info.value), str(path), KINDS[kind])
    assert snapshot(work) == before


@pytest.mark.parametrize("size, ok", [(0, True), (9, True), (10, True), (11, False),
                                      (10_000, False)])
def test_the_size_cap_is_exact(work, size, ok):
    path = work / "f.bin"
    path.write_bytes(b"x" * size)
    if ok:
        assert rfiles.read_regular(path, max_bytes=10) == b"x" * size
        assert rfiles.check_regular(path, max_bytes=10) == path
    else:
        with pytest.raises(ModelLoadError, match="over the 10 bytes limit"):
            rfiles.read_regular(path, max_bytes=10)
        with pytest.raises(ModelLoadError, match="over the 10 bytes limit"):
            rfiles.check_regular(path, max_bytes=10)


def test_a_file_growing_past_the_cap_while_read_is_refused(work, monkeypatch):
    """The cap holds even when fstat said the file was small (it grew after the check)."""
    path = work / "f.bin"
    path.write_bytes(b"x" * 50)

    def small(st):
        return os.stat_result((*st[:6], 1, *st[7:10]))

    class GrowingOs:  # os, except that stat and fstat see a 1-byte file
        def __getattr__(self, name):
            return getattr(os, name)

        stat = staticmethod(lambda p: small(os.stat(p)))
        fstat = staticmethod(lambda fd: small(os.fstat(fd)))

    monkeypatch.setattr(rfiles, "os", GrowingOs())
    with pytest.raises(ModelLoadError, match="grew while being read"):
        rfiles.read_regular(path, max_bytes=10)


@pytest.mark.parametrize("path, text", [
    (42, "expected a file path, got int"),
    (None, "expected a file path, got NoneType"),
    ("", "an empty path"),
    ("a\0b.json", "NUL"),
    ("missing.json", "no such file"),
])
def test_bad_paths_are_one_line_errors(work, path, text):
    with pytest.raises(ModelLoadError) as info:
        rfiles.read_regular(path, max_bytes=10)
    assert_one_line(str(info.value), text)


def test_a_newline_in_a_file_name_keeps_the_message_on_one_line(work):
    path = make("fifo", work / "evil\nname.onnx")
    with pytest.raises(ModelLoadError) as info:
        rfiles.check_regular(path, "model file")
    assert_one_line(str(info.value), "evil\\nname.onnx", "named pipe")


def test_text_must_be_utf8(work):
    path = work / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfhello \xc3\xa9")
    assert rfiles.read_regular_text(path, max_bytes=100) == "hello é"  # BOM dropped
    path.write_bytes(b"ok\xff\xfe")
    with pytest.raises(UsageError) as info:
        rfiles.read_regular_text(path, what="manifest file", max_bytes=100, error=UsageError)
    assert_one_line(str(info.value), str(path), "not UTF-8", "byte 2")


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("kind", KINDS)
def test_model_of_every_kind_api(work, kind):
    path = make(kind, work / "model.onnx")
    before = snapshot(work)
    with pytest.raises(ModelLoadError) as info:
        lipverify.load(path)
    assert_one_line(str(info.value), "model.onnx", KINDS[kind])
    assert snapshot(work) == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["info", "bound", "check"])
def test_model_of_every_kind_cli(work, kind, command):
    path = make(kind, work / "model.onnx")
    cert = work / "c.json"
    cert.write_text("{}")
    before = snapshot(work)
    args = {"info": ["info", path], "bound": ["bound", path, "-m", "naive", "--no-lower"],
            "check": ["check", path, cert]}[command]
    assert_clean_failure(run(*args), 3, "model.onnx", KINDS[kind])
    assert snapshot(work) == before


def test_model_over_the_size_cap(work, monkeypatch):
    import lipverify.importers as importers

    path = work / "big.onnx"
    shutil.copy(SAMPLE, path)
    monkeypatch.setattr(importers, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(ModelLoadError, match="over the 1000 bytes limit"):
        lipverify.load(path)
    assert_clean_failure(run("info", path), 3, "big.onnx", "over the 1000 bytes limit")


def test_model_cap_is_generous_by_default():
    import lipverify.importers as importers

    assert importers.MAX_MODEL_BYTES >= 4 * 2**30


# ----------------------------------------------------------------------- certificates
@pytest.fixture(scope="module")
def sample_net():
    return lipverify.load(SAMPLE)


@pytest.fixture(scope="module")
def good_cert(sample_net) -> dict:
    r = lipverify.bound(sample_net, method="ldlt-fast", lower_bound=False)
    cert = cert_files.certificate_dict(r)
    assert lipverify.check_certificate(sample_net, cert).valid
    return cert


def _set(path: str, value):
    """A mutation of the good certificate: set ``path`` (dotted) to ``value``."""
    def mutate(cert):
        *parents, last = path.split(".")
        node = cert
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return cert
    return mutate


def _drop(path: str):
    def mutate(cert):
        *parents, last = path.split(".")
        node = cert
        for p in parents:
            node = node[p]
        del node[last]
        return cert
    return mutate


def _linf(rows):
    def mutate(cert):
        cert["certificate"] = {"kind": "lipsdp-linf", "multipliers": "neuron", "rows": rows}
        return cert
    return mutate


def _deep(levels: int):
    def mutate(cert):
        value: list = []
        for _ in range(levels):
            value = [value]
        cert["extra"] = value
        return cert
    return mutate


#: id -> (raw JSON text, or a mutation of the good certificate; words the message holds)
BAD_CERTS = {
    "list": ("[]", "the top level is a JSON array"),
    "string": ('"lipverify"', "the top level is 'lipverify'"),
    "null": ("null", "the top level is null"),
    "int": ("42", "the top level is 42"),
    "bool": ("true", "the top level is true"),
    "empty-file": ("", "not a JSON certificate"),
    "truncated": ('{"format": "lipverify-certificate/1", "cert', "not a JSON certificate"),
    "deep-100000": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deep-object": ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
    "deep-20": (_deep(20), "nested more than 16 levels"),
    "huge-int": ('{"rho": ' + "9" * 5000 + "}", "not a JSON certificate"),
    "format-missing": (_drop("format"), "format: missing"),
    "format-int": (_set("format", 1), "format: 1"),
    "format-other": (_set("format", "lipverify-certificate/999"), "not a lipverify-certif"),
    "certificate-missing": (_drop("certificate"), "certificate: expected a JSON object, miss"),
    "certificate-list": (_set("certificate", [1, 2]), "certificate: expected a JSON object"),
    "certificate-string": (_set("certificate", "x"), "certificate: expected a JSON object"),
    "kind-missing": (_drop("certificate.kind"), "certificate.kind: expected a string"),
    "kind-list": (_set("certificate.kind", ["lipsdp-l2"]), "certificate.kind"),
    "kind-int": (_set("certificate.kind", 7), "certificate.kind"),
    "kind-unknown": (_set("certificate.kind", "zzz"), "unknown certificate kind 'zzz'"),
    "rho-string": (_set("certificate.rho", "1e3"), "certificate.rho: expected a finite"),
    "rho-negative": (_set("certificate.rho", -1.0), "certificate.rho"),
    "rho-nan": (_set("certificate.rho", float("nan")), "certificate.rho"),
    "rho-inf": (_set("certificate.rho", float("inf")), "certificate.rho"),
    "rho-bool": (_set("certificate.rho", True), "certificate.rho"),
    "rho-null": (_set("certificate.rho", None), "certificate.rho"),
    "rho-list": (_set("certificate.rho", [1.0]), "certificate.rho"),
    "rho-missing": (_drop("certificate.rho"), "certificate.rho: expected a finite number >= 0, "
                                              "missing"),
    "params-missing": (_drop("certificate.params"), "certificate.params"),
    "params-dict": (_set("certificate.params", {"a": 1}), "certificate.params"),
    "params-string": (_set("certificate.params", "1,2,3"), "certificate.params"),
    "params-nested": (_set("certificate.params", [[1.0, 2.0]]), "certificate.params[0]"),
    "params-str-item": (_set("certificate.params.3", "x"), "certificate.params[3]"),
    "params-null-item": (_set("certificate.params.0", None), "certificate.params[0]"),
    "params-nan-item": (_set("certificate.params.5", float("nan")), "certificate.params[5]"),
    "params-bool-item": (_set("certificate.params.1", False), "certificate.params[1]"),
    "params-short": (_set("certificate.params", [1.0]), "rejected"),
    "params-negative": (_set("certificate.params.0", -1.0), "rejected"),
    "params-empty": (_set("certificate.params", []), "rejected"),
    "sha-int": (_set("model_sha256", 5), "model_sha256"),
    "sha-other": (_set("model_sha256", "ab" * 32), "different model"),
    "rows-string": (_set("output_rows", "abc"), "output_rows"),
    "rows-negative": (_set("output_rows", [-1]), "output_rows"),
    "rows-empty": (_set("output_rows", []), "output_rows"),
    "rows-bool": (_set("output_rows", [True]), "output_rows"),
    "rows-out-of-range": (_set("output_rows", [99]), "out of range"),
    "multipliers-bogus": (_set("certificate.multipliers", "bogus"), "certificate.multipliers"),
    "multipliers-int": (_set("certificate.multipliers", 5), "certificate.multipliers"),
    "linf-rows-missing": (_linf(None), "certificate.rows"),
    "linf-rows-ints": (_linf([1, 2]), "certificate.rows[0]"),
    "linf-rows-empty": (_linf([]), "certificate.rows"),
    "linf-row-no-params": (_linf([{"rho": 1.0}]), "certificate.rows[0].params"),
    "linf-row-bad-rho": (_linf([{"rho": "x", "params": []}]), "certificate.rows[0].rho"),
    "linf-wrong-count": (_linf([{"rho": 1.0, "params": [1.0]}]), "one certificate per output"),
}


def _cert_text(good_cert: dict, case) -> str:
    raw = BAD_CERTS[case][0]
    if isinstance(raw, str):
        return raw
    return json.dumps(raw(json.loads(json.dumps(good_cert))))  # NaN and Infinity as JSON


@pytest.mark.parametrize("case", BAD_CERTS)
def test_malformed_certificate_file_api(work, sample_net, good_cert, case):
    path = work / "cert é ü.json"
    path.write_text(_cert_text(good_cert, case))
    before = snapshot(work)
    res = lipverify.check_certificate(sample_net, path)
    assert not res.valid
    assert_one_line(res.message, "cert é ü.json", BAD_CERTS[case][1])
    assert snapshot(work) == before


def _parses(raw) -> bool:
    """Raw JSON text that parses to an object (other values: the wrong-type test)."""
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


@pytest.mark.parametrize("case", [c for c, (raw, _) in BAD_CERTS.items()
                                  if not isinstance(raw, str) or _parses(raw)])
def test_malformed_certificate_dict_api(sample_net, good_cert, case):
    cert = json.loads(_cert_text(good_cert, case))
    res = lipverify.check_certificate(sample_net, cert)
    assert not res.valid
    assert_one_line(res.message, BAD_CERTS[case][1])


@pytest.mark.parametrize("case", BAD_CERTS)
def test_malformed_certificate_cli(work, good_cert, case):
    path = work / "cert é ü.json"
    path.write_text(_cert_text(good_cert, case))
    before = snapshot(work)
    res = run("check", SAMPLE, path)
    assert res.exit_code == 7, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert "cert é ü.json" in lines[0] and BAD_CERTS[case][1] in lines[0], res.output
    assert snapshot(work) == before


@pytest.mark.parametrize("cert", [42, None, [], [1, 2], 3.5, object(), {1, 2}],
                         ids=lambda v: type(v).__name__)
def test_check_certificate_never_raises_on_a_wrong_type(sample_net, cert):
    res = lipverify.check_certificate(sample_net, cert)
    assert not res.valid and res.bound == float("inf")
    assert_one_line(res.message, "certificate")


@pytest.mark.parametrize("kind", KINDS)
def test_certificate_of_every_kind_api(work, sample_net, kind):
    path = make(kind, work / "cert.json")
    before = snapshot(work)
    res = lipverify.check_certificate(sample_net, path)
    assert not res.valid
    assert_one_line(res.message, "cert.json", KINDS[kind])
    with pytest.raises(ModelLoadError, match="not a regular file"):
        cert_files.read_certificate(path)
    assert snapshot(work) == before


@pytest.mark.parametrize("kind", KINDS)
def test_certificate_of_every_kind_cli(work, kind):
    path = make(kind, work / "cert.json")
    before = snapshot(work)
    res = run("check", SAMPLE, path)
    assert "Traceback" not in res.output
    if kind == "directory":  # click's own check on the argument: a usage error
        assert res.exit_code == 2, res.output
    else:
        assert res.exit_code == 7, res.output
        (line,) = [ln for ln in res.stdout.splitlines() if ln.strip()]
        assert "cert.json" in line and KINDS[kind] in line
    assert snapshot(work) == before


def test_certificate_over_the_size_cap(work, sample_net, good_cert, monkeypatch):
    path = work / "c.json"
    path.write_text(json.dumps(good_cert))
    monkeypatch.setattr(cert_files, "MAX_CERTIFICATE_FILE_BYTES", 100)
    res = lipverify.check_certificate(sample_net, path)
    assert not res.valid and "over the 100 bytes limit" in res.message
    res = run("check", SAMPLE, path)
    assert res.exit_code == 7 and "over the 100 bytes limit" in res.stdout


def test_certificate_with_too_many_params(work, sample_net, good_cert, monkeypatch):
    monkeypatch.setattr(cert_files, "MAX_CERTIFICATE_PARAMS", 10)
    res = lipverify.check_certificate(sample_net, good_cert)
    assert not res.valid and "over the limit of 10" in res.message


def test_a_good_certificate_still_checks_from_an_odd_path(work, sample_net, good_cert):
    path = work / "certs é/c ü ñ.json"
    path.parent.mkdir()
    path.write_text(json.dumps(good_cert))
    res = lipverify.check_certificate(sample_net, path)
    assert res.valid and res.message.startswith("valid")
    assert lipverify.check_certificate(sample_net, str(path)).valid
    assert cert_files.read_certificate(path) == good_cert
    cli = run("check", SAMPLE, path)
    assert cli.exit_code == 0 and "valid" in cli.stdout


# -------------------------------------------------------------------------- manifests
def _laughs() -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nmodels: *a9\nmethods: *a9\n"


#: id -> (the manifest's bytes, words the error holds)
BAD_YAML = {
    "billion-laughs": (_laughs().encode(), "billion laughs"),
    "many-aliases": (("x: &x m.onnx\nmodels: [" + ", ".join(["*x"] * 150) + "]\n").encode(),
                     "more than 100 YAML aliases"),
    "cyclic-alias": (b"models: &a [x.onnx, *a]\nmethods: [naive]\n", "holds it"),
    "deep-list": (b"models: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 64"),
    "deep-map": (b"models: " + b"{a: " * 3000 + b"1" + b"}" * 3000 + b"\n", "nested more than"),
    "binary": (b"models: [\xff\xfe\x00\x01]\nmethods: [naive]\n", "not UTF-8"),
    "utf16": ("models: [a.onnx]\n".encode("utf-16"), "not UTF-8"),
    "latin1": ("models: [módel.onnx]\n".encode("latin-1"), "not UTF-8"),
    "nul-char": (b"models: [a\x00b.onnx]\n", "not valid YAML"),
    "bad-date": (b"models: [a.onnx]\nmethods: 2001-13-45\n", "cannot be read"),
    "huge-int": (b"models: [a.onnx]\nmemory_limit_gb: " + b"9" * 5000 + b"\n",
                 "cannot be read"),
    "tab-indent": (b"models:\n\t- a.onnx\n", "not valid YAML at line 2"),
    "unclosed": (b"models: [a.onnx\nmethods: [naive]\n", "not valid YAML"),
    "python-tag": (b"models: !!python/object/apply:os.system ['echo pwned']\n",
                   "not valid YAML"),
    "unhashable-key": (b"? [a, b]\n: 1\n", "not valid YAML"),
    "undefined-alias": (b"models: *nowhere\n", "not valid YAML"),
    "top-level-list": (b"- models\n- methods\n", "a manifest is a YAML mapping"),
    "empty": (b"", "a manifest is a YAML mapping"),
}


@pytest.mark.parametrize("case", BAD_YAML)
def test_hostile_yaml_api(work, case):
    path = work / "batch é.yaml"
    path.write_bytes(BAD_YAML[case][0])
    before = snapshot(work)
    with pytest.raises(UsageError) as info:
        load_manifest(path)
    assert info.value.exit_code == 2
    assert_one_line(str(info.value), "batch é.yaml", BAD_YAML[case][1])
    assert snapshot(work) == before


@pytest.mark.parametrize("case", BAD_YAML)
def test_hostile_yaml_cli(work, case):
    path = work / "batch é.yaml"
    path.write_bytes(BAD_YAML[case][0])
    before = snapshot(work)
    res = run("batch", path, "--db", work / "r.db", "--executor", "inline")
    assert_clean_failure(res, 2, "batch é.yaml", BAD_YAML[case][1])
    assert snapshot(work) == before  # no database, nothing else


def test_aliases_within_the_limits_still_work(work):
    shutil.copy(SAMPLE, work / "a.onnx")
    path = work / "m.yaml"
    path.write_text("defaults: &d {layout: out-in}\nmodels:\n  - {path: a.onnx, <<: *d}\n"
                    "  - path: a.onnx\nmethods: &m [naive]\n")
    with pytest.raises(UsageError, match="unknown key 'defaults'"):
        load_manifest(path)  # aliases parsed fine; the stray key is the only problem
    path.write_text("models: &m [a.onnx]\nmethods: [naive]\nplugins: []\n")
    assert [s.path.name for s in load_manifest(path).models] == ["a.onnx"]


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_of_every_kind(work, kind):
    path = make(kind, work / "batch.yaml")
    before = snapshot(work)
    with pytest.raises(UsageError) as info:
        load_manifest(path)
    assert_one_line(str(info.value), "batch.yaml", KINDS[kind])
    res = run("batch", path, "--db", work / "r.db", "--executor", "inline")
    assert_clean_failure(res, 2, "batch.yaml", KINDS[kind])
    assert snapshot(work) == before


def test_manifest_over_the_size_cap(work, monkeypatch):
    path = work / "batch.yaml"
    path.write_text("models: [a.onnx]\nmethods: [naive]\n" + "#" * 200 + "\n")
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(UsageError, match="over the 100 bytes limit"):
        load_manifest(path)
    res = run("batch", path, "--db", work / "r.db")
    assert_clean_failure(res, 2, "batch.yaml", "over the 100 bytes limit")
    assert not (work / "r.db").exists()


def test_missing_manifest_is_still_a_usage_error(work):
    with pytest.raises(UsageError, match="no such manifest file; check the path"):
        load_manifest(work / "absent.yaml")


@pytest.mark.parametrize("kind", ["fifo", "fifo-link", "devzero", "devnull", "socket"])
def test_manifest_entry_of_every_kind(work, kind):
    make(kind, work / "models" / "bad.onnx")
    shutil.copy(SAMPLE, work / "models" / "good.onnx")
    path = work / "batch.yaml"
    path.write_text(yaml.safe_dump({"models": ["models/bad.onnx", "models/good.onnx"],
                                    "methods": ["naive"]}))
    before = snapshot(work)
    with pytest.raises(UsageError) as info:
        load_manifest(path)
    assert "models[0]" in str(info.value) and KINDS[kind] in str(info.value)
    assert "models[1]" not in str(info.value)
    res = run("batch", path, "--db", work / "r.db", "--executor", "inline")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(error_lines(res.output)) == 1 and KINDS[kind] in res.output
    assert snapshot(work) == before


@pytest.mark.parametrize("kind", ["fifo", "devzero", "socket"])
def test_model_paths_on_the_batch_command_line(work, kind):
    bad = make(kind, work / "bad.onnx")
    with pytest.raises(UsageError, match="not a regular file"):
        manifest_from_paths([bad], ["naive"])
    before = snapshot(work)
    res = run("batch", bad, "--methods", "naive", "--db", work / "r.db", "--executor", "inline")
    assert res.exit_code == 2 and KINDS[kind] in res.output and "Traceback" not in res.output
    assert snapshot(work) == before


def test_a_fifo_matched_by_a_glob_is_skipped(work):
    make("fifo", work / "m" / "bad.onnx")
    shutil.copy(SAMPLE, work / "m" / "good.onnx")
    m = manifest_from_paths([work / "m" / "*.onnx"], ["naive"])
    assert [s.path.name for s in m.models] == ["good.onnx"]
    m = manifest_from_paths([work / "m"], ["naive"])  # a directory entry: the same
    assert [s.path.name for s in m.models] == ["good.onnx"]


@pytest.fixture
def tree(work) -> Path:
    """A tree of 120 small model-looking files in 6 folders."""
    root = work / "tree"
    for d in range(6):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (root / f"d{d}" / f"m{f}.npz").write_bytes(b"")
    return root


@pytest.fixture
def counted_scandir(monkeypatch):
    """os.scandir as the manifest module sees it, counting the entries it yields."""
    import contextlib
    from types import SimpleNamespace

    seen = {"n": 0}

    @contextlib.contextmanager
    def scandir(path):
        with os.scandir(path) as it:
            def counted():
                for entry in it:
                    seen["n"] += 1
                    yield entry
            yield counted()

    fake_os = SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.scandir = scandir
    monkeypatch.setattr(manifest_mod, "os", fake_os)
    return seen


@pytest.mark.parametrize("pattern", ["tree/**/*.npz", "tree/*/*", "tree/**"])
def test_a_glob_over_a_huge_tree_stops_at_the_cap(work, tree, counted_scandir, monkeypatch,
                                                   pattern):
    monkeypatch.setattr(manifest_mod, "MAX_GLOB_MATCHES", 50)
    path = work / "batch.yaml"
    path.write_text(yaml.safe_dump({"models": [pattern], "methods": ["naive"]}))
    with pytest.raises(UsageError) as info:
        load_manifest(path)
    assert "matches more than 50 paths" in str(info.value) and pattern in str(info.value)
    assert counted_scandir["n"] <= 2 * 51 + 6  # stopped at the cap (a `**` lists a folder twice)
    res = run("batch", path, "--db", work / "r.db", "--executor", "inline")
    assert res.exit_code == 2 and "matches more than 50 paths" in " ".join(res.output.split())
    assert not (work / "r.db").exists()


@pytest.mark.parametrize("pattern", ["tree/**/*.onnx", "tree/**/none/*.npz", "tree/*/x*"])
def test_a_glob_that_walks_a_huge_tree_matching_nothing_stops(work, tree, counted_scandir,
                                                              monkeypatch, pattern):
    monkeypatch.setattr(manifest_mod, "MAX_GLOB_VISITS", 30)
    with pytest.raises(UsageError) as info:
        manifest_from_paths([work / pattern], ["naive"])
    assert "looked at more than 30 entries" in str(info.value)
    assert counted_scandir["n"] == 31


def test_bounded_glob_agrees_with_glob(work, tree):
    import glob as glob_mod

    (tree / "d0" / ".hidden.npz").write_bytes(b"")
    (tree / "d1" / "sub").mkdir()
    (tree / "d1" / "sub" / "deep.npz").write_bytes(b"")
    for pattern in ["**/*.npz", "*/m1?.npz", "d[0-2]/*", "**", "d1/**", "*/sub/*.npz", "**/x",
                    "d0/.h*", "d0/m1.npz"]:
        want = sorted(Path(p) for p in glob_mod.glob(str(tree / pattern), recursive=True))
        assert manifest_mod.bounded_glob(tree / pattern, 10_000, 100_000) == want, pattern


def test_an_optional_huge_glob_is_still_refused(work, tree, monkeypatch):
    monkeypatch.setattr(manifest_mod, "MAX_GLOB_MATCHES", 50)
    path = work / "batch.yaml"
    path.write_text(yaml.safe_dump({"models": [{"path": "tree/**/*.npz", "optional": True}],
                                    "methods": ["naive"]}))
    with pytest.raises(UsageError, match="matches more than 50 paths"):
        load_manifest(path)


def test_a_directory_entry_with_too_many_files(work, tree, monkeypatch):
    monkeypatch.setattr(manifest_mod, "MAX_GLOB_MATCHES", 10)
    with pytest.raises(UsageError, match="more than 10 entries"):
        manifest_from_paths([tree / "d0"], ["naive"])


def test_a_glob_under_the_cap_still_works(work, tree, monkeypatch):
    monkeypatch.setattr(manifest_mod, "MAX_GLOB_MATCHES", 200)
    for d in range(6):
        for f in range(20):
            shutil.copy(SAMPLE_MODELS / "digits_mlp_relu.npz", tree / f"d{d}" / f"m{f}.npz")
    m = manifest_from_paths([tree / "**" / "*.npz"], ["naive"])
    assert len(m.models) == 120


def test_the_glob_cap_default():
    assert manifest_mod.MAX_GLOB_MATCHES == 10_000


# ------------------------------------------------------------------ results databases
def _foreign_rollback(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()


def _foreign_wal(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()


def _lookalike(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (name TEXT, value TEXT)")
    conn.execute("CREATE TABLE results (key TEXT)")
    conn.commit()
    conn.close()


def _old_schema(path: Path) -> None:
    ResultsStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='0' WHERE name='schema_version'")
    conn.commit()
    conn.close()


def _garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 16)


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


#: id -> (builder, words the error holds)
FOREIGN_DBS = {
    "foreign-rollback": (_foreign_rollback, "not a lipverify results store (tables: t)"),
    "foreign-wal": (_foreign_wal, "not a lipverify results store (tables: notes)"),
    "lookalike": (_lookalike, "table results lacks"),
    "old-schema": (_old_schema, "results store schema '0'"),
    "garbage-header": (_garbage, "corrupt or another kind of file"),
    "random": (_random, "corrupt or another kind of file"),
}


def _db(work: Path, case: str) -> tuple[Path, dict]:
    path = work / "dbs é" / "results ü ?#.db"
    path.parent.mkdir()
    FOREIGN_DBS[case][0](path)
    return path, snapshot(work)


@pytest.mark.parametrize("case", FOREIGN_DBS)
def test_a_refused_database_stays_byte_identical_api(work, case):
    path, before = _db(work, case)
    for create in (True, False):
        with pytest.raises(ResultsStoreError) as info:
            ResultsStore(path, create=create)
        assert_one_line(str(info.value), FOREIGN_DBS[case][1])
        assert snapshot(work) == before  # the bytes, and no -wal/-shm/-journal left


@pytest.mark.parametrize("case", FOREIGN_DBS)
def test_a_refused_database_stays_byte_identical_batch(work, case):
    path, before = _db(work, case)
    shutil.copy(SAMPLE, work / "m.onnx")
    before = snapshot(work)
    res = run("batch", work / "m.onnx", "--methods", "naive", "--db", path,
              "--executor", "inline")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert FOREIGN_DBS[case][1] in " ".join(res.output.split())
    assert snapshot(work) == before


@pytest.mark.parametrize("case", FOREIGN_DBS)
@pytest.mark.parametrize("command", [["results", "show"], ["results", "export"]])
def test_a_refused_database_stays_byte_identical_results(work, case, command):
    path, before = _db(work, case)
    res = run(*command, "--db", path)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert FOREIGN_DBS[case][1] in " ".join(res.output.split())
    assert snapshot(work) == before


def test_reading_an_empty_file_writes_nothing(work):
    path = work / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(ResultsStoreError, match="an empty database"):
        ResultsStore(path, create=False)
    res = run("results", "show", "--db", path)
    assert res.exit_code == 2 and "an empty database" in " ".join(res.output.split())
    assert path.read_bytes() == b"" and sorted(work.iterdir()) == [path]


@pytest.mark.parametrize("kind", ["fifo", "devzero", "socket"])
def test_database_of_every_kind(work, kind):
    path = make(kind, work / "r.db")
    before = snapshot(work)
    with pytest.raises(ResultsStoreError) as info:
        ResultsStore(path)
    assert_one_line(str(info.value), "r.db", KINDS[kind])
    res = run("results", "show", "--db", path)
    assert res.exit_code == 2 and KINDS[kind] in res.output
    assert snapshot(work) == before


def test_a_good_store_at_an_odd_path_opens_and_reopens(work):
    path = work / "dbs é ü/r ?#%20.db"
    path.parent.mkdir()
    with ResultsStore(path) as store:
        assert store.done_keys() == set()
    with ResultsStore(path, create=False) as store:  # the read-only check passes
        assert len(store) == 0
    path.write_bytes(b"")  # an empty file is a fine place for a new store
    with ResultsStore(path) as store:
        assert len(store) == 0


# --------------------------------------------------- paths with spaces and non-ASCII
@pytest.fixture
def odd_model(work) -> Path:
    path = work / ODD
    path.parent.mkdir()
    shutil.copy(SAMPLE, path)
    return path


def test_odd_path_loads_api(odd_model, sample_net):
    net = lipverify.load(odd_model)
    assert net.provenance.sha256 == sample_net.provenance.sha256
    assert lipverify.load(str(odd_model)).name == "my módel ü ñ"


@pytest.mark.parametrize("command", ["info", "bound", "compare"])
def test_odd_path_loads_cli(odd_model, command):
    args = {"info": ["info", odd_model],
            "bound": ["bound", odd_model, "-m", "naive", "--no-lower"],
            "compare": ["compare", odd_model, "--methods", "naive"]}[command]
    res = run(*args)
    assert res.exit_code == 0, res.output


def test_odd_path_certificate_roundtrip_cli(odd_model, work):
    cert = odd_model.parent / "cert ü é.json"
    res = run("bound", odd_model, "-m", "ldlt-fast", "--no-lower", "--save-certificate", cert)
    assert res.exit_code == 0, res.output
    res = run("check", odd_model, cert)
    assert res.exit_code == 0 and "valid" in res.stdout, res.output


def test_odd_path_batch(odd_model, work):
    db = work / "dbs é ü/r ?#.db"
    db.parent.mkdir()
    path = odd_model.parent / "batch ü.yaml"
    path.write_text(yaml.safe_dump({"models": ["*.onnx"], "methods": ["naive"]}))
    res = run("batch", path, "--db", db, "--executor", "inline")
    assert res.exit_code == 0, res.output
    res = run("batch", odd_model, "--methods", "naive", "--db", db, "--executor", "inline")
    assert res.exit_code == 0 and "skipped" in res.output, res.output
    with ResultsStore(db, create=False) as store:
        assert [r.status for r in store.records()] == ["ok"]


@pytest.mark.parametrize("suffix", ["onnx", "npz", "ts.pt", "pt2"])
def test_undecodable_file_names_load(work, suffix):
    """A name whose bytes are not UTF-8 (a latin-1 file system): str paths hold surrogates,
    which torch's C++ readers cannot take (they get an open file instead)."""
    name = f"m\xf3del \xfc.{suffix}"
    src = SAMPLE_MODELS / f"digits_mlp_relu.{suffix}"
    raw = os.fsencode(work) + b"/" + name.encode("latin-1")
    try:
        shutil.copy(src, raw)
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    path = os.fsdecode(raw)
    assert lipverify.load(path).input_dim == 64
    with pytest.raises(ModelLoadError) as info:  # and a message that can still be printed
        lipverify.load(path + ".missing.onnx")
    str(info.value).encode("utf-8")


# ------------------------------------------------ the real command line, in a subprocess
@pytest.mark.parametrize("kind", ["fifo", "devzero"])
@pytest.mark.parametrize("what", ["model", "certificate", "manifest", "manifest-entry"])
def test_no_hang_through_the_real_command_line(work, kind, what):
    target = {"model": "m.onnx", "certificate": "c.json", "manifest": "b.yaml",
              "manifest-entry": "e.onnx"}[what]
    make(kind, work / target)
    if what == "manifest-entry":
        (work / "b.yaml").write_text("models: [e.onnx]\nmethods: [naive]\n")
    args = {"model": ["info", "m.onnx"], "certificate": ["check", str(SAMPLE), "c.json"],
            "manifest": ["batch", "b.yaml", "--db", "r.db", "--executor", "inline"],
            "manifest-entry": ["batch", "b.yaml", "--db", "r.db", "--executor", "inline"]}[what]
    before = snapshot(work)
    signal.alarm(0)  # the subprocess has its own timeout
    proc = subprocess.run([sys.executable, "-m", "lipverify_cli.main", *args], cwd=work,
                          capture_output=True, text=True, timeout=60)
    expected = {"model": 3, "certificate": 7, "manifest": 2, "manifest-entry": 2}[what]
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert KINDS[kind] in proc.stdout + proc.stderr
    assert snapshot(work) == before


def test_every_refusal_is_a_domain_error():
    for cls in (ModelLoadError, UsageError, ResultsStoreError):
        assert issubclass(cls, LipverifyError)
