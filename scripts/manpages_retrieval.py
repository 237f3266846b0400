#!/usr/bin/env python3
"""Builds a small real text retrieval task, in M-BEIR's layout, from Debian's Linux man-pages (manpages-dev).

Each section 2 and 3 page of the package gives one query and one document:

    query     the page's whatis line, the text after `\\-` in its NAME section ("copy or catenate a string")
    document  the opening of its DESCRIPTION section as plain text (roff requests and escapes stripped), cut at
              a word boundary after at most --doc-chars characters

so each query has exactly one relevant document, and every document is in one pool that the train, val and test
queries all search. A page's split is drawn from the SHA-256 of its file name (20% test, 10% val, the rest
train), so it does not move when other pages come or go. Pages whose query or document text is the same as
another page's (aliases, shared whatis lines) are dropped whole, so that no query has an unlabelled twin of its
answer in the pool; the counts are printed.

With --posix, the POSIX Programmer's Manual pages of manpages-posix-dev (section 3) add training queries built
the same way (`\\(em` separates the whatis line there). They are train only and search a pool of their own, so the
val and test files are byte-identical with and without them. A POSIX page that names a function of a val or test
page (POSIX strcasecmp when Linux's strcasecmp is held out), or whose query or document is the text of one, is
left out: the held-out queries get no twin in training.

The packages are data, not part of umrank: this script fetches each pinned .deb from deb.debian.org (or reads a
copy given with --deb / --posix-deb, e.g. from `apt-get download manpages-dev`) and refuses it unless its SHA-256
matches. Only the Python standard library is used. Output (the layout `umrank ingest --format mbeir` reads):

    OUT/query/{train/mbeir_manpages_train.jsonl, val/mbeir_manpages_task1_val.jsonl, test/...task1_test.jsonl}
    OUT/cand_pool/local/mbeir_manpages_task1_cand_pool.jsonl
    OUT/qrels/{train,val,test}/...qrels.txt
    OUT/instructions/query_instructions.tsv
    with --posix: OUT/query/train/mbeir_posix_train.jsonl, OUT/cand_pool/local/mbeir_posix_task1_cand_pool.jsonl,
                  OUT/qrels/train/mbeir_posix_train_qrels.txt

    python3 scripts/manpages_retrieval.py --out runs/manpages-data [--deb manpages-dev_6.03-2_all.deb] [--limit N]
        [--posix [--posix-deb manpages-posix-dev_2017a-2_all.deb]]

The same package bytes and options give byte-identical files.
"""

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

class Package:
    """A pinned Debian package: where it is fetched from and the SHA-256 its bytes must have."""

    def __init__(self, name, pool, sha256, sections):
        self.name, self.url, self.sha256, self.sections = name, pool + name, sha256, sections


LINUX = Package("manpages-dev_6.03-2_all.deb", "http://deb.debian.org/debian/pool/main/m/manpages/",
                "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838", ("man2", "man3"))
# Debian ships it in non-free: the text may be redistributed with its notices but not freely modified. Here it is
# only read, to make training queries on the user's machine.
POSIX = Package("manpages-posix-dev_2017a-2_all.deb", "http://deb.debian.org/debian/pool/non-free/m/manpages-posix/",
                "eda156e5da4c260c8e124075a8d816de3d69831c316979998c4d5b28883fb65e", ("man3",))
# M-BEIR numbers its datasets 0-9 in qids and dids (`9:1`); 20 and 21 keep clear of them.
DATASET_ID = 20
POSIX_DATASET_ID = 21
# M-BEIR's task 1: a text query, a text candidate.
TASK = 1
INSTRUCTION = "Retrieve the Linux manual page description that matches this summary."


class BuildError(Exception):
    """A problem with the input, named with the file it is in."""


def fetch(package, deb):
    """The package's bytes: from `deb` if given, else downloaded; refused unless the pinned SHA-256 matches."""
    if deb is not None:
        where = str(deb)
        try:
            data = Path(deb).read_bytes()
        except OSError as e:
            raise BuildError(f"{where}: cannot read: {e}") from e
    else:
        where = package.url
        try:
            with urllib.request.urlopen(package.url, timeout=60) as response:
                data = response.read()
        except OSError as e:
            raise BuildError(f"{where}: cannot download: {e}") from e
    found = hashlib.sha256(data).hexdigest()
    if found != package.sha256:
        raise BuildError(f"{where}: sha256 {found}, expected {package.sha256} ({package.name})")
    return data


def ar_member(data, name, where):
    """The bytes of member `name` of a Unix ar archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        raise BuildError(f"{where}: not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as e:
            raise BuildError(f"{where}: bad ar header at byte {pos}") from e
        body = data[pos + 60 : pos + 60 + size]
        if member == name:
            return body
        pos += 60 + size + (size % 2)
    raise BuildError(f"{where}: no member {name}")


def man_pages(data, where, sections):
    """(file name, roff text) of every regular page in `sections`, in name order. Hard and symbolic links (the
    aliases of a page) are not regular files and are skipped."""
    payload = ar_member(data, "data.tar.xz", where)
    pages = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:xz") as tar:
        for info in tar.getmembers():
            parts = Path(info.name).parts
            if not info.isfile() or len(parts) < 2 or parts[-2] not in sections:
                continue
            if not info.name.endswith(".gz"):
                continue
            raw = gzip.decompress(tar.extractfile(info).read())
            pages.append((parts[-1][: -len(".gz")], raw.decode("utf-8", "replace")))
    pages.sort()
    return pages


# Named glyphs that carry meaning in running text; any other `\(xx` or `\[name]` is dropped.
GLYPHS = {"aq": "'", "dq": '"', "em": "-", "en": "-", "rs": "\\", "lq": '"', "rq": '"', "oq": "'",
          "cq": "'", "ti": "~", "ha": "^", "mu": "x", "bu": "*", "co": "(c)", "ga": "`", "at": "@",
          "sh": "#", "Do": "$", "lh": "<", "rh": ">", "->": "->", "<=": "<=", ">=": ">=", "!=": "!="}


def glyph(match):
    """A named glyph or string (`\\(em`, `\\[em]`, `\\*(lq`) as plain text: the ones GLYPHS knows, else nothing."""
    return GLYPHS.get(next(group for group in match.groups() if group is not None), "")


def plain(text):
    """Roff text with its escapes resolved or removed."""
    text = re.sub(r"\\\*?\((..)|\\\*?\[([^\]]*)\]|\\\*(.)", glyph, text)
    text = re.sub(r"\\f(\(..|\[[^\]]*\]|.)", "", text)
    text = re.sub(r"\\s[+-]?\d", "", text)
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\~", " ").replace("\\ ", " ")
    text = re.sub(r"\\[&%c:|^/,0]", "", text)
    return text


def arguments(line):
    """The arguments of a roff request line, with double quotes grouping words."""
    return [a if not a.startswith('"') else a[1:-1] for a in re.findall(r'"[^"]*"|\S+', line)]


# Font requests whose arguments are text: alternating ones join their arguments without spaces.
FONTS = {"B", "I", "SM", "SB"}
ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}


def section_lines(roff, name):
    """The lines of section `name` (`.SH NAME`), without the heading."""
    lines, inside = [], False
    for line in roff.splitlines():
        if line.startswith(".SH"):
            heading = " ".join(arguments(line[3:]))
            if inside:
                break
            inside = heading.upper() == name
            continue
        if inside:
            lines.append(line)
    return lines


def text_of(lines):
    """Running text of roff lines: comments, tables and layout requests dropped, font requests kept as text."""
    words, in_table = [], False
    for line in lines:
        if line.startswith((".TS", "'TS")):
            in_table = True
        elif line.startswith((".TE", "'TE")):
            in_table = False
        if in_table or line.startswith(('.\\"', "'\\\"", ".TE")):
            continue
        if line.startswith(".") or line.startswith("'"):
            request, _, rest = line[1:].partition(" ")
            if request in FONTS:
                words.append(" ".join(arguments(rest)))
            elif request in ALTERNATING:
                words.append("".join(arguments(rest)))
            elif request == "SS":
                words.append(" ".join(arguments(rest)) + ":")
            continue
        words.append(line)
    return re.sub(r"\s+", " ", plain(" ".join(words))).strip()


def cut(text, limit):
    """`text` cut to at most `limit` characters, at a word boundary."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    return head[: head.rfind(" ")].rstrip(" ,;:") if " " in head else head[:limit]


# The notice that opens the DESCRIPTION of the POSIX pages of ISO C functions: the same words on a hundred pages,
# which would leave them nothing of their own in 256 characters.
ISO_C_NOTICE = re.compile(r"The functionality described on this reference page is aligned with the ISO C standard\."
                          r".*?defers to the ISO C standard\.\s*")


def page_pair(roff, doc_chars):
    """(query, document) of a page, or None when it has no whatis line or no description."""
    name = text_of(section_lines(roff, "NAME"))
    if " - " not in name:
        return None
    query = name.split(" - ", 1)[1].strip()
    description = ISO_C_NOTICE.sub("", text_of(section_lines(roff, "DESCRIPTION")), count=1)
    document = cut(description, doc_chars)
    if not query or len(document) < 40:
        return None
    return query, document


def function_names(roff):
    """The names a page's NAME section lists before its whatis line (`strcmp, strncmp`)."""
    name = text_of(section_lines(roff, "NAME")).split(" - ", 1)[0]
    return {word.strip() for word in name.split(",") if word.strip()}


def split_of(page):
    """test (20%), val (10%) or train, from the SHA-256 of the page's file name."""
    bucket = int(hashlib.sha256(page.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket < 2 else "val" if bucket == 2 else "train"


def unique_pairs(pages, doc_chars):
    """(page, query, document) of the pages whose query and document are both unique, and what was dropped."""
    pairs = []
    for page, roff in pages:
        pair = page_pair(roff, doc_chars)
        if pair is not None:
            pairs.append((page, *pair))
    queries = [q for _, q, _ in pairs]
    documents = [d for _, _, d in pairs]
    kept = [(p, q, d) for p, q, d in pairs if queries.count(q) == 1 and documents.count(d) == 1]
    return kept, len(pages) - len(pairs), len(pairs) - len(kept)


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def held_out_of(pages, kept):
    """The function names, queries and documents of the val and test pages: what a training source must not
    repeat."""
    roffs = dict(pages)
    held = set()
    for page, query, document in kept:
        if split_of(page) != "train":
            held |= function_names(roffs[page]) | {query, document}
    return held


def train_only_pairs(pages, doc_chars, held):
    """The (page, query, document) of a training-only source that repeat nothing held out, and the count left
    out for it."""
    roffs = dict(pages)
    kept, _, _ = unique_pairs(pages, doc_chars)
    clean = [(p, q, d) for p, q, d in kept if not (function_names(roffs[p]) | {q, d}) & held]
    return clean, len(kept) - len(clean)


def query_line(qid, query, did):
    return json.dumps({"qid": qid, "query_txt": query, "query_img_path": None, "query_modality": "text",
                       "query_src_content": None, "pos_cand_list": [did], "neg_cand_list": [], "task_id": TASK},
                      ensure_ascii=False)


def pool_line(did, document, page):
    return json.dumps({"did": did, "txt": document, "img_path": None, "modality": "text",
                       "src_content": json.dumps({"page": page})}, ensure_ascii=False)


def write_train_only(out, pairs):
    """The M-BEIR layout files of the training-only POSIX queries and their own pool."""
    pool, queries, qrels = [], [], []
    for number, (page, query, document) in enumerate(pairs, start=1):
        did = qid = f"{POSIX_DATASET_ID}:{number}"
        pool.append(pool_line(did, document, page))
        queries.append(query_line(qid, query, did))
        qrels.append(f"{qid} 0 {did} 1 {TASK}")
    write_lines(out / "cand_pool/local" / f"mbeir_posix_task{TASK}_cand_pool.jsonl", pool)
    write_lines(out / "query/train/mbeir_posix_train.jsonl", queries)
    write_lines(out / "qrels/train/mbeir_posix_train_qrels.txt", qrels)


def write_instructions(out, posix):
    header = "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1"
    rows = [header, f"text\ttext\tManpages\t{DATASET_ID}\t{INSTRUCTION}"]
    if posix:
        rows.append(f"text\ttext\tPosix\t{POSIX_DATASET_ID}\t{INSTRUCTION}")
    write_lines(out / "instructions/query_instructions.tsv", rows)


def write_task(out, kept):
    """The M-BEIR layout files for the kept pages; returns the query count per split."""
    pool, queries, qrels = [], {"train": [], "val": [], "test": []}, {"train": [], "val": [], "test": []}
    for number, (page, query, document) in enumerate(kept, start=1):
        did = f"{DATASET_ID}:{number}"
        pool.append(pool_line(did, document, page))
        split = split_of(page)
        qid = f"{DATASET_ID}:{len(queries[split]) + 1}"
        queries[split].append(query_line(qid, query, did))
        qrels[split].append(f"{qid} 0 {did} 1 {TASK}")
    write_lines(out / "cand_pool/local" / f"mbeir_manpages_task{TASK}_cand_pool.jsonl", pool)
    for split in queries:
        stem = "mbeir_manpages_train" if split == "train" else f"mbeir_manpages_task{TASK}_{split}"
        write_lines(out / "query" / split / f"{stem}.jsonl", queries[split])
        write_lines(out / "qrels" / split / f"{stem}_qrels.txt", qrels[split])
    return {split: len(rows) for split, rows in queries.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the directory to write the task into")
    parser.add_argument("--deb", type=Path, help=f"a local {LINUX.name} instead of downloading it")
    parser.add_argument("--doc-chars", type=int, default=256, help="longest document, in characters")
    parser.add_argument("--limit", type=int, help="keep only this many pages, those whose name hashes lowest "
                        "(a smaller task with the same splits, for a quick run)")
    parser.add_argument("--posix", action="store_true", help=f"add training-only queries from {POSIX.name}")
    parser.add_argument("--posix-deb", type=Path, help=f"a local {POSIX.name} instead of downloading it")
    args = parser.parse_args()
    try:
        pages = man_pages(fetch(LINUX, args.deb), args.deb or LINUX.url, LINUX.sections)
        posix_pages = None
        if args.posix or args.posix_deb:
            posix_where = args.posix_deb or POSIX.url
            posix_pages = man_pages(fetch(POSIX, args.posix_deb), posix_where, POSIX.sections)
    except (BuildError, tarfile.TarError, OSError, EOFError) as e:
        sys.exit(f"error: {e}")
    kept, unparsed, duplicated = unique_pairs(pages, args.doc_chars)
    if args.limit is not None:
        chosen = sorted(kept, key=lambda row: hashlib.sha256(row[0].encode()).hexdigest())[: args.limit]
        kept = sorted(chosen)
    counts = write_task(args.out, kept)
    write_instructions(args.out, posix_pages is not None)
    print(f"{LINUX.name}: {len(pages)} pages, {unparsed} without a whatis line or description, "
          f"{duplicated} with a duplicated query or document; {len(kept)} documents; queries: "
          + ", ".join(f"{split} {n}" for split, n in counts.items()))
    if posix_pages is not None:
        pairs, overlapping = train_only_pairs(posix_pages, args.doc_chars, held_out_of(pages, kept))
        write_train_only(args.out, pairs)
        print(f"{POSIX.name}: {len(posix_pages)} pages, {overlapping} left out for naming or repeating a val or "
              f"test page; {len(pairs)} training-only queries in a pool of their own")


if __name__ == "__main__":
    main()
