"""Write the SST-2 training subsets of study v3 as TSV files for ``recipes/text_classification.py``.

The subset of N sentences is the draw ``benchmarks/decay_sweep.py`` makes (``random.Random(1234).sample`` of
the training rows with at least ``--min-words`` words, sorted), so ``train1600.tsv`` is the training set of
the v2 study. The dev set (872 sentences) is used as it is, from ``../shared/data/glue/SST-2/dev.tsv``: it is
the test set and never chooses anything.

    .venv/bin/python -m benchmarks.study_v3.make_data                   # train1600.tsv (from the repo root)
    .venv/bin/python -m benchmarks.study_v3.make_data --train-size 8000 --min-words 5
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from benchmarks.common import data_dir, load_glue

SUBSET_SEED = 1234  # decay_sweep.py's
OUT = Path(__file__).resolve().parent / "data"


def subset(sentences: list[str], train_size: int, min_words: int) -> list[int]:
    index = [i for i, text in enumerate(sentences) if len(text.split()) >= min_words]
    if train_size >= len(index):
        return index
    return sorted(random.Random(SUBSET_SEED).sample(index, train_size))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=1600)
    p.add_argument("--min-words", type=int, default=0)
    p.add_argument(
        "--data-dir", default=None, help="folder holding glue/SST-2 (default: <repo>/../shared/data)"
    )
    args = p.parse_args(argv)
    sentences, labels = load_glue("sst2", "train", data_dir(args.data_dir))
    rows = subset(sentences, args.train_size, args.min_words)
    OUT.mkdir(exist_ok=True)
    name = f"train{args.train_size}" + (f"_min{args.min_words}" if args.min_words else "") + ".tsv"
    with open(OUT / name, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{sentences[i]}\t{labels[i]}\n" for i in rows)
    print(f"wrote {OUT / name}: {len(rows)} sentences")


if __name__ == "__main__":
    main()
