"""Models from the Hugging Face Hub: found in the cache, or downloaded with progress and resumed.

Why a module of its own: ``llm4sweat demo`` (a small general model when online) and ``llm4sweat
model download`` (the configured base model) fetch models the same way, and a newcomer must get
one clear line for each way it can go wrong — no network, a gated model whose licence was not
accepted, a wrong token, a name that does not exist — never a traceback.

``huggingface_hub.snapshot_download`` does the work: it shows a progress bar, keeps a partly
downloaded file (``*.incomplete`` in the cache) and resumes it with an HTTP Range request on
the next try, and reads ``HF_TOKEN`` and ``HF_ENDPOINT`` from the environment. Only the files
a transformers model needs are fetched (``ALLOW_PATTERNS``): Meta's repositories, for example,
also hold the original PyTorch checkpoint, a second copy of the weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "LICENSE*"]
PROBE_TIMEOUT_S = 10.0  # an unreachable hub is told apart in seconds, not minutes


class HubError(Exception):
    """The model cannot be had; the message is one line for the person at the keyboard."""


class Offline(HubError):
    """No connection to the hub (or HF_HUB_OFFLINE is set)."""


class GatedModel(HubError):
    """The model needs its licence accepted on its page and a token of that account."""


def model_page(repo_id: str) -> str:
    return f"{_endpoint()}/{repo_id}"


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cached(repo_id: str) -> Path | None:
    """The model's folder when it is fully in the local cache, else None (no network used)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except Exception:  # not cached, or only partly: a download will complete it
        return None


def gated_message(repo_id: str, token_set: bool) -> str:
    if token_set:
        return (f"{repo_id} is gated and the token in HF_TOKEN has no access to it: accept its licence at "
                f"{model_page(repo_id)} signed in as the token's account, then run the command again")
    return (f"{repo_id} is gated: accept its licence at {model_page(repo_id)} (signed in to Hugging Face), create "
            f"a read token at {_endpoint()}/settings/tokens, and run the command again with HF_TOKEN set to it")


def download(repo_id: str) -> Path:
    """The model's folder, downloading what is missing (progress on stderr, resumable)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hub_errors

    token_set = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    try:
        info = HfApi(endpoint=_endpoint()).model_info(repo_id, timeout=PROBE_TIMEOUT_S)
        if getattr(info, "gated", False) and not token_set:
            raise GatedModel(gated_message(repo_id, token_set))
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, endpoint=_endpoint()))
    except HubError:
        raise
    except hub_errors.GatedRepoError:
        raise GatedModel(gated_message(repo_id, token_set)) from None
    except hub_errors.RepositoryNotFoundError:
        hint = " (or it is private and HF_TOKEN has no access)" if token_set else " (or it is private: set HF_TOKEN)"
        raise HubError(f"there is no model {repo_id} on {_endpoint()}{hint}") from None
    except hub_errors.RevisionNotFoundError as exc:
        raise HubError(f"{repo_id}: {exc}") from None
    except hub_errors.OfflineModeIsEnabled:
        raise Offline("HF_HUB_OFFLINE is set, so nothing can be downloaded") from None
    except hub_errors.LocalEntryNotFoundError as exc:  # the hub could not be reached during the download
        raise Offline(f"the connection to {_endpoint()} failed ({_first_line(exc)}); run the command again to "
                      "resume") from None
    except hub_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise HubError(f"{_endpoint()} refused the token in HF_TOKEN (HTTP 401): check or renew it at "
                           f"{_endpoint()}/settings/tokens") from None
        raise HubError(f"{_endpoint()} answered HTTP {status} for {repo_id}; try again later") from None
    except Exception as exc:
        if _is_connection_error(exc):
            raise Offline(f"no connection to {_endpoint()} ({type(exc).__name__})") from None
        raise


def _is_connection_error(exc: BaseException) -> bool:
    """Connection failures of whichever HTTP client huggingface_hub uses (requests or httpx)."""
    while exc is not None:
        name = type(exc).__name__
        if isinstance(exc, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
