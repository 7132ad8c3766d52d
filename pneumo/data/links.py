"""Films reached through symbolic links: where a scan lets a link lead (LinkPolicy), and the count it keeps of the
links followed and refused (LinkReport), so that a figure is never said without the links it left out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISLNK
from typing import Any


@dataclass
class LinkReport:
    """Films reached through a symbolic link (the file, or a folder above it inside the scanned folder): how
    many were followed and how many refused, with one example of each, and where links were allowed to
    lead. A count the scan keeps, so that "n = 36" is never said without "and 36 links refused"."""

    followed: int = 0
    refused: int = 0
    followed_example: str | None = None
    refused_example: str | None = None
    refused_reason: str | None = None  # why refused_example was refused
    allowed: str = ""  # where links may lead, in words

    def add(self, path: Path, refusal: str | None) -> None:
        """Count the film at path, reached through a link: followed (refusal None) or refused, and why."""
        if refusal is None:
            self.followed += 1
            self.followed_example = self.followed_example or str(path)
        else:
            self.refused += 1
            if self.refused_example is None:
                self.refused_example, self.refused_reason = str(path), refusal

    def to_dict(self) -> dict[str, Any]:
        return {
            "followed": self.followed,
            "refused": self.refused,
            "followed_example": self.followed_example,
            "refused_example": self.refused_example,
            "refused_reason": self.refused_reason,
            "allowed": self.allowed,
        }

    def lines(self) -> list[str]:
        """What a reader of the counts must know, one line each: nothing when no film is a link."""
        out = []
        if self.followed:
            out.append(
                f"{self.followed} film(s) are symbolic links, followed ({self.allowed}); e.g. {self.followed_example}"
            )
        if self.refused:
            out.append(
                f"{self.refused} film(s) are symbolic links, refused and not counted; e.g. {self.refused_example}: "
                f"{self.refused_reason}"
            )
        return out


def link_lines(links: dict[str, Any]) -> list[str]:
    """A stored link report (LinkReport.to_dict) as its lines: what a reader of the counts must know."""
    return LinkReport(**links).lines() if links else []


@dataclass(frozen=True)
class LinkPolicy:
    """Where a film's symbolic links may lead: inside the scanned folder or one of roots, or, with follow, anywhere
    when the links were made by the user running the command (or root)."""

    follow: bool = False
    roots: tuple[Path, ...] = ()

    @classmethod
    def make(cls, follow_links: bool, allowed_roots: Sequence[str | Path] | None) -> LinkPolicy:
        roots = []
        for root in allowed_roots or ():
            try:
                roots.append(Path(root).expanduser().resolve())
            except (OSError, RuntimeError):  # a root that is a symlink loop allows nothing
                continue
        return cls(follow_links, tuple(roots))

    def describe(self, inside: Path | str) -> str:
        """Where links may lead, in words, for messages and LinkReport.allowed."""
        if self.follow:
            return "anywhere when made by you or root: the command line follows its own user's links"
        return " or ".join(str(p) for p in (inside, *self.roots))

    def refusal(self, link: Path, base: Path, real: Path, inside: Path) -> str | None:
        """Why the film at link (under the scanned folder base, resolving to real) is not opened, or None.

        Inside the scanned folder (resolved: inside) or a root, any link is followed. With follow, a link out
        of them is followed too when every link on the way (the file, or a folder between base and it) was made
        by the user running the command or by root: the command line reads what its user can read, on the
        folder its user named, and a link that user made is theirs. A link another user made, in a folder
        shared with them, is not: it could lead the command to read the runner's own files into a report."""
        if any(real.is_relative_to(p) for p in (inside, *self.roots)):
            return None
        if not self.follow:
            return f"a link to a file outside {self.describe(inside)}; refused, not opened"
        maker = _foreign_link_owner(link, base)
        if maker is not None:
            return f"a link made by another user (uid {maker}); refused, not opened"
        return None


def _foreign_link_owner(link: Path, base: Path) -> int | None:
    """The owner of the first symbolic link between base and link (both included) made by neither the user running
    this nor root; None when there is none (or the system has no user ids)."""
    if not hasattr(os, "getuid"):
        return None
    trusted = {os.getuid(), 0}
    try:
        parts = link.relative_to(base).parts
    except ValueError:
        return None
    for i in range(len(parts) + 1):
        try:
            st = os.lstat(base.joinpath(*parts[:i]))
        except OSError:
            continue
        if S_ISLNK(st.st_mode) and st.st_uid not in trusted:
            return st.st_uid
    return None
