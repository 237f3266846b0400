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

The package is data, not part of umrank: this script fetches the pinned .deb from deb.debian.org (or reads a
copy given with --deb, e.g. from `apt-get download manpages-dev`) and refuses it unless its SHA-256 matches.
Only the Python standard library is used. Output (the layout `umrank ingest --format mbeir` reads):

    OUT/query/{train/mbeir_manpages_train.jsonl, val/mbeir_manpages_task1_val.jsonl, test/...task1_test.jsonl}
    OUT/cand_pool/local/mbeir_manpages_task1_cand_pool.jsonl
    OUT/qrels/{train,val,test}/...qrels.txt
    OUT/instructions/query_instructions.tsv

    python3 scripts/manpages_retrieval.py --out runs/manpages-data [--deb manpages-dev_6.03-2_all.deb] [--limit N]

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

PACKAGE = "manpages-dev_6.03-2_all.deb"
URL = "http://deb.debian.org/debian/pool/main/m/manpages/" + PACKAGE
SHA256 = "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838"
SECTIONS = ("man2", "man3")
# M-BEIR numbers its datasets 0-9 in qids and dids (`9:1`); 20 keeps clear of them.
DATASET_ID = 20
# M-BEIR's task 1: a text query, a text candidate.
TASK = 1
INSTRUCTION = "Retrieve the Linux manual page description that matches this summary."


class BuildError(Exception):
    """A problem with the input, named with the file it is in."""


def fetch(deb):
    """The package's bytes: from `deb` if given, else downloaded; refused unless the pinned SHA-256 matches."""
    if deb is not None:
        where = str(deb)
        try:
            data = Path(deb).read_bytes()
        except OSError as e:
            raise BuildError(f"{where}: cannot read: {e}") from e
    else:
        where = URL
        try:
            with urllib.request.urlopen(URL, timeout=60) as response:
                data = response.read()
        except OSError as e:
            raise BuildError(f"{where}: cannot download: {e}") from e
    found = hashlib.sha256(data).hexdigest()
    if found != SHA256:
        raise BuildError(f"{where}: sha256 {found}, expected {SHA256} ({PACKAGE})")
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


def man_pages(data, where):
    """(file name, roff text) of every regular section 2/3 page, in name order. Hard and symbolic links (the
    aliases of a page) are not regular files and are skipped."""
    payload = ar_member(data, "data.tar.xz", where)
    pages = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:xz") as tar:
        for info in tar.getmembers():
            parts = Path(info.name).parts
            if not info.isfile() or len(parts) < 2 or parts[-2] not in SECTIONS:
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


def page_pair(roff, doc_chars):
    """(query, document) of a page, or None when it has no whatis line or no description."""
    name = text_of(section_lines(roff, "NAME"))
    if " - " not in name:
        return None
    query = name.split(" - ", 1)[1].strip()
    document = cut(text_of(section_lines(roff, "DESCRIPTION")), doc_chars)
    if not query or len(document) < 40:
        return None
    return query, document


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


def write_task(out, kept):
    """The M-BEIR layout files for the kept pages; returns the query count per split."""
    pool, queries, qrels = [], {"train": [], "val": [], "test": []}, {"train": [], "val": [], "test": []}
    for number, (page, query, document) in enumerate(kept, start=1):
        did = f"{DATASET_ID}:{number}"
        pool.append(json.dumps({"did": did, "txt": document, "img_path": None, "modality": "text",
                                "src_content": json.dumps({"page": page})}, ensure_ascii=False))
        split = split_of(page)
        qid = f"{DATASET_ID}:{len(queries[split]) + 1}"
        queries[split].append(json.dumps({"qid": qid, "query_txt": query, "query_img_path": None,
                                          "query_modality": "text", "query_src_content": None,
                                          "pos_cand_list": [did], "neg_cand_list": [], "task_id": TASK},
                                         ensure_ascii=False))
        qrels[split].append(f"{qid} 0 {did} 1 {TASK}")
    write_lines(out / "cand_pool/local" / f"mbeir_manpages_task{TASK}_cand_pool.jsonl", pool)
    for split in queries:
        stem = "mbeir_manpages_train" if split == "train" else f"mbeir_manpages_task{TASK}_{split}"
        write_lines(out / "query" / split / f"{stem}.jsonl", queries[split])
        write_lines(out / "qrels" / split / f"{stem}_qrels.txt", qrels[split])
    header = "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1"
    write_lines(out / "instructions/query_instructions.tsv",
                [header, f"text\ttext\tManpages\t{DATASET_ID}\t{INSTRUCTION}"])
    return {split: len(rows) for split, rows in queries.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the directory to write the task into")
    parser.add_argument("--deb", type=Path, help=f"a local {PACKAGE} instead of downloading it")
    parser.add_argument("--doc-chars", type=int, default=256, help="longest document, in characters")
    parser.add_argument("--limit", type=int, help="keep only this many pages, those whose name hashes lowest "
                        "(a smaller task with the same splits, for a quick run)")
    args = parser.parse_args()
    try:
        data = fetch(args.deb)
        pages = man_pages(data, args.deb or URL)
    except (BuildError, tarfile.TarError, OSError, EOFError) as e:
        sys.exit(f"error: {e}")
    kept, unparsed, duplicated = unique_pairs(pages, args.doc_chars)
    if args.limit is not None:
        chosen = sorted(kept, key=lambda row: hashlib.sha256(row[0].encode()).hexdigest())[: args.limit]
        kept = sorted(chosen)
    counts = write_task(args.out, kept)
    print(f"{PACKAGE}: {len(pages)} pages, {unparsed} without a whatis line or description, "
          f"{duplicated} with a duplicated query or document; {len(kept)} documents; queries: "
          + ", ".join(f"{split} {n}" for split, n in counts.items()))


if __name__ == "__main__":
    main()
