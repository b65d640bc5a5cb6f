"""One GitHub issue per ongoing problem (input drift, an unhealthy endpoint), never one per night.

While the problem lasts, the nightly job opens the issue or updates it in place; when it clears, the job
comments and closes it. The issue is found again by a hidden marker in its body among the open issues,
so renaming it or its label does not make a second one.

A repository with Issues turned off (a fork's default) answers 410: the alert then reports "issues off"
instead of failing, and the caller puts it where it can (the job summary), so an hourly health check of a
healthy endpoint never fails for want of an issue tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from forkcast.release.github import GitHub, GitHubError, comment_body, hidden_marker

ISSUES_OFF = 410  # GitHub's answer to the issues API of a repository with Issues turned off


@dataclass(frozen=True)
class AlertResult:
    action: Literal["opened", "updated", "cleared", "nothing to clear", "issues off"]
    number: int | None  # None: a dry run that would open one, or nothing to clear
    url: str | None
    dry_run: bool = False


def find_open(gh: GitHub, repo: str, tag: str, author: str | None = None) -> dict[str, Any] | None:
    """The oldest open issue (not pull request) whose body carries `tag` (and, with `author`, opened by them:
    anyone can quote the marker in an issue of a public repository)."""
    if not gh.can_read:
        gh.note_unsent("GET", f"/repos/{repo}/issues")
        return None
    issues = gh.paginate(f"/repos/{repo}/issues", params={"state": "open", "sort": "created", "direction": "asc"})
    for issue in issues:
        if not isinstance(issue, dict) or "pull_request" in issue or tag not in str(issue.get("body")):
            continue
        if author is None or (issue.get("user") or {}).get("login") == author:
            return issue
    return None


def raise_alert(
    gh: GitHub, repo: str, marker: str, *, title: str, body: str, labels: list[str], author: str | None = None
) -> AlertResult:
    """Open the problem's issue, or update the one already open."""
    tag = hidden_marker(marker)
    text = comment_body(tag, body)
    try:
        existing = find_open(gh, repo, tag, author)
    except GitHubError as exc:
        if exc.status == ISSUES_OFF:
            return AlertResult("issues off", None, None, gh.dry_run)
        raise
    if existing is not None:
        number = int(existing["number"])
        gh.write("PATCH", f"/repos/{repo}/issues/{number}", {"title": title, "body": text})
        return AlertResult("updated", number, existing.get("html_url"), gh.dry_run)
    created = gh.write("POST", f"/repos/{repo}/issues", {"title": title, "body": text, "labels": labels})
    found = created if isinstance(created, dict) else {}
    return AlertResult("opened", found.get("number"), found.get("html_url"), gh.dry_run)


def clear_alert(gh: GitHub, repo: str, marker: str, body: str, author: str | None = None) -> AlertResult:
    """Say on the open issue that the problem cleared, and close it; nothing when none is open."""
    try:
        existing = find_open(gh, repo, hidden_marker(marker), author)
    except GitHubError as exc:
        if exc.status == ISSUES_OFF:
            return AlertResult("issues off", None, None, gh.dry_run)
        raise
    if existing is None:
        return AlertResult("nothing to clear", None, None, gh.dry_run)
    number = int(existing["number"])
    gh.write("POST", f"/repos/{repo}/issues/{number}/comments", {"body": body})
    gh.write("PATCH", f"/repos/{repo}/issues/{number}", {"state": "closed", "state_reason": "completed"})
    return AlertResult("cleared", number, existing.get("html_url"), gh.dry_run)
