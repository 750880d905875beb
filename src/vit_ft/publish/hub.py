"""``export.py ... push_to_hub=org/name``: the exported folder uploaded to the Hugging Face Hub.

``huggingface_hub`` does the work: :meth:`~huggingface_hub.HfApi.create_repo` (``exist_ok=True``; private
when asked; an existing public repository is then refused, never uploaded to), :meth:`~huggingface_hub.HfApi.create_branch`
for ``hub.revision``, then one :meth:`~huggingface_hub.HfApi.upload_folder` commit. The token is the
usual one (``hf auth login``, or ``HF_TOKEN``); the endpoint is ``HF_ENDPOINT`` as always. Offline, not
logged in, or refused by the Hub: one line saying so, and the local export is kept as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vit_ft.errors import ConfigError, RunFault
from vit_ft.weights.hub import hub_offline


def check_repo_id(repo_id: str) -> None:
    """Refuse, before anything is written, a ``push_to_hub`` that is no ``org/name`` repository id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = str(repo_id)
    try:
        if text.count("/") != 1:
            raise HFValidationError("not of the form org/name")
        validate_repo_id(text)
    except HFValidationError as e:
        why = " ".join(str(e).split())[:160]
        raise ConfigError(
            f"push_to_hub={text!r} is not a Hub repository id ({why}); pass org/name, e.g. push_to_hub=me/my-vit"
        ) from None


NETWORK_MODULES = ("httpx", "httpcore", "requests", "urllib3")  # and httpx2, httpcore2: what the client uses


def network_error(e: BaseException) -> bool:
    """An error of the HTTP client's transport (no network, refused connection, timeout)."""
    return any(c.__module__.split(".")[0].startswith(NETWORK_MODULES) for c in type(e).__mro__)


def later(repo_id: str, folder: Path, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"the export is kept in {folder}; upload it later with: hf upload {repo_id} {folder}{rev}"


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    allow_patterns: list[str] | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> str:
    """Upload ``folder`` (only ``allow_patterns`` when given) to the model repository ``repo_id``; the
    commit's URL. ``api``: an :class:`~huggingface_hub.HfApi` (the seam the tests record through)."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if hub_offline():
        raise RunFault(
            f"push_to_hub={repo_id}: the Hub is offline (HF_HUB_OFFLINE=1), nothing uploaded; {later(repo_id, folder, revision)}"
        )
    if api is None:
        if huggingface_hub.get_token() is None:
            raise RunFault(
                f"push_to_hub={repo_id}: not logged in to the Hugging Face Hub (run hf auth login or set "
                f"HF_TOKEN), nothing uploaded; {later(repo_id, folder, revision)}"
            )
        api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        if private and not getattr(api.repo_info(repo_id, repo_type="model"), "private", False):
            raise RunFault(
                f"push_to_hub={repo_id}: hub.private=true, but the repository exists and is public: nothing "
                f"uploaded (make it private on the Hub first, or drop hub.private); {later(repo_id, folder, revision)}"
            )
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            allow_patterns=allow_patterns,
            commit_message=commit_message or "Upload model exported by vit-ft",
        )
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        what = {
            401: "not authorised (log in again: hf auth login, or set HF_TOKEN)",
            403: "refused: the token may not write to this repository",
        }.get(status)
        what = what or " ".join(str(e).split())[:200]
        raise RunFault(f"push_to_hub={repo_id}: {what}; {later(repo_id, folder, revision)}") from None
    except (OSError, ValueError) as e:  # no network (httpx's errors are OSError-like only in part)
        raise RunFault(
            f"push_to_hub={repo_id}: {type(e).__name__}: {' '.join(str(e).split())[:200]}; {later(repo_id, folder, revision)}"
        ) from None
    except Exception as e:  # noqa: BLE001 - httpx.TransportError and the like: the network, not a bug
        if not network_error(e):
            raise
        raise RunFault(
            f"push_to_hub={repo_id}: cannot reach the Hub ({type(e).__name__}: {' '.join(str(e).split())[:160]}); {later(repo_id, folder, revision)}"
        ) from None
    return str(getattr(info, "commit_url", None) or info)
