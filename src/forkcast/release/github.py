"""A small GitHub REST client: token lookup, errors that say what to fix, pagination, and a dry run.

The dry run sends no write (PUT, POST, PATCH, DELETE): it prints each as `METHOD /path` and its JSON payload.
Reads are still made when a token is at hand, so the printed payloads carry real ids; without a token nothing is
sent at all and the reads are printed as "not sent".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
COMMENT_LIMIT = 65_536  # characters GitHub accepts in one comment body
TRUNCATED_NOTE = "\n\n… (truncated: the full text is in the workflow run's summary)"

_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_REPO = re.compile(rf"^{_OWNER}/[A-Za-z0-9._-]{{1,100}}$")
_GITHUB_REMOTE = re.compile(
    r"^(?:https://(?:[^@/]+@)?github\.com/|git@github\.com:|ssh://git@github\.com/)"
    r"(?P<repo>[^/]+/[^/]+?)(?:\.git)?/?$"
)


def _silent(_: str) -> None:
    """The default echo: a library prints nothing unless asked to."""


class TokenMissingError(Exception):
    """No token was found where the client looks for one."""


class GitHubError(Exception):
    """GitHub refused a request (or could not be reached): names the endpoint, the status and GitHub's message."""

    def __init__(self, method: str, path: str, status: int | None, message: str, hint: str = "") -> None:
        self.method, self.path, self.status, self.github_message, self.hint = method, path, status, message, hint
        status_text = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{method} {path} failed: {status_text}{message}" + (f"\n  hint: {hint}" if hint else ""))


_HINTS = {
    401: "the token is invalid or expired: set GH_TOKEN (or GITHUB_TOKEN) to a valid token, or `gh auth login`",
    404: "not found: check the repository, user, team or pull request; GitHub also answers 404 when the token "
    "cannot see a private resource or lacks admin rights on the repository",
    422: "GitHub rejected the payload: a reviewer without access to the repository, an invalid name, "
    "or a feature the repository's plan does not include",
}


def hint_for(status: int, headers: Mapping[str, str]) -> str:
    """What usually causes this status, and what to do about it."""
    if status == 429 or (status == 403 and headers.get("x-ratelimit-remaining") == "0"):
        return "rate limited by GitHub: wait until the limit resets and try again"
    if status == 403:
        needed = headers.get("x-accepted-github-permissions")
        return (
            "the token lacks a permission"
            + (f" (GitHub accepts: {needed})" if needed else "")
            + ": a classic token needs the `repo` scope; a fine-grained one needs repository Administration (write) "
            "for environments and Pull requests (write) for comments; in a workflow, grant it under `permissions:` "
            "(a pull request from a fork only ever gets a read-only GITHUB_TOKEN). "
            "It can also be a feature the repository's plan does not include"
        )
    if status >= 500:
        return "GitHub failed to answer: try again later (https://www.githubstatus.com)"
    return _HINTS.get(status, "")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:300]
    message = str(body.get("message") or response.reason_phrase)
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        details = [str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e) for e in errors[:5]]
        message += f" ({'; '.join(details)})"
    return message


def find_token(env: Mapping[str, str] | None = None) -> str | None:
    """GH_TOKEN, then GITHUB_TOKEN, then `gh auth token` when the gh CLI is installed."""
    env = os.environ if env is None else env
    for name in ("GH_TOKEN", "GITHUB_TOKEN"):
        if token := env.get(name, "").strip():
            return token
    gh = shutil.which("gh", path=env.get("PATH"))
    if gh is None:
        return None
    try:
        answer = subprocess.run([gh, "auth", "token"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    token = answer.stdout.strip() if answer.returncode == 0 else ""
    return token or None


def parse_repo(text: str) -> str:
    """`OWNER/NAME`, checked (owners are GitHub logins; names are letters, digits, `.`, `_` and `-`)."""
    repo = text.strip()
    if not _REPO.match(repo) or repo.split("/")[1] in {".", ".."}:
        raise ValueError(f"'{text}' is not a repository as OWNER/NAME (for example octocat/forkcast)")
    return repo


def repo_from_remote(url: str) -> str | None:
    """OWNER/NAME of a github.com remote URL (https or ssh), or None for any other host."""
    match = _GITHUB_REMOTE.match(url.strip())
    return match.group("repo") if match else None


def default_repo(env: Mapping[str, str] | None = None) -> str | None:
    """$GITHUB_REPOSITORY (set in GitHub Actions), else the `origin` remote when it is on github.com."""
    env = os.environ if env is None else env
    if repo := env.get("GITHUB_REPOSITORY", "").strip():
        return repo
    try:
        remote = subprocess.run(
            ["git", "remote", "get-url", "origin"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return repo_from_remote(remote.stdout) if remote.returncode == 0 else None


@dataclass(frozen=True)
class PlannedRequest:
    """A write the dry run did not send."""

    method: str
    path: str
    payload: Any


@dataclass(frozen=True)
class CommentResult:
    action: Literal["created", "updated"]
    comment_id: int | None  # None: a dry run that would create one
    url: str | None
    dry_run: bool = False
    other_marked: int = 0  # further comments carrying the same marker (left alone)


class GitHub:
    """A GitHub REST API session. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        token: str | None,
        *,
        api_url: str = DEFAULT_API_URL,
        dry_run: bool = False,
        echo: Callable[[str], None] = _silent,
        timeout: float = 30.0,
    ) -> None:
        if token is None and not dry_run:
            raise TokenMissingError(
                "no GitHub token: set GH_TOKEN or GITHUB_TOKEN (a classic token with the `repo` scope, or a "
                "fine-grained one with Administration and Pull requests write access), or log in with `gh auth login`"
                " (a dry run needs no token)"
            )
        self.api_url = api_url.rstrip("/")
        self.dry_run = dry_run
        self.echo = echo
        self.planned: list[PlannedRequest] = []
        self._token = token
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout, follow_redirects=False)

    def __enter__(self) -> GitHub:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def can_read(self) -> bool:
        """False only in a dry run without a token, which sends nothing at all."""
        return self._token is not None

    def note_unsent(self, method: str, path: str) -> None:
        self.echo(f"{method} {path}  (dry run without a token: not sent)")

    def _send(
        self, method: str, path: str, params: Mapping[str, Any] | None, payload: Any = None, *, raw: bool = False
    ) -> httpx.Response:
        # A raw download is answered with a redirect to the file's storage: httpx follows it without the token.
        headers = {"Accept": "application/octet-stream"} if raw else None
        try:
            response = self._http.request(
                method, path, params=params, json=payload, headers=headers, follow_redirects=raw
            )
        except httpx.HTTPError as exc:
            raise GitHubError(
                method, path, None, f"cannot reach {self.api_url}: {exc}", "check GITHUB_API_URL and the network"
            ) from exc
        shown = response.request.url.raw_path.decode("ascii")
        self.echo(f"{method} {shown} -> {response.status_code}")
        if response.status_code >= 400:
            status = response.status_code
            raise GitHubError(method, shown, status, _error_message(response), hint_for(status, response.headers))
        return response

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        if not self.can_read:
            raise TokenMissingError(f"GET {path} needs a token")
        return _json(self._send("GET", path, params))

    def download(self, path: str) -> bytes:
        """A release asset's bytes (`/repos/{repo}/releases/assets/{id}`)."""
        if not self.can_read:
            raise TokenMissingError(f"GET {path} needs a token")
        return self._send("GET", path, None, raw=True).content

    def paginate(self, path: str, *, key: str | None = None, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Every item of a listing, page by page (100 per page, following the `Link: rel="next"` header)."""
        if not self.can_read:
            raise TokenMissingError(f"GET {path} needs a token")
        url: str | None = path
        query: Mapping[str, Any] | None = {"per_page": 100, **(params or {})}
        while url is not None:
            response = self._send("GET", url, query)
            body = _json(response)
            items = body.get(key, []) if key and isinstance(body, dict) else body
            if not isinstance(items, list):
                raise GitHubError("GET", path, response.status_code, "the answer is not a list", "")
            yield from items
            url, query = response.links.get("next", {}).get("url"), None
            if url is not None and not url.startswith(self.api_url + "/"):  # never send the token elsewhere
                raise GitHubError("GET", path, None, f"pagination points outside {self.api_url}: {url}", "")

    def write(self, method: str, path: str, payload: Any = None) -> Any:
        """Send a write, or in a dry run print it (with its payload) and send nothing."""
        if method not in WRITE_METHODS:
            raise ValueError(f"{method} is not a write")
        if self.dry_run:
            self.planned.append(PlannedRequest(method, path, payload))
            self.echo(f"{method} {path}  (dry run: not sent)")
            if payload is not None:
                self.echo(json.dumps(payload, indent=2, ensure_ascii=False))
            return None
        return _json(self._send(method, path, None, payload))

    def upsert_comment(
        self, repo: str, issue_number: int, marker: str, body: str, *, author: str | None = None
    ) -> CommentResult:
        """Update the comment carrying the hidden `marker` on a pull request or issue, or create it.

        With `author`, only that account's comments count: someone quoting the marker is not edited.
        """
        tag = hidden_marker(marker)
        text = comment_body(tag, body)
        comments_path = f"/repos/{repo}/issues/{issue_number}/comments"
        if self.can_read:
            marked = [
                c
                for c in self.paginate(comments_path)
                if isinstance(c, dict)
                and tag in str(c.get("body"))
                and (author is None or (c.get("user") or {}).get("login") == author)
            ]
        else:
            self.note_unsent("GET", comments_path)
            marked = []
        if not marked:
            created = self.write("POST", comments_path, {"body": text})
            return _comment_result("created", created, self.dry_run)
        first = marked[0]  # the oldest: listings come in creation order
        updated = self.write("PATCH", f"/repos/{repo}/issues/comments/{first['id']}", {"body": text})
        return _comment_result("updated", first if self.dry_run else updated, self.dry_run, len(marked) - 1)


def _comment_result(
    action: Literal["created", "updated"], comment: Any, dry_run: bool, other_marked: int = 0
) -> CommentResult:
    found = comment if isinstance(comment, dict) else {}
    comment_id, url = found.get("id"), found.get("html_url")
    return CommentResult(action, comment_id if isinstance(comment_id, int) else None, url, dry_run, other_marked)


def _json(response: httpx.Response) -> Any:
    if not response.content or response.is_redirect:  # 303: a branch policy that already exists
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise GitHubError(response.request.method, response.request.url.path, response.status_code, "not JSON") from exc


def hidden_marker(marker: str) -> str:
    """`<!-- marker -->`: invisible in the rendered comment, found again on the next run."""
    text = marker.strip()
    if text.startswith("<!--") and text.endswith("-->") and "-->" not in text[4:-3]:
        return text
    if not text or "--" in text or "<" in text or ">" in text:
        raise ValueError(f"marker '{marker}' must be plain text (no '--', '<' or '>'), like forkcast-pipeline")
    return f"<!-- {text} -->"


def comment_body(tag: str, body: str) -> str:
    """The body with the marker on top, cut to what GitHub accepts."""
    text = body if body.lstrip().startswith(tag) else f"{tag}\n{body}"
    if len(text) > COMMENT_LIMIT:
        text = text[: COMMENT_LIMIT - len(TRUNCATED_NOTE)] + TRUNCATED_NOTE
    return text


def client(
    *, dry_run: bool = False, echo: Callable[[str], None] = _silent, env: Mapping[str, str] | None = None
) -> GitHub:
    """A client configured from the environment: GITHUB_API_URL and the token lookup of `find_token`."""
    env = os.environ if env is None else env
    api_url = env.get("GITHUB_API_URL", "").strip() or DEFAULT_API_URL
    return GitHub(find_token(env), api_url=api_url, dry_run=dry_run, echo=echo)
