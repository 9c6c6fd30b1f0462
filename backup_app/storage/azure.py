"""Azure Blob Storage (``storages.backends.azure_storage.AzureStorage``)."""

from __future__ import annotations

from typing import BinaryIO

from ..streams import CallbackReader, buffered
from .base import OPTIONS_HINT, Adapter, first_line


class AzureAdapter(Adapter):
    """``storages.backends.azure_storage.AzureStorage``: block uploads from the stream, chunked downloads."""

    label = "Azure Blob Storage"
    #: The Azure SDK's clients are thread-safe (its guidelines say so): a listing reads up to 8 manifests at once.
    read_workers = 8
    object_parameters = {"content_type": "application/octet-stream", "content_encoding": None}

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

    def open(self, backend, name: str) -> BinaryIO:
        from azure.core.exceptions import ResourceNotFoundError

        blob = backend.client.get_blob_client(backend._get_valid_path(name))
        try:
            downloader = blob.download_blob(max_concurrency=1, decompress=False, timeout=backend.timeout)
        except ResourceNotFoundError:
            raise FileNotFoundError(f"{name} is not in the container") from None
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
        if isinstance(err, aexc.ServiceRequestError):
            return f"cannot reach the Azure endpoint ({first_line(err)}); check the account / endpoint and network"
        return super().explain(backend, err, action, name)
