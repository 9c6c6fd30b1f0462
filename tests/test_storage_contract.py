"""The private django-storages attributes the adapters rely on (django-storages is pinned to 1.14.x).

One test per attribute, on the real classes, without a server: an upgrade that renames one fails here,
not in a user's backup.  Public API the adapters use is covered by the tests against real servers.
"""

from __future__ import annotations

import django

django.setup()

from storages.utils import clean_name  # noqa: E402


def test_s3_normalize_name_puts_the_location_in_front():
    from storages.backends.s3 import S3Storage

    backend = S3Storage(bucket_name="backups", location="site/backups", access_key="k", secret_key="s")

    assert backend._normalize_name(clean_name("InvenTree-db.gz")) == "site/backups/InvenTree-db.gz"


def test_gcs_normalize_name_puts_the_location_in_front():
    from storages.backends.gcloud import GoogleCloudStorage

    backend = GoogleCloudStorage(bucket_name="backups", location="site", project_id="test")

    assert backend._normalize_name(clean_name("InvenTree-db.gz")) == "site/InvenTree-db.gz"


def test_sftp_remote_path_is_under_root_path():
    from storages.backends.sftpstorage import SFTPStorage

    backend = SFTPStorage(host="127.0.0.1", root_path="/srv/backups")

    assert backend._remote_path("InvenTree-db.gz") == "/srv/backups/InvenTree-db.gz"


def test_ftp_config_holds_what_a_connection_needs():
    from storages.backends.ftp import FTPStorage

    backend = FTPStorage(location="ftp://backup:pw@ftp.example.com:2121/site/backups")

    config = backend._config
    assert (config["host"], config["port"], config["user"], config["passwd"]) == (
        "ftp.example.com",
        2121,
        "backup",
        "pw",
    )
    assert (config["path"], config["secure"], config["active"]) == ("site/backups", False, False)


def test_azure_get_valid_path_puts_the_location_in_front():
    from storages.backends.azure_storage import AzureStorage

    backend = AzureStorage(account_name="account", account_key="a2V5", azure_container="backups", location="site")

    assert backend._get_valid_path("InvenTree-db.gz") == "site/InvenTree-db.gz"


def test_dropbox_full_path_is_under_root_path():
    from storages.backends.dropbox import DropboxStorage

    backend = DropboxStorage(oauth2_access_token="not-a-real-token", root_path="/backups")

    assert backend._full_path("InvenTree-db.gz") == "/backups/InvenTree-db.gz"
