"""The GitHub client, `forkcast comment` and `forkcast setup-github`, against a local fake of GitHub's REST API.

GitHub is out of reach from the test machines, so a small in-memory server on 127.0.0.1 answers the endpoints
these commands call, shaped like GitHub's documented answers (and its known refusals).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from forkcast.cli import main
from forkcast.release import github, github_setup
from forkcast.release.github_setup import NEXT_STEP, Reviewer

REPO = "octocat/forkcast"
TOKEN = "test-token"
BRANCHES = {"protected_branches": False, "custom_branch_policies": True}
PLAN_REFUSAL = (
    "Failed to create the environment protection rule. "
    "Please ensure the billing plan supports the required reviewers protection rule."
)


Query = dict[str, list[str]]
Answer = tuple[int, Any, str]  # status, JSON body, Link header
Endpoint = Callable[[str, str, Query, Any], Answer]


@dataclass
class Seen:
    method: str
    path: str  # with the query string
    payload: Any
    headers: dict[str, str]


@dataclass
class FakeGitHub:
    """GitHub's state for one repository, and what the server was asked."""

    url: str = ""
    private: bool = False
    plan_refuses_rules: bool = False  # 422 on reviewers/wait timer, like a private repository on GitHub Free
    plan_drops_rules: bool = False  # accepts them but shows none: what fail-closed must catch
    refuse_writes: str | None = None  # a 403 message for every write (a fork's read-only GITHUB_TOKEN)
    issues_off: bool = False  # 410 from the issues API, as for a fork (Issues are off in forks by default)
    users: dict[str, tuple[int, str]] = field(
        default_factory=lambda: {"alice": (101, "User"), "bob": (102, "User"), "github": (9919, "Organization")}
    )
    teams: dict[str, int] = field(default_factory=lambda: {"my-org/ops": 501})
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    branch_policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    releases: list[dict[str, Any]] = field(default_factory=list)  # newest first, as GitHub lists them
    latest: str | None = None  # the tag GitHub answers for /releases/latest
    assets: dict[int, bytes] = field(default_factory=dict)  # served from another origin, like GitHub's storage
    deployments: list[dict[str, Any]] = field(default_factory=list)  # newest first, each with its statuses
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # run id -> its deployment reviews
    refuse_reviews: bool = False  # 403 on a run's review history, as for a token without `actions: read`
    seen: list[Seen] = field(default_factory=list)
    next_id: int = 1000

    @property
    def writes(self) -> list[Seen]:
        return [s for s in self.seen if s.method != "GET"]

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def add_comment(self, number: int, body: str, author: str = "github-actions[bot]") -> dict[str, Any]:
        comment_id = self.new_id()
        comment = {
            "id": comment_id,
            "body": body,
            "html_url": f"https://github.com/{REPO}/pull/{number}#c{comment_id}",
            "user": {"login": author, "type": "Bot" if author.endswith("[bot]") else "User"},
        }
        self.comments.setdefault(number, []).append(comment)
        return comment

    def add_release(self, tag: str, published_at: str, files: dict[str, bytes]) -> None:
        assets = []
        for name, data in files.items():
            asset_id = self.new_id()
            self.assets[asset_id] = data
            assets.append({"id": asset_id, "name": name, "size": len(data)})
        release = {"tag_name": tag, "draft": False, "published_at": published_at, "assets": assets}
        self.releases.insert(0, release)

    def releases_endpoint(self, method: str, _: str, query: Query, payload: Any) -> Answer:
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        link = ""
        if page * per_page < len(self.releases):
            link = f'<{self.url}/repos/{REPO}/releases?per_page={per_page}&page={page + 1}>; rel="next"'
        return 200, self.releases[(page - 1) * per_page : page * per_page], link

    def replace_asset(self, tag: str, name: str, data: bytes) -> None:
        """`gh release upload --clobber`: the release's asset of that name, replaced."""
        release = next(release for release in self.releases if release["tag_name"] == tag)
        release["assets"] = [asset for asset in release["assets"] if asset["name"] != name]
        asset_id = self.new_id()
        self.assets[asset_id] = data
        release["assets"].append({"id": asset_id, "name": name, "size": len(data)})

    def review(self, run_id: int, login: str, environment: str, state: str = "approved") -> None:
        """A reviewer's decision on a run's deployment to an environment, shaped like GitHub's review history."""
        entry = {"environments": [{"id": 7, "name": environment}], "state": state, "comment": "",
                 "user": {"login": login, "type": "User"}}  # fmt: skip
        self.reviews.setdefault(run_id, []).append(entry)

    def reviews_endpoint(self, method: str, run_id: str, query: Query, payload: Any) -> Answer:
        if self.refuse_reviews:
            return 403, {"message": "Resource not accessible by integration"}, ""
        return 200, self.reviews.get(int(run_id), []), ""

    def tag_endpoint(self, method: str, tag: str, query: Query, payload: Any) -> Answer:
        found = [release for release in self.releases if release["tag_name"] == tag]
        return (200, found[0], "") if found else (404, {"message": "Not Found"}, "")

    def add_deployment(self, environment: str, *statuses: tuple[str, str]) -> None:
        """A deployment and its statuses (state, environment_url), oldest status first as they happen."""
        listed = [{"state": state, "environment_url": url} for state, url in reversed(statuses)]
        self.deployments.insert(0, {"id": self.new_id(), "environment": environment, "statuses": listed})

    def deployments_endpoint(self, method: str, _: str, query: Query, payload: Any) -> Answer:
        environment = query.get("environment", [None])[0]
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        found = [d for d in self.deployments if environment in (None, d["environment"])][:per_page]
        return 200, [{"id": d["id"], "environment": d["environment"]} for d in found], ""

    def statuses_endpoint(self, method: str, deployment_id: str, query: Query, payload: Any) -> Answer:
        found = [d for d in self.deployments if d["id"] == int(deployment_id)]
        return (200, found[0]["statuses"], "") if found else (404, {"message": "Not Found"}, "")

    def latest_endpoint(self, method: str, _: str, query: Query, payload: Any) -> Answer:
        found = [release for release in self.releases if release["tag_name"] == self.latest]
        return (200, found[0], "") if found else (404, {"message": "Not Found"}, "")

    def asset_endpoint(self, method: str, asset_id: str, query: Query, payload: Any) -> Answer:
        if int(asset_id) not in self.assets:
            return 404, {"message": "Not Found"}, ""
        # GitHub redirects a download to its storage, on another host, with a signed URL.
        storage = self.url.replace("127.0.0.1", "localhost")
        return 302, {"location": f"{storage}/storage/{asset_id}?signature=s"}, ""

    def environment(self, name: str) -> dict[str, Any]:
        config = self.environments[name]
        rules: list[dict[str, Any]] = []
        if config.get("wait_timer") and not self.plan_drops_rules:
            rules.append({"id": 1, "node_id": "W", "type": "wait_timer", "wait_timer": config["wait_timer"]})
        if config.get("reviewers") and not self.plan_drops_rules:
            reviewers = [{"type": r["type"], "reviewer": self.reviewer(r)} for r in config["reviewers"]]
            rules.append(
                {
                    "id": 2,
                    "node_id": "R",
                    "type": "required_reviewers",
                    "prevent_self_review": config.get("prevent_self_review", False),
                    "reviewers": reviewers,
                }
            )
        if config.get("deployment_branch_policy"):
            rules.append({"id": 3, "node_id": "B", "type": "branch_policy"})
        return {
            "id": 7,
            "name": name,
            "url": f"{self.url}/repos/{REPO}/environments/{name}",
            "protection_rules": rules,
            "deployment_branch_policy": config.get("deployment_branch_policy"),
        }

    def reviewer(self, entry: dict[str, Any]) -> dict[str, Any]:
        if entry["type"] == "User":
            login = next(name for name, (id_, _) in self.users.items() if id_ == entry["id"])
            return {"login": login, "id": entry["id"], "type": "User"}
        slug = next(name for name, id_ in self.teams.items() if id_ == entry["id"]).split("/")[1]
        return {"id": entry["id"], "slug": slug}

    def answer(self, method: str, path: str, query: dict[str, list[str]], payload: Any) -> Answer:
        """(status, JSON body, Link header) for one request."""
        if self.refuse_writes and method != "GET":
            return 403, {"message": self.refuse_writes}, ""
        prefix = f"/repos/{REPO}"
        routes: list[tuple[str, Endpoint]] = [
            (r"/users/([^/]+)", self.user_endpoint),
            (r"/orgs/([^/]+)/teams/([^/]+)", self.team_endpoint),
            (prefix, lambda *_: (200, {"full_name": REPO, "private": self.private}, "")),
            (rf"{prefix}/environments/([^/]+)", self.environment_endpoint),
            (rf"{prefix}/environments/([^/]+)/deployment-branch-policies", self.branch_policy_endpoint),
            (rf"{prefix}/issues", self.issues_endpoint),
            (rf"{prefix}/issues/(\d+)", self.issue_endpoint),
            (rf"{prefix}/issues/(\d+)/comments", self.comments_endpoint),
            (rf"{prefix}/issues/comments/(\d+)", self.comment_endpoint),
            (rf"{prefix}/releases", self.releases_endpoint),
            (rf"{prefix}/releases/(latest)", self.latest_endpoint),
            (rf"{prefix}/releases/assets/(\d+)", self.asset_endpoint),
            (rf"{prefix}/releases/tags/([^/]+)", self.tag_endpoint),
            (rf"{prefix}/actions/runs/(\d+)/approvals", self.reviews_endpoint),
            (rf"{prefix}/deployments", self.deployments_endpoint),
            (rf"{prefix}/deployments/(\d+)/statuses", self.statuses_endpoint),
        ]
        for pattern, endpoint in routes:
            if match := re.fullmatch(pattern, path):
                return endpoint(method, "/".join(match.groups()), query, payload)
        return 404, {"message": "Not Found"}, ""

    def user_endpoint(self, method: str, login: str, query: Query, payload: Any) -> Answer:
        if login not in self.users:
            return 404, {"message": "Not Found"}, ""
        id_, kind = self.users[login]
        return 200, {"login": login, "id": id_, "type": kind}, ""

    def team_endpoint(self, method: str, team: str, query: Query, payload: Any) -> Answer:
        if team not in self.teams:
            return 404, {"message": "Not Found"}, ""
        return 200, {"id": self.teams[team], "slug": team.split("/")[1]}, ""

    def environment_endpoint(self, method: str, name: str, query: Query, payload: Any) -> Answer:
        if method == "GET":
            return (200, self.environment(name), "") if name in self.environments else (404, {}, "")
        policy = payload.get("deployment_branch_policy")
        if policy and policy["protected_branches"] == policy["custom_branch_policies"]:
            return 422, {"message": "Validation Failed"}, ""
        if self.plan_refuses_rules and {"reviewers", "wait_timer", "prevent_self_review"} & set(payload):
            return 422, {"message": PLAN_REFUSAL}, ""
        known = {id_ for id_, _ in self.users.values()} | set(self.teams.values())
        if any(r["id"] not in known for r in payload.get("reviewers") or []):
            return 422, {"message": "Validation Failed", "errors": ["reviewer not found"]}, ""
        self.environments.setdefault(name, {}).update(payload)
        return 200, self.environment(name), ""

    def branch_policy_endpoint(self, method: str, name: str, query: Query, payload: Any) -> Answer:
        config = self.environments.get(name, {})
        if not (config.get("deployment_branch_policy") or {}).get("custom_branch_policies"):
            return 404, {"message": "Not Found"}, ""
        policies = self.branch_policies.setdefault(name, [])
        if method == "GET":
            return 200, {"total_count": len(policies), "branch_policies": policies}, ""
        if any(p["name"] == payload["name"] for p in policies):
            return 303, {}, ""
        policy = {"id": self.new_id(), "node_id": "P", "name": payload["name"], "type": payload.get("type")}
        policies.append(policy)
        return 200, policy, ""

    def issues_endpoint(self, method: str, _: str, query: Query, payload: Any) -> Answer:
        if self.issues_off:
            return 410, {"message": "Issues are disabled for this repo", "status": "410"}, ""
        if method == "POST":
            number = self.new_id()
            issue = {"number": number, "state": "open", "html_url": f"https://github.com/{REPO}/issues/{number}"}
            issue["user"] = {"login": "github-actions[bot]"}  # who a workflow's GITHUB_TOKEN writes as
            self.issues[number] = issue | {"title": payload["title"], "body": payload["body"]}
            self.issues[number]["labels"] = [{"name": name} for name in payload.get("labels", [])]
            return 201, self.issues[number], ""
        state = query.get("state", ["open"])[0]
        return 200, [i for i in self.issues.values() if state == "all" or i["state"] == state], ""

    def issue_endpoint(self, method: str, number: str, query: Query, payload: Any) -> Answer:
        if int(number) not in self.issues:
            return 404, {"message": "Not Found"}, ""
        if method == "PATCH":
            self.issues[int(number)].update(payload)
        return 200, self.issues[int(number)], ""

    def comments_endpoint(self, method: str, number: str, query: Query, payload: Any) -> Answer:
        if method == "POST":
            return 201, self.add_comment(int(number), payload["body"]), ""
        comments = self.comments.get(int(number), [])
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        link = ""
        if page * per_page < len(comments):
            link = f'<{self.url}/repos/{REPO}/issues/{number}/comments?per_page={per_page}&page={page + 1}>; rel="next"'
        return 200, comments[(page - 1) * per_page : page * per_page], link

    def comment_endpoint(self, method: str, comment_id: str, query: Query, payload: Any) -> Answer:
        for comment in (c for comments in self.comments.values() for c in comments):
            if method == "PATCH" and comment["id"] == int(comment_id):
                comment["body"] = payload["body"]
                return 200, comment, ""
        return 404, {"message": "Not Found"}, ""


def _handler(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length)) if length else None
            fake.seen.append(Seen(self.command, self.path, payload, dict(self.headers.items())))
            if url.path.startswith("/storage/"):
                self._storage(int(url.path.rsplit("/", 1)[1]))
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, body, link = 401, {"message": "Bad credentials"}, ""
            else:
                status, body, link = fake.answer(self.command, url.path, parse_qs(url.query), payload)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if link:
                self.send_header("Link", link)
            if status == 302:
                self.send_header("Location", body["location"])
            self.end_headers()
            self.wfile.write(data)

        def _storage(self, asset_id: int) -> None:
            """Like a signed storage URL: it refuses a request that also carries the API token."""
            if "Authorization" in self.headers:
                self.send_response(400)
                self.end_headers()
                return
            data = fake.assets[asset_id]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    return Handler


@contextlib.contextmanager
def serving(state: FakeGitHub) -> Iterator[FakeGitHub]:
    """The fake answering on a free port of 127.0.0.1 (its `url`) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeGitHub]:
    with serving(FakeGitHub()) as state:
        monkeypatch.setenv("GITHUB_API_URL", state.url)
        monkeypatch.setenv("GH_TOKEN", TOKEN)
        for name in ("GITHUB_TOKEN", "GITHUB_REPOSITORY"):
            monkeypatch.delenv(name, raising=False)
        yield state


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token anywhere: no variables, and no `gh` on PATH."""
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))


def planned_writes(output: str) -> list[tuple[str, str, Any]]:
    """The writes a dry run printed: `METHOD /path  (dry run: not sent)` followed by its JSON payload."""
    lines = output.splitlines()
    writes = []
    for number, line in enumerate(lines):
        if match := re.fullmatch(r"(PUT|POST|PATCH|DELETE) (\S+)  \(dry run: not sent\)", line):
            end = lines.index("}", number + 1)
            writes.append((match[1], match[2], json.loads("\n".join(lines[number + 1 : end + 1]))))
    return writes


def setup_github(*extra: str) -> list[str]:
    return ["setup-github", "--repo", REPO, "--reviewer", "alice", "--team", "my-org/ops", *extra]


def expected_writes(alice: Any, ops: Any, wait_timer: int) -> list[tuple[str, str, Any]]:
    environments = f"/repos/{REPO}/environments"
    policy = {"name": "main", "type": "branch"}
    production = {
        "wait_timer": wait_timer,
        "prevent_self_review": False,
        "reviewers": [{"type": "User", "id": alice}, {"type": "Team", "id": ops}],
        "deployment_branch_policy": BRANCHES,
    }
    return [
        ("PUT", f"{environments}/staging", {"deployment_branch_policy": BRANCHES}),
        ("POST", f"{environments}/staging/deployment-branch-policies", policy),
        ("PUT", f"{environments}/production", production),
        ("POST", f"{environments}/production/deployment-branch-policies", policy),
    ]


# --- setup-github ---------------------------------------------------------------------------------------------


def test_dry_run_prints_the_exact_writes_and_sends_none(fake: FakeGitHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(setup_github("--wait-timer", "5", "--dry-run")) == 0
    output = capsys.readouterr().out
    assert planned_writes(output) == expected_writes(101, 501, 5)  # ids looked up with the token
    assert fake.writes == []
    assert fake.seen, "a dry run with a token reads, so its payloads carry real ids"
    assert fake.environments == {}
    assert "verified:     skipped (dry run)" in output


def test_dry_run_without_a_token_sends_nothing_at_all(
    fake: FakeGitHub, no_token: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(setup_github("--dry-run")) == 0
    output = capsys.readouterr().out
    assert planned_writes(output) == expected_writes("<id of user alice>", "<id of team my-org/ops>", 0)
    assert "GET /users/alice  (dry run without a token: not sent)" in output
    assert fake.seen == []


def test_setup_creates_both_environments_and_verifies_production(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(setup_github("--wait-timer", "3")) == 0
    output = capsys.readouterr().out
    assert set(fake.environments) == {"staging", "production"}
    assert "reviewers" not in fake.environments["staging"]
    assert fake.environments["production"]["reviewers"] == [{"type": "User", "id": 101}, {"type": "Team", "id": 501}]
    assert [p["name"] for p in fake.branch_policies["production"]] == ["main"]
    assert [p["name"] for p in fake.branch_policies["staging"]] == ["main"]
    assert f"PUT /repos/{REPO}/environments/production -> 200" in output
    assert "verified:     yes" in output
    assert f"next: {NEXT_STEP}" in output
    for request in fake.seen:
        assert request.headers["Accept"] == "application/vnd.github+json"
        assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_setup_runs_again_without_duplicating_branch_policies(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(setup_github()) == 0
    writes_of_first_run = len(fake.writes)
    assert main(setup_github()) == 0
    second = fake.writes[writes_of_first_run:]
    assert [w.method for w in second] == ["PUT", "PUT"]  # the branch policies are already there
    assert len(fake.branch_policies["production"]) == 1
    assert "production: branch 'main' may already deploy" in capsys.readouterr().out


def test_private_repo_whose_plan_drops_the_reviewers_fails_closed(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.private, fake.plan_drops_rules = True, True
    assert main(setup_github()) == 1
    output = capsys.readouterr()
    assert "verified:     NO" in output.out
    assert NEXT_STEP not in output.out
    assert "production has no required-reviewers protection rule" in output.err
    assert f"{REPO} is private" in output.err
    assert "paid plan" in output.err
    assert "would not wait for anyone's approval" in output.err


def test_private_repo_whose_plan_refuses_the_reviewers_fails_closed(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.private, fake.plan_refuses_rules = True, True
    assert main(setup_github()) == 1
    error = capsys.readouterr().err
    assert PLAN_REFUSAL in error
    assert "paid plan" in error
    assert "staging" in fake.environments  # staging needs no plan feature
    assert "production" not in fake.environments


def test_public_repo_without_the_reviewers_points_at_access_not_the_plan(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.plan_drops_rules = True
    assert main(setup_github()) == 1
    error = capsys.readouterr().err
    assert f"{REPO} is public" in error
    assert "read access" in error
    assert "paid plan" not in error


def test_an_unknown_reviewer_is_a_usage_error_before_any_write(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["setup-github", "--repo", REPO, "--reviewer", "nobody-here"]) == 2
    error = capsys.readouterr().err
    assert "no GitHub user 'nobody-here'" in error
    assert "GET /users/nobody-here failed: HTTP 404: Not Found" in error
    assert fake.writes == []


def test_an_organization_is_not_a_reviewer(fake: FakeGitHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["setup-github", "--repo", REPO, "--reviewer", "github"]) == 2
    assert "'github' is not a user account (GitHub says: Organization)" in capsys.readouterr().err
    assert fake.writes == []


def test_no_token_is_a_usage_error_naming_where_tokens_come_from(
    fake: FakeGitHub, no_token: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(setup_github()) == 2
    error = capsys.readouterr().err
    for source in ("GH_TOKEN", "GITHUB_TOKEN", "gh auth login"):
        assert source in error
    assert fake.seen == []


def test_a_bad_token_says_so(
    fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GH_TOKEN", "expired")
    assert main(setup_github()) == 2
    error = capsys.readouterr().err
    assert f"GET /repos/{REPO} failed: HTTP 401: Bad credentials" in error
    assert "the token is invalid or expired" in error


def test_github_out_of_reach_is_not_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    assert main(setup_github()) == 1
    assert f"cannot reach http://127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--repo", "not-a-repo", "--reviewer", "alice"], "'not-a-repo' is not a repository as OWNER/NAME"),
        (["--repo", REPO], "give at least one --reviewer LOGIN or --team ORG/SLUG"),
        (["--repo", REPO, "--team", "ops"], "--team 'ops' is not ORG/SLUG"),
        (["--repo", REPO, "--reviewer", "alice", "--wait-timer", "50000"], "--wait-timer must be 0..43200"),
        (["--repo", REPO, *[f"--reviewer=user{i}" for i in range(7)]], "at most 6 reviewers"),
    ],
)
def test_bad_arguments_are_usage_errors(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["setup-github", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert fake.seen == []


def test_the_repository_defaults_to_a_github_origin_remote(
    fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", f"git@github.com:{REPO}.git"], check=True)
    monkeypatch.chdir(tmp_path)
    assert main(["setup-github", "--reviewer", "alice", "--dry-run"]) == 0
    assert f"GET /repos/{REPO} -> 200" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "repo"),
    [
        ("https://github.com/octocat/forkcast.git", "octocat/forkcast"),
        ("https://x-access-token:abc@github.com/octocat/forkcast", "octocat/forkcast"),
        ("git@github.com:octocat/fork.cast.git\n", "octocat/fork.cast"),
        ("ssh://git@github.com/octocat/forkcast.git", "octocat/forkcast"),
        ("https://gitlab.com/octocat/forkcast.git", None),
        ("/srv/git/forkcast.git", None),
    ],
)
def test_repo_from_remote(url: str, repo: str | None) -> None:
    assert github.repo_from_remote(url) == repo


ALICE, OPS = Reviewer("User", "alice", 101), Reviewer("Team", "my-org/ops", 501)
GOOD_RULE = {
    "type": "required_reviewers",
    "prevent_self_review": False,
    "reviewers": [{"type": "User", "reviewer": {"id": 101}}, {"type": "Team", "reviewer": {"id": 501}}],
}


def environment(*rules: Any, policy: Any = BRANCHES) -> dict[str, Any]:
    return {"name": "production", "protection_rules": list(rules), "deployment_branch_policy": policy}


def test_verification_passes_only_when_everything_asked_is_there() -> None:
    assert github_setup.verification_problems(environment(GOOD_RULE), [ALICE, OPS], 0, "main", ["main"]) == []


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (None, "not an environment"),
        ({"name": "production", "protection_rules": None}, "no required-reviewers protection rule"),
        (environment({"type": "required_reviewers"}), "user alice is not among production's reviewers"),
        (environment({**GOOD_RULE, "reviewers": [{"type": "User", "reviewer": {"id": 101}}]}), "team my-org/ops"),
        (environment({**GOOD_RULE, "reviewers": [{"type": "Team", "reviewer": {"id": 101}}]}), "user alice"),
        (environment({**GOOD_RULE, "reviewers": [{"type": "User", "id": 101}]}), "user alice"),  # unknown shape
        (environment({**GOOD_RULE, "prevent_self_review": True}), "prevents self-review"),
        (environment(GOOD_RULE, policy=None), "does not restrict deployments"),
        (environment(GOOD_RULE, policy={"protected_branches": True, "custom_branch_policies": False}), "restrict"),
    ],
)
def test_verification_fails_closed_on_anything_unexpected(answer: Any, problem: str) -> None:
    problems = github_setup.verification_problems(answer, [ALICE, OPS], 0, "main", ["main"])
    assert any(problem in p for p in problems), problems


def test_verification_checks_the_wait_timer_and_the_branch() -> None:
    problems = github_setup.verification_problems(environment(GOOD_RULE), [ALICE, OPS], 10, "main", ["release/*"])
    assert problems == [
        "production has no 10-minute wait timer",
        "branch 'main' is not allowed to deploy to production",
    ]


# --- comments -------------------------------------------------------------------------------------------------


def test_upsert_comment_creates_then_updates_the_same_comment(fake: FakeGitHub) -> None:
    with github.client() as gh:
        first = gh.upsert_comment(REPO, 7, "forkcast-pipeline", "first run")
        second = gh.upsert_comment(REPO, 7, "forkcast-pipeline", "second run")
    assert (first.action, second.action) == ("created", "updated")
    assert first.comment_id == second.comment_id is not None
    assert [c["body"] for c in fake.comments[7]] == ["<!-- forkcast-pipeline -->\nsecond run"]
    assert [w.method for w in fake.writes] == ["POST", "PATCH"]


def test_upsert_comment_with_an_author_leaves_a_persons_quote_of_the_marker_alone(fake: FakeGitHub) -> None:
    quoted = fake.add_comment(7, "why does <!-- forkcast-pipeline --> show up?", author="alice")
    with github.client() as gh:
        result = gh.upsert_comment(REPO, 7, "forkcast-pipeline", "the report", author="github-actions[bot]")
    assert result.action == "created"
    assert quoted["body"] == "why does <!-- forkcast-pipeline --> show up?"
    assert [w.method for w in fake.writes] == ["POST"]


def test_upsert_comment_finds_the_marker_on_a_later_page(fake: FakeGitHub) -> None:
    for number in range(100):
        fake.add_comment(7, f"a human comment {number}")
    marked = fake.add_comment(7, "<!-- forkcast-pipeline -->\nold results")
    with github.client() as gh:
        result = gh.upsert_comment(REPO, 7, "<!-- forkcast-pipeline -->", "new results")
    assert result.action == "updated"
    assert result.comment_id == marked["id"]
    assert len(fake.comments[7]) == 101
    assert marked["body"] == "<!-- forkcast-pipeline -->\nnew results"
    assert [s.path for s in fake.seen if s.method == "GET"] == [
        f"/repos/{REPO}/issues/7/comments?per_page=100",
        f"/repos/{REPO}/issues/7/comments?per_page=100&page=2",
    ]


def test_upsert_comment_in_a_dry_run_records_the_write_without_sending_it(fake: FakeGitHub) -> None:
    fake.add_comment(3, "<!-- forkcast-pipeline -->\nold")
    with github.client(dry_run=True) as gh:
        result = gh.upsert_comment(REPO, 3, "forkcast-pipeline", "new")
    assert result.dry_run
    assert result.action == "updated"
    patch = gh.planned[0]
    assert (patch.method, patch.path) == ("PATCH", f"/repos/{REPO}/issues/comments/{fake.comments[3][0]['id']}")
    assert patch.payload == {"body": "<!-- forkcast-pipeline -->\nnew"}
    assert fake.writes == []
    assert fake.comments[3][0]["body"].endswith("old")


def test_a_body_longer_than_github_accepts_is_cut_with_a_note() -> None:
    body = github.comment_body("<!-- m -->", "x" * 100_000)
    assert len(body) == github.COMMENT_LIMIT
    assert body.startswith("<!-- m -->\n")
    assert body.endswith(github.TRUNCATED_NOTE)


@pytest.mark.parametrize("marker", ["", "a -- b", "<b>", "<!-- a --> b -->"])
def test_a_marker_that_would_not_stay_hidden_is_refused(marker: str) -> None:
    with pytest.raises(ValueError, match="must be plain text"):
        github.hidden_marker(marker)


def comment_args(body_file: Path, *extra: str) -> list[str]:
    args = ["comment", "--repo", REPO, "--pr", "7", "--marker", "forkcast-pipeline", "--body-file", str(body_file)]
    return [*args, *extra]


def test_comment_command_posts_once_then_updates(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "summary.md"
    body.write_text("| metric | value |\n")
    assert main(comment_args(body)) == 0
    assert "created comment" in capsys.readouterr().out
    body.write_text("| metric | new value |\n")
    assert main(comment_args(body)) == 0
    assert f"updated comment {fake.comments[7][0]['id']} on {REPO}#7" in capsys.readouterr().out
    assert [c["body"] for c in fake.comments[7]] == ["<!-- forkcast-pipeline -->\n| metric | new value |\n"]


def test_comment_command_dry_run_prints_the_post(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "summary.md"
    body.write_text("hello\n")
    assert main(comment_args(body, "--dry-run")) == 0
    output = capsys.readouterr().out
    writes = planned_writes(output)
    assert writes == [("POST", f"/repos/{REPO}/issues/7/comments", {"body": "<!-- forkcast-pipeline -->\nhello\n"})]
    assert "dry run: would create the comment" in output
    assert fake.writes == []


def test_comment_command_on_a_read_only_token_explains_forks(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.refuse_writes = "Resource not accessible by integration"
    body = tmp_path / "summary.md"
    body.write_text("hello\n")
    assert main(comment_args(body)) == 2
    error = capsys.readouterr().err
    assert f"POST /repos/{REPO}/issues/7/comments failed: HTTP 403: Resource not accessible by integration" in error
    assert "a pull request from a fork only ever gets a read-only GITHUB_TOKEN" in error


def test_comment_command_needs_a_body(fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(comment_args(tmp_path / "missing.md")) == 2
    assert "no body file" in capsys.readouterr().err
    empty = tmp_path / "empty.md"
    empty.write_text("  \n")
    assert main(comment_args(empty)) == 2
    assert "nothing to post" in capsys.readouterr().err
    assert fake.seen == []


def test_upsert_comment_updates_the_oldest_marked_comment_and_reports_the_others(fake: FakeGitHub) -> None:
    oldest = fake.add_comment(7, "<!-- forkcast-pipeline -->\nfirst")
    newer = fake.add_comment(7, "<!-- forkcast-pipeline -->\nsecond")
    with github.client() as gh:
        result = gh.upsert_comment(REPO, 7, "forkcast-pipeline", "third")
    assert (result.comment_id, result.other_marked) == (oldest["id"], 1)
    assert (oldest["body"], newer["body"]) == (
        "<!-- forkcast-pipeline -->\nthird",
        "<!-- forkcast-pipeline -->\nsecond",
    )


def test_check_approval_passes_once_production_has_reviewers(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-approval", "--repo", REPO]) == 1  # no environment yet: a deployment would create it bare
    assert "there is no production environment yet" in capsys.readouterr().err
    assert main(setup_github()) == 0
    capsys.readouterr()
    writes = len(fake.writes)
    assert main(["check-approval", "--repo", REPO]) == 0
    assert "waits for a required reviewer's approval" in capsys.readouterr().out
    assert len(fake.writes) == writes  # it only reads


def test_check_approval_fails_when_the_plan_dropped_the_reviewers(
    fake: FakeGitHub, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.private, fake.plan_drops_rules = True, True
    assert main(setup_github()) == 1
    capsys.readouterr()
    assert main(["check-approval", "--repo", REPO]) == 1
    error = capsys.readouterr().err
    assert "production has no required reviewers" in error
    assert "forkcast setup-github --reviewer" in error


# --- alerts: one issue per ongoing problem ----------------------------------------------------------------------


def alert_args(body: Path, *extra: str) -> list[str]:
    return ["alert", "--repo", REPO, "--marker", "forkcast-drift", "--body-file", str(body), *extra]


def test_an_alert_opens_one_issue_updates_it_and_closes_it_when_it_clears(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "summary.md"
    fake.issues[1] = {"number": 1, "state": "open", "title": "unrelated", "body": "mentions drift", "html_url": "u"}
    body.write_text("7 of 12 features drifted")
    assert main(alert_args(body, "--title", "Input drift in production", "--label", "drift")) == 0
    body.write_text("9 of 12 features drifted")
    assert main(alert_args(body, "--title", "Input drift in production (night 2)", "--label", "drift")) == 0
    opened = [i for i in fake.issues.values() if i["number"] != 1]
    assert len(opened) == 1  # one issue, updated in place
    assert opened[0]["title"] == "Input drift in production (night 2)"
    assert opened[0]["body"] == "<!-- forkcast-drift -->\n9 of 12 features drifted"
    assert opened[0]["labels"] == [{"name": "drift"}]
    assert fake.issues[1]["state"] == "open"  # not ours: left alone

    body.write_text("no drift on 2026-11-30")
    assert main(alert_args(body, "--cleared")) == 0
    assert opened[0]["state"] == "closed"
    assert fake.comments[opened[0]["number"]][0]["body"] == "no drift on 2026-11-30"
    assert main(alert_args(body, "--cleared")) == 0  # nothing open: nothing to do
    assert "nothing to clear" in capsys.readouterr().out
    assert [w.method for w in fake.writes] == ["POST", "PATCH", "POST", "PATCH"]


def test_with_issues_turned_off_an_alert_warns_and_writes_the_job_summary_instead_of_failing(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork has Issues off: the API answers 410, and the hourly health job must not fail a healthy endpoint."""
    fake.issues_off = True
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    body = tmp_path / "probe.md"
    body.write_text("production answered 503")
    assert main(alert_args(body, "--title", "Production endpoint unhealthy", "--label", "incident")) == 0
    assert main(alert_args(body, "--cleared")) == 0
    out = capsys.readouterr().out
    assert out.count("::warning::Issues are turned off in octocat/forkcast") == 2
    assert "### Production endpoint unhealthy\n\nproduction answered 503" in summary.read_text()
    assert fake.writes == []


def test_an_alert_dry_run_prints_the_issue_it_would_open(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "summary.md"
    body.write_text("July traffic drifted")
    assert main(alert_args(body, "--title", "Input drift", "--label", "drift", "--dry-run")) == 0
    writes = planned_writes(capsys.readouterr().out)
    assert writes == [
        (
            "POST",
            f"/repos/{REPO}/issues",
            {"title": "Input drift", "body": "<!-- forkcast-drift -->\nJuly traffic drifted", "labels": ["drift"]},
        )
    ]
    assert fake.writes == []


def test_an_alert_without_a_title_or_body_is_a_usage_error(fake: FakeGitHub, tmp_path: Path) -> None:
    body = tmp_path / "summary.md"
    body.write_text("drift")
    assert main(alert_args(body)) == 2
    assert main(alert_args(tmp_path / "missing.md", "--title", "t")) == 2
    assert fake.seen == []


def test_an_alert_ignores_pull_requests_and_anyones_quote_of_the_marker(
    fake: FakeGitHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quoted = {"state": "open", "title": "why?", "body": "<!-- forkcast-drift --> what is this", "html_url": "u"}
    fake.issues[901] = {"number": 901, **quoted, "user": {"login": "mallory"}}
    fake.issues[902] = {"number": 902, **quoted, "user": {"login": "github-actions[bot]"}, "pull_request": {"url": "p"}}
    body = tmp_path / "summary.md"
    body.write_text("drift")
    args = alert_args(body, "--title", "Input drift", "--author", "github-actions[bot]")
    assert main(args) == 0
    assert "opened" in capsys.readouterr().out
    assert fake.issues[901]["title"] == "why?"  # not ours: not edited
    assert fake.issues[902]["title"] == "why?"  # a pull request: not an issue of ours
    assert main(alert_args(body, "--cleared", "--author", "github-actions[bot]")) == 0
    assert fake.issues[901]["state"] == "open"
    assert [i["state"] for n, i in fake.issues.items() if n not in {901, 902}] == ["closed"]
