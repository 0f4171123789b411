"""Small files next to Tune results, on a folder or a URI (pyarrow filesystems)."""

from adpo_ray.orchestration import storage


def test_join_folders_and_uris():
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"
    assert storage.join("s3://bucket/path/", "run") == "s3://bucket/path/run"
    assert storage.join("s3://bucket/path?region=eu-west-1", "run") == "s3://bucket/path/run?region=eu-west-1"


def test_write_read_exists_local_and_file_uri(tmp_path):
    for base in (str(tmp_path / "plain"), f"file://{tmp_path / 'uri'}"):
        path = storage.join(base, "deep/x.json")
        assert not storage.exists(path)
        storage.write_text(path, '{"a": 1}')
        assert storage.exists(path) and storage.read_text(path) == '{"a": 1}'
