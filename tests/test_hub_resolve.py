"""tftransfer.hub.resolve: handles to SavedModel folders, downloads over loopback."""

import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest

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
