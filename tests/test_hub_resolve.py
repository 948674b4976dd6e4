"""tftransfer.hub.resolve: handles to SavedModel folders, downloads over loopback."""

import http.server
import io
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tftransfer


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "tfhub_cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    return cache


@pytest.fixture()
def archive_server(tmp_path):
    """Serves files from a folder on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tar_folder(folder, archive_path):
    with tarfile.open(archive_path, "w:gz") as archive:
        for name in os.listdir(folder):
            archive.add(os.path.join(folder, name), arcname=name)


def _tar_with_member(archive_path, member: tarfile.TarInfo, data=b"x"):
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)


def test_local_directory_and_file_url(image_model_path):
    assert tftransfer.hub.resolve(image_model_path) == image_model_path
    assert tftransfer.hub.resolve("file://" + image_model_path) == image_model_path


def test_missing_path_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such path exists"):
        tftransfer.hub.resolve(str(tmp_path / "nope"))


def test_folder_without_saved_model_says_what_it_holds(tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(
        tftransfer.HandleError, match=r"holds: \[notes.txt, weights.h5\]"
    ):
        tftransfer.hub.resolve(str(tmp_path))


def test_empty_handle_is_refused():
    with pytest.raises(tftransfer.HandleError, match="Expected a model handle"):
        tftransfer.hub.resolve("  ")


def test_tar_gz_over_http_downloads_into_the_tfhub_cache(
    image_model_path, archive_server, hub_cache
):
    root, url = archive_server
    _tar_folder(image_model_path, root / "model.tar.gz")
    path = tftransfer.hub.resolve(f"{url}/model.tar.gz")
    assert path.startswith(str(hub_cache))
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    layer = tftransfer.HubLayer(f"{url}/model.tar.gz")
    reference = tftransfer.HubLayer(image_model_path)
    images = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(layer(images).numpy(), reference(images).numpy())
    # The second resolve is served from the cache: the server is not needed.
    (root / "model.tar.gz").unlink()
    assert tftransfer.hub.resolve(f"{url}/model.tar.gz") == path


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escaped.txt"),
        tarfile.TarInfo("variables/../../escaped.txt"),
    ],
    ids=["dotdot", "nested-dotdot"],
)
def test_archive_member_outside_the_cache_is_refused(
    member, archive_server, hub_cache, tmp_path
):
    root, url = archive_server
    member.size = 1
    _tar_with_member(root / "evil.tar.gz", member)
    with pytest.raises(tftransfer.HandleError, match="Refused the model"):
        tftransfer.hub.resolve(f"{url}/evil.tar.gz")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not [p for p in hub_cache.iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_archive_with_links_is_refused(link_type, archive_server, hub_cache):
    root, url = archive_server
    member = tarfile.TarInfo("saved_model.pb")
    member.type = link_type
    member.linkname = "/etc/passwd"
    _tar_with_member(root / "links.tar.gz", member)
    with pytest.raises(tftransfer.HandleError, match="Refused the model"):
        tftransfer.hub.resolve(f"{url}/links.tar.gz")
    assert not list(hub_cache.rglob("saved_model.pb"))


def test_absolute_member_paths_never_land_outside_the_cache(
    archive_server, hub_cache, tmp_path
):
    root, url = archive_server
    target = tmp_path / "absolute_target.txt"
    member = tarfile.TarInfo(str(target))
    member.size = 1
    _tar_with_member(root / "absolute.tar.gz", member)
    with pytest.raises(tftransfer.HandleError, match="absolute.tar.gz"):
        tftransfer.hub.resolve(f"{url}/absolute.tar.gz")
    assert not target.exists()
    assert not [p for p in hub_cache.iterdir() if not p.name.endswith(".lock")]


def test_unreachable_server_says_how_to_work_offline(archive_server, hub_cache):
    _, url = archive_server
    with pytest.raises(tftransfer.HandleError, match="pass the folder"):
        tftransfer.hub.resolve(f"{url}/missing.tar.gz")


def test_not_an_archive_is_a_clear_error(archive_server, hub_cache):
    root, url = archive_server
    (root / "page.tar.gz").write_text("<html>not found</html>")
    with pytest.raises(tftransfer.HandleError, match="page.tar.gz"):
        tftransfer.hub.resolve(f"{url}/page.tar.gz")


# --- the archive size limit ---------------------------------------------------

MiB = 1 << 20


def _zeros_member(name, size):
    member = tarfile.TarInfo(name)
    member.size = size
    return member, io.BytesIO(bytes(size))


def _write_bomb(path, kind, size=8 * MiB):
    """A .tar.gz of a few KiB that expands to `size` bytes in one of four ways."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        if kind == "one-big-member":
            archive.addfile(*_zeros_member("variables/variables.data", size))
        elif kind == "many-small-members":
            for index in range(64):
                archive.addfile(*_zeros_member(f"shard_{index}.bin", size // 64))
        elif kind == "sparse-member":
            # A GNU sparse file: 1 byte stored, `size` bytes once extracted.
            member = tarfile.TarInfo("sparse.bin")
            member.size = 1
            member.pax_headers = {
                "GNU.sparse.size": str(size),
                "GNU.sparse.numblocks": "1",
                "GNU.sparse.offset": "0",
                "GNU.sparse.numbytes": "1",
            }
            archive.addfile(member, io.BytesIO(b"x"))
        elif kind == "huge-pax-header":
            # Read into memory by tarfile before any member is extracted.
            member = tarfile.TarInfo("saved_model.pb")
            member.pax_headers = {"comment": "x" * size}
            archive.addfile(member, io.BytesIO(b""))
    return path


def _cache_entries(hub_cache):
    return sorted(str(p) for p in hub_cache.rglob("*") if not p.name.endswith(".lock"))


BOMBS = ["one-big-member", "many-small-members", "sparse-member", "huge-pax-header"]


@pytest.mark.parametrize("kind", BOMBS)
def test_archive_past_the_byte_limit_is_refused_and_leaves_nothing(
    kind, archive_server, hub_cache, monkeypatch
):
    root, url = archive_server
    _write_bomb(root / "bomb.tar.gz", kind)
    assert (root / "bomb.tar.gz").stat().st_size < 64 * 1024
    monkeypatch.setenv("TFTRANSFER_MAX_ARCHIVE_BYTES", str(4 * MiB))
    with pytest.raises(
        tftransfer.HandleError,
        match=rf"Refused the model archive at '{url}/bomb.tar.gz': it expands to "
        r"more than 4,194,304 bytes \(reached [\d,]+ bytes from [\d,]+ compressed "
        r"bytes\), past the archive size limit \(TFTRANSFER_MAX_ARCHIVE_BYTES="
        r"4194304, TFTRANSFER_MAX_ARCHIVE_RATIO=100 .*Nothing of it was kept",
    ):
        tftransfer.hub.resolve(f"{url}/bomb.tar.gz")
    assert _cache_entries(hub_cache) == []


def test_archive_past_the_ratio_limit_is_refused(
    archive_server, hub_cache, monkeypatch
):
    root, url = archive_server
    _write_bomb(root / "bomb.tar.gz", "one-big-member")
    monkeypatch.setenv("TFTRANSFER_MAX_ARCHIVE_RATIO", "2")
    # Counted as 1 MiB compressed: at most 2 MiB once expanded.
    with pytest.raises(
        tftransfer.HandleError,
        match=r"more than 2,097,152 bytes .*TFTRANSFER_MAX_ARCHIVE_RATIO=2 times",
    ):
        tftransfer.HubLayer(f"{url}/bomb.tar.gz")
    assert _cache_entries(hub_cache) == []


def test_default_limit_refuses_an_archive_that_expands_a_thousandfold(
    archive_server, hub_cache
):
    root, url = archive_server
    _write_bomb(root / "bomb.tar.gz", "sparse-member", size=200 * MiB)
    with pytest.raises(tftransfer.HandleError, match=r"more than 104,857,600 bytes"):
        tftransfer.hub.resolve(f"{url}/bomb.tar.gz")
    assert _cache_entries(hub_cache) == []


def test_raising_the_limit_lets_a_large_trusted_archive_resolve(
    image_model_path, archive_server, hub_cache, tmp_path, monkeypatch
):
    root, url = archive_server
    model = tmp_path / "padded_model"
    shutil.copytree(image_model_path, model)
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "padding.bin").write_bytes(bytes(8 * MiB))
    _tar_folder(model, root / "model.tar.gz")
    monkeypatch.setenv("TFTRANSFER_MAX_ARCHIVE_BYTES", str(4 * MiB))
    with pytest.raises(tftransfer.HandleError, match="Refused the model archive"):
        tftransfer.hub.resolve(f"{url}/model.tar.gz")
    monkeypatch.setenv("TFTRANSFER_MAX_ARCHIVE_BYTES", str(16 * MiB))
    path = tftransfer.hub.resolve(f"{url}/model.tar.gz")
    assert (Path(path) / "assets" / "padding.bin").stat().st_size == 8 * MiB
    images = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(
        tftransfer.HubLayer(path)(images).numpy(),
        tftransfer.HubLayer(image_model_path)(images).numpy(),
    )


@pytest.mark.parametrize(
    "variable, value",
    [
        ("TFTRANSFER_MAX_ARCHIVE_BYTES", "lots"),
        ("TFTRANSFER_MAX_ARCHIVE_BYTES", "-1"),
        ("TFTRANSFER_MAX_ARCHIVE_RATIO", "0"),
    ],
)
def test_archive_limit_variables_must_be_positive_integers(
    variable, value, image_model_path, archive_server, hub_cache, monkeypatch
):
    root, url = archive_server
    _tar_folder(image_model_path, root / "model.tar.gz")
    monkeypatch.setenv(variable, value)
    with pytest.raises(
        tftransfer.ConfigError,
        match=rf"positive integer in the environment variable {variable}\. "
        rf"Received: {variable}='{value}'",
    ):
        tftransfer.hub.resolve(f"{url}/model.tar.gz")


def test_gcs_archive_is_held_to_the_same_limit(
    image_model_path, archive_server, hub_cache, tmp_path, monkeypatch
):
    root, _ = archive_server
    _tar_folder(image_model_path, root / "model.tar.gz")
    _write_bomb(root / "bomb.tar.gz", "sparse-member")
    real_gfile = tf.io.gfile.GFile

    def gfile(path, mode="r"):
        # gs://bucket/<name> is served from the local folder.
        if path.startswith("gs://bucket/"):
            return open(root / path[len("gs://bucket/") :], mode)
        return real_gfile(path, mode)

    monkeypatch.setattr(tf.io.gfile, "GFile", gfile)
    monkeypatch.setenv("TFTRANSFER_MAX_ARCHIVE_BYTES", str(4 * MiB))
    with pytest.raises(
        tftransfer.HandleError, match=r"'gs://bucket/bomb.tar.gz': it expands"
    ):
        tftransfer.hub.resolve("gs://bucket/bomb.tar.gz")
    assert _cache_entries(hub_cache) == []
    path = tftransfer.hub.resolve("gs://bucket/model.tar.gz")
    assert path.startswith(str(hub_cache))
    assert (Path(path) / "saved_model.pb").exists()


# --- empty or corrupt saved_model.pb ----------------------------------------------


def _corrupt_copy(image_model_path, folder, kind):
    shutil.copytree(image_model_path, folder)
    pb = folder / "saved_model.pb"
    if kind == "zero-bytes":
        pb.write_bytes(b"")
    elif kind == "garbage":
        pb.write_bytes(b"\x00\x01 not a protocol buffer \xff\xff\xff")
    elif kind == "truncated":
        pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    elif kind == "pbtxt-garbage":
        pb.unlink()
        (folder / "saved_model.pbtxt").write_text("meta_graphs { nonsense")
    return folder


SAVED_MODEL_FILE = {
    "zero-bytes": r"saved_model.pb' \(from handle .*\) is empty \(0 bytes\)",
    "garbage": r"saved_model.pb' \(from handle .*\) is corrupt: it does not parse",
    "truncated": r"saved_model.pb' \(from handle .*\) is corrupt: it does not parse",
    "pbtxt-garbage": r"saved_model.pbtxt' \(from handle .*\) is corrupt",
}


@pytest.mark.parametrize("kind", list(SAVED_MODEL_FILE))
@pytest.mark.parametrize("entry", ["resolve", "HubLayer"])
def test_empty_or_corrupt_saved_model_file_is_a_handle_error_naming_it(
    kind, entry, image_model_path, tmp_path
):
    folder = _corrupt_copy(image_model_path, tmp_path / "model", kind)
    call = tftransfer.hub.resolve if entry == "resolve" else tftransfer.HubLayer
    with pytest.raises(tftransfer.HandleError, match=SAVED_MODEL_FILE[kind]) as raised:
        call(str(folder))
    assert str(folder) in str(raised.value)
    assert "re-export it with `tf.saved_model.save`" in str(raised.value)


def test_corrupt_saved_model_in_a_download_says_to_clear_the_cache(
    image_model_path, archive_server, hub_cache, tmp_path
):
    root, url = archive_server
    folder = _corrupt_copy(image_model_path, tmp_path / "model", "truncated")
    _tar_folder(folder, root / "model.tar.gz")
    with pytest.raises(
        tftransfer.HandleError,
        match=rf"is corrupt: it does not parse.*Delete the folder '{hub_cache}/\w+' from the "
        r"tensorflow_hub cache and resolve the handle again",
    ):
        tftransfer.hub.resolve(f"{url}/model.tar.gz")
