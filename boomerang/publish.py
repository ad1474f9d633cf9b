"""Publishing a family on the Hugging Face Hub: one model repository, each member in its own subfolder, the GGUF
files in ``gguf/``, a model card at the top and one per member.

``plan_publish`` lists exactly what would be uploaded (every file of the family directory except hidden ones, with
the cards rendered again from ``family.json`` so that their loading examples name the repository) and checks the
family is complete; it needs no network, so ``boomerang publish --dry-run`` works anywhere. ``publish`` then
checks the Hub can be used (not ``HF_HUB_OFFLINE``, a token, the Hub answering) before it reads any weight, and
uploads everything in one commit with ``huggingface_hub``'s public API (``create_repo``, ``create_commit``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .cards import family_card, member_card
from .errors import BoomerangError
from .family import CARD, MANIFEST, load_family


@dataclass
class PublishPlan:
    """What ``publish`` uploads: files by their path in the repository, and the cards' texts."""

    repo_id: str
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)  # path in the repo -> local file
    cards: dict[str, str] = field(default_factory=dict)  # path in the repo -> card text

    @property
    def paths(self) -> list[str]:
        """Every path the repository will hold, sorted."""
        return sorted({*self.files, *self.cards})

    def nbytes(self, path: str) -> int:
        if path in self.cards:
            return len(self.cards[path].encode("utf-8"))
        return self.files[path].stat().st_size

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes(p) for p in self.paths)


def check_repo_id(repo_id: str) -> str:
    """A Hub model repository id (``user/name`` or ``name``), or a clear error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise BoomerangError(
            f"{repo_id!r} is not a Hub repository id ({str(e).splitlines()[0]}); give USER/NAME"
        ) from None
    return repo_id


def plan_publish(directory: str | os.PathLike, repo_id: str) -> PublishPlan:
    """Everything ``publish`` would upload; fails if the family directory is incomplete (no network used)."""
    check_repo_id(repo_id)
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise BoomerangError(
            f"{directory} is not a family directory (no {MANIFEST}); write one with `boomerang family --out DIR`"
        )
    manifest = load_family(directory)
    missing = [f"{r['dir']}/{f}" for r in manifest["members"] for f in r.get("files", []) if f != CARD] + [
        r["gguf"]["file"] for r in manifest["members"] if r.get("gguf")
    ]
    missing = [p for p in missing if not (directory / p).is_file()]
    if missing:
        raise BoomerangError(
            f"the family in {directory} is incomplete: {', '.join(missing[:5])}"
            f"{' and more' if len(missing) > 5 else ''} listed in {MANIFEST} are missing; write it again "
            "(boomerang family --force)"
        )
    plan = PublishPlan(repo_id=repo_id, directory=directory)
    plan.cards[CARD] = family_card(manifest, repo_id)
    for row in manifest["members"]:
        plan.cards[f"{row['dir']}/{CARD}"] = member_card(manifest, row, repo_id)
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")) or rel in plan.cards:
            continue
        plan.files[rel] = path
    return plan


def check_hub() -> str:
    """Fail clearly unless the Hub can be used: not offline, logged in; returns the token."""
    from huggingface_hub import get_token

    from .io.loading import hub_offline

    if hub_offline():
        raise BoomerangError(
            "publishing needs the Hugging Face Hub, but it is switched off here (HF_HUB_OFFLINE is set); nothing "
            "was uploaded. Unset HF_HUB_OFFLINE on a machine with network access, or check the upload first with "
            "--dry-run"
        )
    token = get_token()
    if not token:
        raise BoomerangError(
            "publishing needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write "
            "access); nothing was uploaded"
        )
    return token


def publish(
    directory: str | os.PathLike, repo_id: str, *, private: bool = False, dry_run: bool = False
) -> PublishPlan:
    """Upload a family to the model repository ``repo_id`` (created if needed), in one commit. With ``dry_run``
    nothing is contacted: the returned plan says what would be uploaded."""
    check_repo_id(repo_id)
    if dry_run:
        return plan_publish(directory, repo_id)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=check_hub())  # before any work: offline, no token, or the Hub not answering
    try:
        api.whoami()
    except HfHubHTTPError as e:  # it answered, and said no
        raise BoomerangError(
            f"the Hugging Face Hub refused the token ({_reason(e)}); log in again (`hf auth login`) with a token "
            "that can write; nothing was uploaded"
        ) from None
    except Exception as e:
        raise BoomerangError(
            f"cannot reach the Hugging Face Hub ({_reason(e)}); nothing was uploaded"
        ) from None
    plan = plan_publish(directory, repo_id)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        ops = [CommitOperationAdd(p, plan.files[p]) for p in sorted(plan.files)]
        ops += [CommitOperationAdd(p, text.encode("utf-8")) for p, text in sorted(plan.cards.items())]
        api.create_commit(
            repo_id,
            ops,
            commit_message=f"Upload boomerang family ({len(plan.cards) - 1} members)",
            repo_type="model",
        )
    except Exception as e:
        raise BoomerangError(f"uploading to {repo_id} failed ({_reason(e)})") from None
    return plan


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
