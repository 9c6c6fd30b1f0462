"""Azure Blob Storage (``storages.backends.azure_storage.AzureStorage``)."""

from __future__ import annotations

import time
from typing import BinaryIO

from ..settings import app_settings
from ..streams import CallbackReader, buffered
from .base import (
    OPTIONS_HINT,
    Adapter,
    first_line,
    pause_before_retry,
    say_retry,
    storage_deadline,
    tries_said,
    unreachable,
)


def said_retry_policy(retries: int, adapter: Adapter | None = None, **given):
    """The Azure SDK's own retry policy (azure-storage-blob's ``ExponentialRetry``: what it deems transient,
    a body rewound for each try) with backup_storage_retries retries, the pauses of
    :func:`~backup_app.storage.base.pause_before_retry` (the SDK's: 15 s, then 18, 24 …), an overall deadline
    per request (:func:`~backup_app.storage.base.storage_deadline`; the SDK's policy has none) and each retry
    said on a line.  ``given``: the ``retry_*`` keys of ``client_options``, which win.

    Once a request failed for good because the storage did not answer (:attr:`Adapter.unresponsive` of
    ``adapter``), every later one is tried once: the rest of the upload, its clean-up and the failed run's
    (before, each got its full retries: with the defaults about 4 minutes per file of the set)."""
    from azure.storage.blob import ExponentialRetry

    class SaidRetry(ExponentialRetry):
        description = "Azure Blob Storage"

        def configure_retries(self, request):
            settings = super().configure_retries(request)
            settings["backup_app_deadline"] = time.monotonic() + storage_deadline()
            return settings

        def get_backoff_time(self, settings) -> float:
            return pause_before_retry(settings["count"])

        def increment(self, settings, request, response=None, error=None) -> bool:
            if not super().increment(settings, request, response=response, error=error):
                if error is not None:
                    error.backup_app_tries = settings["count"] + 1
                    self.given_up(error)
                return False
            attempt = settings["count"]  # the retry about to be made, from 1
            gone = adapter is not None and adapter.unresponsive
            if gone or time.monotonic() + self.get_backoff_time(settings) >= settings["backup_app_deadline"]:
                if error is not None:
                    error.backup_app_tries = attempt
                    self.given_up(error)
                return False
            why = first_line(error) if error is not None else f"HTTP {getattr(response, 'status_code', '?')}"
            say_retry(self.description, f"{request.method} {request.url.split('?')[0]}", why, attempt)
            return True

        @staticmethod
        def given_up(error: BaseException) -> None:
            """A request that failed for good because the storage did not answer: later ones get one try."""
            if adapter is not None and adapter.unanswered(error):
                adapter.unresponsive = True

    keys = {"retry_total": retries, "retry_connect": retries, "retry_read": retries, "retry_status": retries}
    return SaidRetry(**{**keys, **given})


class AzureAdapter(Adapter):
    """``storages.backends.azure_storage.AzureStorage``: block uploads from the stream, chunked downloads."""

    label = "Azure Blob Storage"
    #: The Azure SDK's clients are thread-safe (its guidelines say so): a listing reads up to 8 manifests at once.
    read_workers = 8
    object_parameters = {"content_type": "application/octet-stream", "content_encoding": None}

    def prepare(self, options: dict) -> dict:
        """The SDK client's time-outs and retries from backup_storage_timeout and backup_storage_retries (its
        defaults: 20 s to connect, 60 s per read, 3 retries 15–40 s apart, no deadline), as ``client_options``
        (keys given there win)."""
        options = super().prepare(options)
        client = dict(options.get("client_options") or {})
        client.setdefault("connection_timeout", app_settings.storage_timeout)
        client.setdefault("read_timeout", app_settings.storage_timeout)
        if "retry_policy" not in client:
            given = {key: client.pop(key) for key in list(client) if key.startswith("retry_")}
            client["retry_policy"] = said_retry_policy(app_settings.storage_retries, self, **given)
        options["client_options"] = client
        return options

    def ready(self, backend) -> None:
        """AzureStorage gives ``client_options`` to the client it builds from an account, not to one from a
        ``connection_string``: build that one with them too."""
        policy = backend.client_options.get("retry_policy")
        if hasattr(policy, "description"):
            policy.description = self.describe(backend)
        if backend._service_client is None and backend.connection_string:
            from azure.storage.blob import BlobServiceClient

            backend._service_client = BlobServiceClient.from_connection_string(
                backend.connection_string, **backend.client_options
            )

    def describe(self, backend) -> str:
        account = backend.account_name or "connection string"
        where = f"{backend.azure_container}/{backend.location}".rstrip("/")
        return f"Azure Blob {account}/{where}"

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        # The stock listdir lists the whole container, recursively, with full names; list one level.
        prefix = backend._get_valid_path(path) if path else (backend.location or "").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        dirs, files = [], []
        for item in backend.client.walk_blobs(name_starts_with=prefix, delimiter="/", timeout=backend.timeout):
            name = item.name[len(prefix) :]
            if name.endswith("/"):
                dirs.append(name.rstrip("/"))
            elif name:
                files.append(name)
        return dirs, files

    # A blob that is not there is BlobNotFound; a container that is not there (ContainerNotFound) is an error
    # to fix, not "absent": the SDK's BlobClient.exists answered False for both, and a read of either said
    # "not in the container".

    @staticmethod
    def _blob_not_found(err: BaseException) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        code = getattr(err, "error_code", None) or ""
        return isinstance(err, ResourceNotFoundError) and str(getattr(code, "value", code)) == "BlobNotFound"

    def exists(self, backend, name: str) -> bool:
        blob = backend.client.get_blob_client(backend._get_valid_path(name))
        try:
            blob.get_blob_properties(timeout=backend.timeout)
        except Exception as err:
            if self._blob_not_found(err):
                return False
            raise
        return True

    def size(self, backend, name: str) -> int:
        blob = backend.client.get_blob_client(backend._get_valid_path(name))
        try:
            return blob.get_blob_properties(timeout=backend.timeout).size
        except Exception as err:
            if self._blob_not_found(err):
                raise FileNotFoundError(f"{name} is not in the container") from None
            raise

    def open(self, backend, name: str) -> BinaryIO:
        blob = backend.client.get_blob_client(backend._get_valid_path(name))
        try:
            downloader = blob.download_blob(max_concurrency=1, decompress=False, timeout=backend.timeout)
        except Exception as err:
            if self._blob_not_found(err):
                raise FileNotFoundError(f"{name} is not in the container") from None
            raise
        return buffered(CallbackReader(downloader.read))

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        from azure.core import exceptions as aexc

        code = getattr(err, "error_code", None) or ""
        code = str(getattr(code, "value", code))
        if (
            isinstance(err, aexc.ClientAuthenticationError)
            and code != "AuthorizationFailure"
            or code
            in (
                "AuthenticationFailed",
                "InvalidAuthenticationInfo",
            )
        ):
            return (
                f"the credentials were rejected ({code or first_line(err)}); check account_key, sas_token or "
                f"connection_string in {OPTIONS_HINT}"
            )
        if code == "ContainerNotFound":
            return (
                f"container {backend.azure_container!r} does not exist; create it or fix azure_container in "
                f"{OPTIONS_HINT}"
            )
        if code == "AuthorizationFailure":
            # Azure says this for a SAS or network rule that does not allow the request, Azurite for a bad key.
            return (
                f"the request to {action} {name or 'the container'} was not authorized ({code}); check "
                f"account_key, sas_token or connection_string in {OPTIONS_HINT}, and that the key or SAS "
                "allows read, write, delete and list on the container"
            )
        if code.startswith("AuthorizationPermission") or (
            isinstance(err, aexc.HttpResponseError) and getattr(err, "status_code", None) == 403
        ):
            return (
                f"access denied to {action} {name or 'the container'} ({code or 403}); the account or SAS needs "
                "read, write, delete and list on the container (see docs/storage/azure.md)"
            )
        # An upload the server stopped reading times out in the send, which the SDK reports as the connection
        # aborted (ServiceResponseError): the server did not answer either.
        stalled = isinstance(err, aexc.ServiceResponseError) and unreachable(err) == "timed out"
        if isinstance(err, aexc.ServiceRequestTimeoutError | aexc.ServiceResponseTimeoutError) or stalled:
            return (
                f"the Azure endpoint did not answer within {app_settings.storage_timeout} s, {tries_said(err)} "
                f"({first_line(err)}); check the account / "
                f"endpoint in {OPTIONS_HINT} and the network, or raise "
                f"{app_settings.env_name('backup_storage_timeout')}"
            )
        if isinstance(err, aexc.ServiceRequestError):
            return f"cannot reach the Azure endpoint ({first_line(err)}); check the account / endpoint and network"
        return super().explain(backend, err, action, name)
