"""WordNet for NLTK's lemmatiser, found or assembled without a download.

NLTK normally fetches WordNet with `nltk.download("wordnet")`. Where that is impossible
(offline machines, like ours), the same WordNet 3.0 database is often installed by the system
(Debian/Ubuntu: `apt-get install wordnet-base`, files in /usr/share/wordnet). NLTK's reader
wants one more file, `lexnames`, which the system packages leave out; its 45 lines are the
table in the lexnames(5WN) manual page, reproduced below. We copy (NLTK 3.10 rejects
symlinked corpus roots) the system files into a cache folder laid out as an NLTK data
directory, once, and point NLTK at it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from hashtagkit.errors import InputError

# lexnames(5WN): file number, lexicographer file name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv)
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# what NLTK's WordNetCorpusReader opens; index.sense only for lemma_from_key, so optional
REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")) + tuple(
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")
)
OPTIONAL = ("index.sense", "cntlist.rev", "cntlist", "sentidx.vrb", "sents.vrb", "frames.vrb")
HOW_TO_GET = (
    "WordNet is needed to lemmatise hashtags: run `python -m nltk.downloader wordnet`, "
    "or install it from your system (Debian/Ubuntu: `apt-get install wordnet-base`), "
    "or pass {opt:lemmatize=False}"
)


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def system_dirs() -> list[Path]:
    """Where a system WordNet 3.0 database may be, most specific first."""
    dirs = []
    if os.environ.get("WNSEARCHDIR"):
        dirs.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        dirs.append(Path(os.environ["WNHOME"]) / "dict")
    dirs += [Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict"), Path("/opt/homebrew/share/wordnet")]
    return [d for d in dirs if all((d / f).is_file() for f in REQUIRED)]


def cache_root() -> Path:
    base = os.environ.get("HASHTAGKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hashtagkit")
    return Path(base) / "nltk_data"


def build_nltk_corpus(source: Path, nltk_data: Path) -> Path:
    """Copy a system WordNet into `nltk_data/corpora/wordnet` (atomically) and add lexnames."""
    target = nltk_data / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return nltk_data
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".wordnet.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in REQUIRED + OPTIONAL:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)  # a copy: NLTK rejects symlinked roots
    if (source / "lexnames").is_file():
        shutil.copyfile(source / "lexnames", tmp / "lexnames")
    else:
        (tmp / "lexnames").write_text(lexnames_text())
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return nltk_data


def _nltk_has_wordnet() -> bool:
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            continue
    return False


def noun_lemmatizer() -> Callable[[str], str]:
    """NLTK's WordNet lemmatiser, noun forms (`sunglasses` -> `sunglass`, `running` kept).

    Nouns only, because that is what HARRISON's published vocabulary shows: it has `running`,
    `walking` and `sunglass`, which a verb pass would have turned into `run` and `walk`.
    """
    import nltk
    from nltk.stem import WordNetLemmatizer

    if not _nltk_has_wordnet():
        found = system_dirs()
        if not found:
            raise InputError(HOW_TO_GET)
        root = build_nltk_corpus(found[0], cache_root())
        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))
    lemmatizer = WordNetLemmatizer()
    try:
        lemmatizer.lemmatize("tests")
    except (LookupError, OSError) as e:
        raise InputError(f"WordNet could not be loaded ({str(e).splitlines()[0]}). {HOW_TO_GET}") from None
    return lemmatizer.lemmatize
