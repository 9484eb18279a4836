"""LLaVA-OneVision training data as published, read as-is into LLaVA records (no conversion step, nothing written).

Supported layouts (what each one is, and where it was read):

1. **LLaVA-OneVision-Data parquet release** (``lmms-lab/LLaVA-OneVision-Data`` on the HF Hub): one folder per
   subset (``ai2d(gpt4v)/``, ``sharegpt4v(coco)/``, ``CLEVR-Math(MathV360K)/``, ...; 83 of them, names in
   :data:`ONEVISION_SUBSETS`) holding ``train-XXXXX-of-NNNNN.parquet`` shards (the Hub's ``refs/convert/parquet``
   branch has ``<subset>/train/0000.parquet`` instead; both work). Columns, from the dataset card's
   ``dataset_info`` (identical for every config): ``id`` string, ``image`` (HF ``Image`` feature, stored as
   ``struct<bytes: binary, path: string>``, null for text-only rows such as the magpie subsets), ``conversations``
   ``list<struct<from: string, value: string>>``, ``data_source`` string. The rows were written by LLaVA-NeXT's
   ``playground/upload_data.py`` (commit 0070d0a): ``{"id", "image": PIL image or None, "conversations",
   "data_source"}`` pushed with ``push_to_hub(config_name=<subset>, split="train")``, so the embedded images carry
   bytes and no path.
2. **LLaVA-ReCap** (``lmms-lab/LLaVA-ReCap-558K``, ``-118K``, ``-CC3M``): the Hub releases are the same parquet
   schema (``id``, ``image``, ``conversations``, ``data_source``; 558,128 / ~118K / 2,857,560 rows) under
   ``data/train-XXXXX-of-NNNNN.parquet`` (or ``default/train/NNNN.parquet``): a snapshot folder is read like a
   subset folder. The JSON form LLaVA-NeXT trained on (``scripts/train/README.md``: ``{"id", "image":
   "coco/train2017/000000000009.jpg", "conversations": [{"from": "human", "value": "<image>\\nPlease generate
   detailed descriptions of the given image."}, {"from": "gpt", ...}]}``, optionally ``data_source``) is a LLaVA
   JSON list and goes through :func:`~ecomvlm.data_modules.llava_json.read_records`. (That README says the JSON adds
   the prompt to every question; the parquet turns are read as published, never rewritten.)
3. **BLIP-558K** (``liuhaotian/LLaVA-Pretrain``): ``blip_laion_cc_sbu_558k.json``, a JSON list of ``{"id":
   "004539375", "image": "00453/004539375.jpg", "conversations": [{"from": "human", "value": "Render a clear and
   concise summary of the photo.\\n<image>"}, {"from": "gpt", "value": "..."}]}``, next to ``images.zip`` whose
   members are ``00000/...`` .. ``00659/...``: unzipped into ``images/`` (LLaVA's ``--image_folder``) or into the
   JSON's own folder; :func:`default_image_root` finds which. ``blip_laion_cc_sbu_558k_meta.json`` (``id``,
   ``image``, ``url``, ``blip_caption``: no conversations) is refused with a pointer to the right file.
4. **LLaVA-OneVision-Mid-Data** (``lmms-lab/LLaVA-OneVision-Mid-Data``): ``synthdog_en/synthdog_en_processed.json``
   (+ ``synthdog_en_images_{1,2}.tar.gz``), a LLaVA JSON list; read by ``read_records``.
5. Any LLaVA ``.json`` / ``.jsonl`` file: ``read_records``.

Sources: the HF dataset cards and file trees of the repositories above, LLaVA-NeXT
``scripts/train/README.md``, ``scripts/train/mid_stage.yaml``, ``scripts/train/single_image.yaml`` and
``llava/train/train.py`` (``LazySupervisedDataset``: yaml ``datasets: [{json_path, sampling_strategy}]``, ``.json``
lists or ``.jsonl``), and ``playground/upload_data.py`` at 0070d0a for how the parquet rows were produced.

Records: ``{"id", "conversations", "data_source"?, "image"?}`` with ``image`` as in docs/DATA_FORMAT.md, except that
an image embedded in parquet is ``{"bytes": b"...", "name": "<id>.<ext>"}`` (the ``path`` column's file name when it
has one; the extension sniffed from the bytes), never written to disk. A row whose ``path`` is set but ``bytes`` is
not (a non-embedded HF image) gives that path string, relative to the image root as usual.

Counting, as :func:`~ecomvlm.data_modules.llava_json.read_records` does: a source holds one record per row, in file
order (shards sorted by name), so ``first:10%`` means what it means for LLaVA-NeXT's converted JSON. Structure
(roles, empty answers, ``<image>`` count) is checked later on the selected records by ``iter_checked``; here only
what cannot be read is counted, as ``broken_row`` (a row group that does not decode: each of its rows counted).
An image column chunk that does not decode keeps its rows, each image becoming ``{"bytes": b"", "name": ...}``,
which the shard writer counts (``corrupt_image``) instead of dropping it here, so that
:func:`count_source` (which never reads image bytes) and :func:`read_source` agree row for row. A file that is not
parquet at all (a truncated download: no footer, a Git LFS pointer) is an error naming the file, like a broken JSON
list.

Paths: :func:`resolve_source` maps the file names of the paper's A.6 mixtures (``llava_ov/LLaVA-ReCap-558K.json``,
``llava_ov/meta_ov/LLaVA-OneVision-Data_<subset>.json``, ``llava_ov/synthdog_en_processed.json``; conf/data/) onto
a local copy of the Hub snapshots when the converted JSON is not there (see :func:`published_candidates`).


One module on purpose: every layout's reader shares the row counting and skip accounting above (its length is
mostly this description of the published layouts).
"""

from __future__ import annotations

import bisect
import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ecomvlm.data_modules.llava_json import SkipCounter, read_records

BROKEN_ROW = "broken_row"  # a row that cannot be decoded (its row group does not decode)

IMAGE_COLUMN = "image"

# The configs (= subset folders) of lmms-lab/LLaVA-OneVision-Data, as named on the Hub (dataset card configs;
# LLaVA-NeXT playground/upload_data.py short_names). Used for hints only: an unknown name is not an error by itself.
ONEVISION_SUBSETS: tuple[str, ...] = (
    "CLEVR-Math(MathV360K)", "FigureQA(MathV360K)", "GEOS(MathV360K)", "GeoQA+(MathV360K)",
    "Geometry3K(MathV360K)", "IconQA(MathV360K)", "MapQA(MathV360K)", "PMC-VQA(MathV360K)",
    "Super-CLEVR(MathV360K)", "TabMWP(MathV360K)", "UniGeo(MathV360K)", "VisualWebInstruct(filtered)",
    "VizWiz(MathV360K)", "ai2d(cauldron,llava_format)", "ai2d(gpt4v)", "ai2d(internvl)", "allava_instruct_laion4v",
    "allava_instruct_vflan4v", "aokvqa(cauldron,llava_format)", "chart2text(cauldron)",
    "chartqa(cauldron,llava_format)", "chrome_writting", "clevr(cauldron,llava_format)",
    "diagram_image_to_text(cauldron)", "dvqa(cauldron,llava_format)", "figureqa(cauldron,llava_format)",
    "geo170k(align)", "geo170k(qa)", "geo3k", "geomverse(cauldron)", "hateful_memes(cauldron,llava_format)",
    "hitab(cauldron,llava_format)", "hme100k", "iam(cauldron)", "iconqa(cauldron,llava_format)", "iiit5k",
    "image_textualization(filtered)", "infographic(gpt4v)", "infographic_vqa", "infographic_vqa_llava_format",
    "intergps(cauldron,llava_format)", "k12_printing", "llavar_gpt4_20k", "lrv_chart", "lrv_normal(filtered)",
    "magpie_pro(l3_80b_mt)", "magpie_pro(l3_80b_st)", "magpie_pro(qwen2_72b_st)", "mapqa(cauldron,llava_format)",
    "mathqa", "mavis_math_metagen", "mavis_math_rule_geo", "multihiertt(cauldron)", "orand_car_a", "raven(cauldron)",
    "rendered_text(cauldron)", "robut_sqa(cauldron)", "robut_wikisql(cauldron)", "robut_wtq(cauldron,llava_format)",
    "scienceqa(cauldron,llava_format)", "scienceqa(nona_context)", "screen2words(cauldron)", "sharegpt4o",
    "sharegpt4v(coco)", "sharegpt4v(knowledge)", "sharegpt4v(llava)", "sharegpt4v(sam)", "sroie",
    "st_vqa(cauldron,llava_format)", "tabmwp(cauldron)", "tallyqa(cauldron,llava_format)", "textcaps",
    "textocr(gpt4v)", "tqa(cauldron,llava_format)", "ureader_cap", "ureader_ie", "vision_flan(filtered)",
    "vistext(cauldron)", "visual7w(cauldron,llava_format)", "visualmrc(cauldron)", "vqarad(cauldron,llava_format)",
    "vsr(cauldron,llava_format)", "websight(cauldron)",
)

# Subset names as printed in the paper's A.6 list -> the Hub's names (the YAMLs keep the paper's spelling)
PAPER_NAME_FIXES = {
    "iuit5k": "iiit5k",
    "robust_sqa(cauldron)": "robut_sqa(cauldron)",
    "robust_wikisql(cauldron)": "robut_wikisql(cauldron)",
}

RECAP_RELEASES = ("LLaVA-ReCap-558K", "LLaVA-ReCap-118K", "LLaVA-ReCap-CC3M")
MID_DATA_FILES = {"synthdog_en_processed.json": "synthdog_en", "synthdog_zh_processed.json": "synthdog_zh",
                  "ureader_tr_processed.json": "ureader_tr", "evol_instruct_processed.json": "evol_instruct"}
_OV_JSON = re.compile(r"^LLaVA-OneVision-Data_(.+)\.jsonl?$")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
_LFS_POINTER = b"version https://git-lfs"


# ---------------------------------------------------------------- paths
def published_candidates(path: str | Path) -> list[Path]:
    """Where the published release of the file a mixture names may sit in a local copy, most specific first.

    - ``.../meta_ov/LLaVA-OneVision-Data_<subset>.json`` -> the same name with the Hub's spelling
      (:data:`PAPER_NAME_FIXES`), then the subset folder of a snapshot of lmms-lab/LLaVA-OneVision-Data
      (``huggingface-cli download lmms-lab/LLaVA-OneVision-Data --repo-type dataset --local-dir
      <dir>/LLaVA-OneVision-Data``) in the JSON's folder or the one above it
      (``llava_ov/LLaVA-OneVision-Data/<subset>``);
    - ``.../LLaVA-ReCap-558K.json`` (-118K, -CC3M) -> the snapshot folder ``.../LLaVA-ReCap-558K/``;
    - ``.../synthdog_en_processed.json`` (and the other Mid-Data files) -> ``.../LLaVA-OneVision-Mid-Data/synthdog_en/``
      then ``.../synthdog_en/``;
    - anything else ``X.json`` -> ``X.jsonl``, ``X.parquet``, a folder ``X/``.
    """
    p = Path(path)
    parent, name = p.parent, p.name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    out: list[Path] = []
    m = _OV_JSON.match(name)
    if m:
        subset = m.group(1)
        fixed = PAPER_NAME_FIXES.get(subset, subset)
        if fixed != subset:
            out.append(parent / f"LLaVA-OneVision-Data_{fixed}{p.suffix}")
        for base in (parent, parent.parent):
            out.append(base / "LLaVA-OneVision-Data" / fixed)
    if stem in RECAP_RELEASES:
        out.append(parent / stem)
    if name in MID_DATA_FILES:
        folder = MID_DATA_FILES[name]
        out += [parent / "LLaVA-OneVision-Mid-Data" / folder / name, parent / folder / name]
    for alt in (parent / f"{stem}.jsonl", parent / f"{stem}.json", parent / f"{stem}.parquet", parent / stem):
        if alt != p and alt not in out:
            out.append(alt)
    return out


def resolve_source(path: str | Path) -> Path:
    """`path` if it exists, else the first of :func:`published_candidates` that does; else an error listing what
    was tried (and the closest LLaVA-OneVision-Data subset name when the name looks misspelt)."""
    p = Path(path)
    if p.exists():
        return p
    tried = published_candidates(p)
    for cand in tried:
        if cand.exists():
            return cand
    hint = ""
    m = _OV_JSON.match(p.name)
    if m:
        subset = PAPER_NAME_FIXES.get(m.group(1), m.group(1))
        close = difflib.get_close_matches(subset, ONEVISION_SUBSETS, n=1)
        if subset not in ONEVISION_SUBSETS and close:
            hint = f" ({subset!r} is not a LLaVA-OneVision-Data subset; did you mean {close[0]!r}?)"
    raise FileNotFoundError(f"dataset {p} does not exist, nor its published layout at any of: "
                            + ", ".join(str(c) for c in tried) + hint)


def parquet_files(path: str | Path) -> list[Path]:
    """The parquet shards of one source: the file itself, or the train shards of a folder (a subset folder of
    LLaVA-OneVision-Data, a LLaVA-ReCap snapshot), sorted by name. Files of other splits (``test-*``) are left out
    when train ones exist; shards spread over several folders (a whole LLaVA-OneVision-Data snapshot, both the main
    and the refs/convert/parquet layout) are an error rather than a silent merge."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist")
    files = sorted(f for f in p.rglob("*.parquet")
                   if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise ValueError(f"{p}: no .parquet files in this folder (expected a LLaVA-OneVision-Data subset folder such "
                         f"as ai2d(gpt4v)/ with train-00000-of-0000N.parquet, or a LLaVA-ReCap snapshot with data/)")
    train = [f for f in files if f.name.startswith(("train-", "train.")) or f.parent.name == "train"]
    files = train or files
    folders = sorted({f.parent for f in files})
    if len(folders) > 1:
        shown = ", ".join(str(d.relative_to(p)) or "." for d in folders[:6])
        raise ValueError(f"{p}: parquet shards in {len(folders)} folders ({shown}{', ...' if len(folders) > 6 else ''}"
                         f"); point the mixture at one subset folder (one json_path per subset)")
    return files


def source_kind(path: str | Path) -> str:
    """'parquet' (a file or a folder of shards), 'json' or 'jsonl'."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".parquet":
        return "parquet"
    if p.suffix in (".json", ".jsonl"):
        return p.suffix[1:]
    raise ValueError(f"{p}: unsupported dataset file type {p.suffix!r}; expected .json, .jsonl, .parquet or a folder "
                     f"of .parquet shards (a LLaVA-OneVision-Data subset folder)")


# ---------------------------------------------------------------- reading
def read_source(path: str | Path, skips: SkipCounter, source: str | None = None) -> list[dict[str, Any]]:
    """All records of one source (see the module docstring for the layouts), resolving published layouts with
    :func:`resolve_source`. Holds every embedded image in memory: for large parquet sources prefer
    :func:`count_source` + :func:`iter_selected`."""
    return list(iter_source(path, skips, source))


def iter_source(path: str | Path, skips: SkipCounter, source: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of one source in order; a parquet source is read one row group at a time."""
    source = source or Path(path).name
    p = resolve_source(path)
    kind = source_kind(p)
    if kind != "parquet":
        _refuse_blip_meta(p)
        yield from read_records(p, skips, source)
        return
    for _, rec in _iter_parquet(parquet_files(p), skips, source, select=None):
        yield rec


def count_source(path: str | Path, skips: SkipCounter, source: str | None = None) -> int:
    """How many records :func:`read_source` gives, without reading image bytes (what ``ecomvlm data mixture``
    needs). Counts the same ``broken_row`` skips as ``read_source``; give each of the two its own SkipCounter, or
    only report one of them."""
    source = source or Path(path).name
    p = resolve_source(path)
    if source_kind(p) != "parquet":
        _refuse_blip_meta(p)
        return len(read_records(p, skips, source))
    n = 0
    for f in parquet_files(p):
        pf = _open(f)
        try:
            text_cols = _text_columns(pf, f)
            for rg in range(pf.num_row_groups):
                rows = pf.metadata.row_group(rg).num_rows
                try:
                    pf.read_row_group(rg, columns=text_cols)
                except Exception as e:  # a corrupt page: count its rows, go on
                    _broken(skips, source, f, rg, rows, e)
                    continue
                n += rows
        finally:
            pf.close()
    return n


def iter_selected(path: str | Path, skips: SkipCounter, indices: Iterable[int],
                  source: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, record) for the given record indices (as counted by :func:`count_source`; what
    ``MixtureEntry.select`` returns), in file order. Row groups holding none of them have no image bytes read, so
    ``first:10%`` of a parquet subset reads a tenth of its images. Counts ``broken_row`` like :func:`count_source`."""
    source = source or Path(path).name
    wanted = sorted(set(int(i) for i in indices))
    p = resolve_source(path)
    if source_kind(p) != "parquet":
        _refuse_blip_meta(p)
        records = read_records(p, skips, source)
        for i in wanted:
            if 0 <= i < len(records):
                yield i, records[i]
        return
    yield from _iter_parquet(parquet_files(p), skips, source, select=wanted)


def default_image_root(path: str | Path, records: list[Any] | None = None) -> Path:
    """Where the image paths of a JSON source are relative to: the JSON's folder, or its ``images/`` subfolder
    when the paths resolve there (BLIP-558K: ``images.zip`` unzipped into ``LLaVA-Pretrain/images/``). Decided on
    the first few records with a path; the JSON's folder when none resolves (missing images are counted later)."""
    p = Path(path)
    base = p if p.is_dir() else p.parent
    if records is None:
        try:
            records = read_records(p, SkipCounter(), p.name) if p.is_file() and p.suffix in (".json", ".jsonl") else []
        except (OSError, ValueError):
            records = []
    paths: list[str] = []
    for rec in records:
        img = rec.get("image") if isinstance(rec, dict) else None
        first = img[0] if isinstance(img, list) and img else img
        if isinstance(first, str) and first.strip():
            paths.append(first)
            if len(paths) >= 5:
                break
    for root in (base, base / "images"):
        if paths and any((root / q).is_file() for q in paths):
            return root
    return base


# ---------------------------------------------------------------- parquet internals
def _open(f: Path):
    import pyarrow.parquet as pq

    try:
        with open(f, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        raise ValueError(f"{f}: cannot be read ({e})") from None
    if head.startswith(_LFS_POINTER):
        raise ValueError(f"{f}: a Git LFS pointer, not the data; fetch the file (git lfs pull, or "
                         f"huggingface-cli download ... --repo-type dataset)")
    try:
        return pq.ParquetFile(f)
    except Exception as e:  # ArrowInvalid/OSError: no footer, not parquet
        raise ValueError(f"{f}: not a readable parquet file ({e}); a truncated download? Fetch it again") from None


def _text_columns(pf, f: Path) -> list[str]:
    """Every column but the image one, after checking the file has the LLaVA-OneVision-Data schema."""
    import pyarrow as pa

    schema = pf.schema_arrow
    names = schema.names
    if "conversations" not in names:
        raise ValueError(f"{f}: not a LLaVA-OneVision-Data / LLaVA-ReCap parquet file: columns {names}, expected "
                         f"id, image, conversations, data_source")
    conv = schema.field("conversations").type
    if not (pa.types.is_list(conv) or pa.types.is_large_list(conv)) or not pa.types.is_struct(conv.value_type) \
            or {"from", "value"} - {conv.value_type.field(i).name for i in range(conv.value_type.num_fields)}:
        raise ValueError(f"{f}: column 'conversations' is {conv}, expected list<struct<from: string, value: string>>")
    if IMAGE_COLUMN in names:
        _check_image_type(schema.field(IMAGE_COLUMN).type, f)
    return [n for n in names if n != IMAGE_COLUMN]


def _check_image_type(t, f: Path) -> None:
    import pyarrow as pa

    inner = t.value_type if (pa.types.is_list(t) or pa.types.is_large_list(t)) else t
    if pa.types.is_struct(inner):
        fields = {inner.field(i).name for i in range(inner.num_fields)}
        if fields & {"bytes", "path"}:
            return
    elif pa.types.is_string(inner) or pa.types.is_large_string(inner) or pa.types.is_null(inner):
        return
    raise ValueError(f"{f}: column 'image' is {t}, expected the HF Image feature struct<bytes: binary, path: string> "
                     f"(or a list of them, or path strings)")


def _broken(skips: SkipCounter, source: str, f: Path, rg: int, rows: int, e: Exception) -> None:
    detail = f"{f.name} row group {rg}: {type(e).__name__}: {' '.join(str(e).split())[:120]}"
    for _ in range(rows):
        skips.skip(source, BROKEN_ROW, detail)


def _iter_parquet(files: list[Path], skips: SkipCounter, source: str,
                  select: list[int] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    pos = 0  # index of the next readable row, as count_source counts them
    for f in files:
        pf = _open(f)
        try:
            text_cols = _text_columns(pf, f)
            has_image = IMAGE_COLUMN in pf.schema_arrow.names
            for rg in range(pf.num_row_groups):
                rows = pf.metadata.row_group(rg).num_rows
                try:
                    text = pf.read_row_group(rg, columns=text_cols).to_pylist()
                except Exception as e:  # a corrupt page: count its rows, go on
                    _broken(skips, source, f, rg, rows, e)
                    continue
                start, pos = pos, pos + len(text)
                if select is not None:
                    lo, hi = bisect.bisect_left(select, start), bisect.bisect_left(select, pos)
                    if lo == hi:
                        continue  # nothing selected here: the image bytes are never read
                    picks = [i - start for i in select[lo:hi]]
                else:
                    picks = range(len(text))
                images: list[Any] | None = None
                image_error = ""
                if has_image:
                    try:
                        images = pf.read_row_group(rg, columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN).to_pylist()
                    except Exception as e:  # rows kept; images counted downstream
                        image_error = f"{type(e).__name__}: {' '.join(str(e).split())[:80]}"
                for k in picks:
                    row = text[k]
                    rec = _record(row, source, start + k)
                    if has_image:
                        value = images[k] if images is not None else _UNREADABLE
                        img = _image(value, rec["id"], image_error)
                        if img is not None:
                            rec[IMAGE_COLUMN] = img
                    yield start + k, rec
        finally:
            pf.close()


_UNREADABLE = object()


def _record(row: dict[str, Any], source: str, index: int) -> dict[str, Any]:
    rid = row.get("id")
    rec: dict[str, Any] = {"id": str(rid) if rid is not None else f"{source}-{index:09d}"}
    for k, v in row.items():
        if k != "id":
            rec[k] = v
    return rec


def _image(value: Any, rid: str, error: str) -> Any:
    """One row's ``image`` cell -> the record's ``image`` (None: no image)."""
    if value is _UNREADABLE:
        return {"bytes": b"", "name": _safe(rid), "error": error or "image column unreadable"}
    if value is None:
        return None
    if isinstance(value, list):
        items = [_one_image(v, f"{rid}_{j}") for j, v in enumerate(value) if v is not None]
        return items or None
    return _one_image(value, rid)


def _one_image(v: Any, rid: str) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        data, path = v.get("bytes"), v.get("path")
        if data:
            name = Path(path).name if path else f"{_safe(rid)}{_ext(data)}"
            return {"bytes": bytes(data), "name": name}
        if path:
            return str(path)
    return {"bytes": b"", "name": _safe(rid), "error": "image cell has neither bytes nor path"}


def _safe(rid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rid).strip("._") or "image"


def _ext(data: bytes) -> str:
    head = bytes(data[:16])
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _refuse_blip_meta(p: Path) -> None:
    """blip_laion_cc_sbu_558k_meta.json sits next to the training file and looks like it; say so instead of
    counting 558K bad records."""
    if p.suffix != ".json" or not p.is_file():
        return
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if b'"blip_caption"' in head and b'"conversations"' not in head:
        raise ValueError(f"{p}: BLIP-558K metadata (id, image, url, blip_caption), not conversations; the training "
                         f"file is blip_laion_cc_sbu_558k.json next to it")
