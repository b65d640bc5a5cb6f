"""Set up a fork's deployment environments on GitHub, then check that production really waits for a reviewer.

`staging` deploys without approval; `production` needs one of the required reviewers to approve each
deployment ('Review deployments' on the Actions run page). Both take deployments only from one branch (`main`).
The check fails closed: unless GitHub shows every requested reviewer on production, the set-up has failed.
Required reviewers work on public repositories on every plan; on a private repository GitHub offers them only on
a paid plan that supports them (GitHub Free, Pro and Team: public repositories only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from forkcast.release.github import GitHub, GitHubError

STAGING, PRODUCTION = "staging", "production"
MAX_REVIEWERS = 6  # GitHub's limit per environment
MAX_WAIT_TIMER = 43_200  # minutes (30 days), GitHub's limit
CUSTOM_BRANCHES = {"protected_branches": False, "custom_branch_policies": True}
NEXT_STEP = "push to main; approve the production deployment in the Actions run page ('Review deployments')"

ReviewerKind = Literal["User", "Team"]
_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
_TEAM = re.compile(r"^(?P<org>[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/(?P<slug>[A-Za-z0-9._-]{1,100})$")
_BRANCH = re.compile(r"^[A-Za-z0-9._/*-]{1,255}$")


class SetupError(Exception):
    """The set-up cannot run as asked (bad reviewer, branch or wait timer): exit 2."""


@dataclass(frozen=True)
class Reviewer:
    kind: ReviewerKind
    name: str  # a login, or ORG/SLUG for a team
    id: int | str  # a str only as the placeholder of a dry run without a token

    def payload(self) -> dict[str, Any]:
        return {"type": self.kind, "id": self.id}

    def __str__(self) -> str:
        known = isinstance(self.id, int)
        return f"{self.name} ({self.kind.lower()} {self.id if known else 'id not looked up: no token'})"


@dataclass(frozen=True)
class SetupResult:
    repo: str
    private: bool | None  # None: unknown (a dry run without a token)
    reviewers: tuple[Reviewer, ...]
    branch: str
    wait_timer: int
    dry_run: bool
    problems: tuple[str, ...] = field(default=())

    @property
    def verified(self) -> bool:
        return not self.dry_run and not self.problems


def reviewer_names(users: Sequence[str], teams: Sequence[str]) -> list[tuple[ReviewerKind, str]]:
    """The requested reviewers, checked and without duplicates: `login` for users, `ORG/SLUG` for teams."""
    names: list[tuple[ReviewerKind, str]] = []
    for login in (u.strip().removeprefix("@") for u in users):
        if not _LOGIN.match(login):
            raise SetupError(f"--reviewer '{login}' is not a GitHub login")
        names.append(("User", login))
    for team in (t.strip().removeprefix("@") for t in teams):
        if not _TEAM.match(team):
            raise SetupError(f"--team '{team}' is not ORG/SLUG (the team's slug, as in its URL)")
        names.append(("Team", team))
    unique: dict[tuple[str, str], tuple[ReviewerKind, str]] = {}
    for kind, name in names:  # logins and slugs are case-insensitive
        unique.setdefault((kind, name.lower()), (kind, name))
    names = list(unique.values())
    if not names:
        raise SetupError("give at least one --reviewer LOGIN or --team ORG/SLUG: production needs someone to approve")
    if len(names) > MAX_REVIEWERS:
        raise SetupError(f"GitHub allows at most {MAX_REVIEWERS} reviewers per environment, not {len(names)}")
    return names


def check_options(wait_timer: int, branch: str) -> None:
    if not 0 <= wait_timer <= MAX_WAIT_TIMER:
        raise SetupError(f"--wait-timer must be 0..{MAX_WAIT_TIMER} minutes, not {wait_timer}")
    if not _BRANCH.match(branch):
        raise SetupError(f"--branch '{branch}' is not a branch name")


def resolve_reviewer(gh: GitHub, kind: ReviewerKind, name: str) -> Reviewer:
    """The reviewer's numeric id, which the environments API takes (`GET /users/LOGIN`, `/orgs/ORG/teams/SLUG`)."""
    org, _, slug = name.partition("/")
    path = f"/users/{name}" if kind == "User" else f"/orgs/{org}/teams/{slug}"
    if not gh.can_read:
        gh.note_unsent("GET", path)
        return Reviewer(kind, name, f"<id of {kind.lower()} {name}>")
    try:
        found = gh.get(path)
    except GitHubError as exc:
        if exc.status == 404:
            where = "user" if kind == "User" else "team (or the token cannot read the organization's teams)"
            raise SetupError(f"no GitHub {where} '{name}': check the spelling.\n  {exc}") from exc
        raise
    if not isinstance(found, dict) or not isinstance(found.get("id"), int):
        raise SetupError(f"GET {path} answered without a numeric id: {str(found)[:200]}")
    if kind == "User" and found.get("type") != "User":
        kind_found = found.get("type")
        raise SetupError(f"'{name}' is not a user account (GitHub says: {kind_found}): give people, or --team ORG/SLUG")
    return Reviewer(kind, name, found["id"])


def repository_private(gh: GitHub, repo: str) -> bool | None:
    path = f"/repos/{repo}"
    if not gh.can_read:
        gh.note_unsent("GET", path)
        return None
    found = gh.get(path)
    private = found.get("private") if isinstance(found, dict) else None
    return private if isinstance(private, bool) else None


def staging_payload() -> dict[str, Any]:
    # No wait_timer, reviewers or prevent_self_review: GitHub refuses even their defaults where the plan lacks them.
    return {"deployment_branch_policy": CUSTOM_BRANCHES}


def production_payload(reviewers: Sequence[Reviewer], wait_timer: int) -> dict[str, Any]:
    return {
        "wait_timer": wait_timer,
        "prevent_self_review": False,  # a fork's owner is often its only reviewer, and must approve their own runs
        "reviewers": [r.payload() for r in reviewers],
        "deployment_branch_policy": CUSTOM_BRANCHES,
    }


def branch_policy_names(gh: GitHub, repo: str, environment: str) -> list[str]:
    path = f"/repos/{repo}/environments/{environment}/deployment-branch-policies"
    if not gh.can_read:
        gh.note_unsent("GET", path)
        return []
    try:
        return [str(p.get("name")) for p in gh.paginate(path, key="branch_policies") if isinstance(p, dict)]
    except GitHubError as exc:
        if gh.dry_run and exc.status == 404:  # the environment does not exist yet (or allows every branch)
            gh.echo(f"  ({environment} does not exist yet, or lets every branch deploy)")
            return []
        raise


def ensure_branch_policy(gh: GitHub, repo: str, environment: str, branch: str) -> None:
    """Let `branch` deploy to the environment (with custom branch policies, only the listed branches may)."""
    if branch in branch_policy_names(gh, repo, environment):
        gh.echo(f"{environment}: branch '{branch}' may already deploy")
        return
    path = f"/repos/{repo}/environments/{environment}/deployment-branch-policies"
    gh.write("POST", path, {"name": branch, "type": "branch"})


def verification_problems(
    environment: Any, reviewers: Sequence[Reviewer], wait_timer: int, branch: str, branches: Sequence[str]
) -> list[str]:
    """What GitHub shows for production that differs from what was asked (empty: verified). Unknown shapes fail."""
    if not isinstance(environment, dict):
        return ["GitHub's answer for production is not an environment"]
    rules = [r for r in environment.get("protection_rules") or [] if isinstance(r, dict)]
    required = [r for r in rules if r.get("type") == "required_reviewers"]
    problems: list[str] = []
    if not required:
        problems.append("production has no required-reviewers protection rule")
    present = {
        (entry.get("type"), entry["reviewer"].get("id"))
        for rule in required
        for entry in rule.get("reviewers") or []
        if isinstance(entry, dict) and isinstance(entry.get("reviewer"), dict)
    }
    if required:
        missing = [r for r in reviewers if (r.kind, r.id) not in present]
        problems += [f"{r.kind.lower()} {r.name} is not among production's reviewers" for r in missing]
    if any(r.get("prevent_self_review") is True for r in required):
        problems.append("production prevents self-review: a sole reviewer could not approve their own deployment")
    if wait_timer and not any(r.get("type") == "wait_timer" and r.get("wait_timer") == wait_timer for r in rules):
        problems.append(f"production has no {wait_timer}-minute wait timer")
    policy = environment.get("deployment_branch_policy")
    if not isinstance(policy, dict) or any(policy.get(k) is not v for k, v in CUSTOM_BRANCHES.items()):
        problems.append(f"production does not restrict deployments to chosen branches ({policy})")
    elif branch not in branches:
        problems.append(f"branch '{branch}' is not allowed to deploy to production")
    return problems


def approval_problems(gh: GitHub, repo: str) -> list[str]:
    """Why a production deployment would NOT wait for a reviewer (empty: it will). For the release workflow.

    GitHub creates an environment a job names when it does not exist, with no protection at all, so a
    release must check before its production job starts rather than trust the environment to stop it.
    """
    try:
        environment = gh.get(f"/repos/{repo}/environments/{PRODUCTION}")
    except GitHubError as exc:
        if exc.status == 404:
            return ["there is no production environment yet: the first deployment would create one with no reviewers"]
        raise
    rules = environment.get("protection_rules") if isinstance(environment, dict) else None
    reviewers = [
        entry
        for rule in rules or []
        if isinstance(rule, dict) and rule.get("type") == "required_reviewers"
        for entry in rule.get("reviewers") or []
    ]
    return [] if reviewers else ["production has no required reviewers"]


def setup(
    gh: GitHub, repo: str, reviewers: Sequence[tuple[ReviewerKind, str]], *, wait_timer: int = 0, branch: str = "main"
) -> SetupResult:
    """Create or update both environments, then read production back. Idempotent: run it again at will."""
    check_options(wait_timer, branch)
    private = repository_private(gh, repo)
    resolved = tuple(resolve_reviewer(gh, kind, name) for kind, name in reviewers)
    result = SetupResult(repo, private, resolved, branch, wait_timer, gh.dry_run)
    gh.write("PUT", f"/repos/{repo}/environments/{STAGING}", staging_payload())
    ensure_branch_policy(gh, repo, STAGING, branch)
    try:
        gh.write("PUT", f"/repos/{repo}/environments/{PRODUCTION}", production_payload(resolved, wait_timer))
    except GitHubError as exc:
        if private and exc.status in {403, 422}:  # "Please ensure the billing plan supports ..." on private repos
            return _with(result, [f"GitHub refused production's protection rules: {exc.github_message}"])
        raise
    ensure_branch_policy(gh, repo, PRODUCTION, branch)
    if gh.dry_run:
        return result
    environment = gh.get(f"/repos/{repo}/environments/{PRODUCTION}")
    branches = branch_policy_names(gh, repo, PRODUCTION)
    return _with(result, verification_problems(environment, resolved, wait_timer, branch, branches))


def _with(result: SetupResult, problems: Sequence[str]) -> SetupResult:
    return SetupResult(
        result.repo, result.private, result.reviewers, result.branch, result.wait_timer, result.dry_run, tuple(problems)
    )


def summary(result: SetupResult) -> str:
    visibility = {True: "private", False: "public", None: "visibility not checked"}[result.private]
    verified = "skipped (dry run)" if result.dry_run else ("yes" if result.verified else "NO")
    lines = [
        f"repository:   {result.repo} ({visibility})",
        f"environments: {STAGING} (no approval), {PRODUCTION} (reviewers requested); both deploy only from "
        f"'{result.branch}'",
        f"reviewers:    {', '.join(str(r) for r in result.reviewers)}",
        f"wait timer:   {result.wait_timer} minutes",
        f"verified:     {verified}",
    ]
    if result.dry_run:
        lines.append("next: run again without --dry-run to apply")
    elif result.verified:
        lines.append(f"next: {NEXT_STEP}")
    return "\n".join(lines)


def not_protected_message(result: SetupResult) -> str:
    """Why production is not protected, and what to do about it."""
    lines = [f"production on {result.repo} is NOT protected by required reviewers:"]
    lines += [f"  - {problem}" for problem in result.problems]
    plan = (
        "required reviewers on a private repository need a paid plan that supports them (on GitHub Free, Pro and "
        "Team they work only in public repositories). Make the repository public (Settings > General > Danger Zone "
        "> Change visibility) or move it to a plan that supports them"
    )
    access = "make sure each reviewer has at least read access to the repository (Settings > Collaborators and teams)"
    if result.private:
        lines.append(f"{result.repo} is private: {plan}, then run `forkcast setup-github` again.")
    elif result.private is False:
        lines.append(
            f"{result.repo} is public, so every plan supports required reviewers: {access}, look at Settings > "
            "Environments > production, then run `forkcast setup-github` again."
        )
    else:
        lines.append(f"If the repository is private, {plan}. Otherwise {access}, then run `forkcast setup-github`.")
    lines.append("Until then a production deployment would not wait for anyone's approval: do not rely on it.")
    return "\n".join(lines)
