"""A contact sheet of duplicate groups (PNG): judge by eye before dropping or relabelling anything.

One row per shown group: a header (row number, kind, size, labels, splits, why it is shown) and thumbnails of its
images, each captioned with its id, label and split. Shown: every label-conflict group, then up to ``max_groups``
groups that span splits, then up to ``max_groups`` of the largest remaining groups (largest first; ties by first
id). A near group lists its exact copies too, so an exact group that lies inside a near group is not shown again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .duplicates import DuplicateGroup, DuplicateReport
from .layouts import Dataset

THUMB = 96  # thumbnail box, pixels (aspect ratio kept)
PER_ROW = 8  # thumbnails per row; a larger group ends with a "+N more" cell
PAD = 6
HEADER = 16  # header line height, pixels
CAPTION_LINE = 11
CAPTION = 3 * CAPTION_LINE  # id, label, split
ROW = HEADER + THUMB + CAPTION + PAD
WIDTH = PAD + PER_ROW * (THUMB + PAD)


@dataclass(frozen=True)
class ShownGroup:
    row: int
    reasons: tuple[str, ...]  # "label conflict", "across splits", "largest"
    group: DuplicateGroup


def sheet_size(n_rows: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a sheet with ``n_rows`` groups (an empty sheet holds one line of text)."""
    return WIDTH, PAD + (n_rows * ROW if n_rows else HEADER + PAD)


def select_groups(duplicates: DuplicateReport, splits: dict[str, str | None], max_groups: int = 12) -> list[ShownGroup]:
    """The groups a contact sheet shows, in row order (see the module docstring)."""
    near_sets = [set(g.ids) for g in duplicates.near]
    groups = list(duplicates.near) + [g for g in duplicates.exact if not any(set(g.ids) <= s for s in near_sets)]
    groups.sort(key=lambda g: (-len(g.ids), g.ids[0]))

    def spans(g: DuplicateGroup) -> bool:
        return len({str(splits.get(i)) for i in g.ids}) > 1

    reasons: dict[int, list[str]] = {}
    for k, g in enumerate(groups):
        if g.conflicting:
            reasons.setdefault(k, []).append("label conflict")
    for k in [k for k, g in enumerate(groups) if spans(g)][:max_groups]:
        reasons.setdefault(k, []).append("across splits")
    for k in [k for k in range(len(groups)) if k not in reasons][:max_groups]:
        reasons.setdefault(k, []).append("largest")
    order = sorted(reasons, key=lambda k: (0 if groups[k].conflicting else 1 if spans(groups[k]) else 2, k))
    return [ShownGroup(row, tuple(reasons[k]), groups[k]) for row, k in enumerate(order)]


def write_contact_sheet(
    dataset: Dataset,
    records: dict,
    duplicates: DuplicateReport,
    path: str | os.PathLike,
    max_groups: int = 12,
) -> list[ShownGroup]:
    """Draw the duplicate groups of ``dataset`` as a PNG contact sheet at ``path`` (written atomically).

    Args:
        dataset: the dataset the groups come from (images are decoded from it, as the scan decoded them).
        records: ``{id: ScanRecord}`` of its scan (an unreadable image is drawn as a gray box).
        duplicates: its duplicate groups (:func:`medcli.data.inspect.duplicates_of`).
        path: the PNG to write; parent folders are created.
        max_groups: at most this many groups across splits, and this many of the largest other groups;
            label-conflict groups are always all shown.

    Returns:
        The shown groups, one per row, in order. The sheet is :func:`sheet_size` (``len(result)``) pixels:
        ``PER_ROW`` thumbnails of ``THUMB`` px per row.
    """
    from PIL import Image, ImageDraw, ImageFont

    from .._io import atomic_path
    from .scan import load_image

    split_of = {s.id: s.split for s in dataset.samples}
    by_id = dataset.by_id()
    shown = select_groups(duplicates, split_of, max_groups)
    sheet = Image.new("RGB", sheet_size(len(shown)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if not shown:
        draw.text((PAD, PAD), "no duplicate groups", fill="black", font=font)
    for item in shown:
        g, top = item.group, PAD + item.row * ROW
        header = (
            f"#{item.row} {g.kind}: {len(g.ids)} images; labels {', '.join(sorted(set(g.labels)))}; "
            f"splits {', '.join(sorted({_split_name(split_of.get(i)) for i in g.ids}))} [{', '.join(item.reasons)}]"
        )
        draw.text((PAD, top), _fit(draw, header, WIDTH - 2 * PAD, font), fill="red" if g.conflicting else "black", font=font)
        cells = _representative(list(zip(g.ids, g.labels)), split_of)
        for col, (sid, label) in enumerate(cells):
            left, y = PAD + col * (THUMB + PAD), top + HEADER
            record = records.get(sid)
            try:
                if record is not None and not record.ok:
                    raise ValueError(record.error)
                img = load_image(by_id[sid], dataset.decode)[0].convert("RGB")  # decoded as the dataset is (window, frame)
                img.thumbnail((THUMB, THUMB))
                sheet.paste(img, (left + (THUMB - img.width) // 2, y + (THUMB - img.height) // 2))
            except Exception:  # noqa: BLE001 - any undecodable file is drawn as a gray box, never stops the sheet
                draw.rectangle([left, y, left + THUMB - 1, y + THUMB - 1], fill=(200, 200, 200))
            for line, text in enumerate((sid, label, _split_name(split_of.get(sid)))):
                draw.text((left, y + THUMB + line * CAPTION_LINE), _fit(draw, text, THUMB, font, keep_end=line == 0), fill="black", font=font)
        if len(g.ids) > PER_ROW:
            left = PAD + (PER_ROW - 1) * (THUMB + PAD)
            draw.text((left + 8, top + HEADER + THUMB // 2), f"+{len(g.ids) - (PER_ROW - 1)} more", fill="black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return shown


def _fit(draw, text: str, width: int, font, keep_end: bool = False) -> str:
    """``text`` shortened with an ellipsis (at the start when ``keep_end``: file names end in what matters)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text if keep_end else text + "…", font=font) > width:
        text = text[1:] if keep_end else text[:-1]
    return ("…" + text) if keep_end else (text + "…")


def _split_name(split) -> str:
    return "all" if split is None else str(split)


def _representative(cells: list[tuple[str, str]], split_of: dict) -> list[tuple[str, str]]:
    """The members a row shows: all of them when they fit, else first one of every (split, label) present, so a
    cross-split or label-conflict group always shows both sides, then the others in order."""
    if len(cells) <= PER_ROW:
        return cells
    seen, first, rest = set(), [], []
    for cell in cells:
        kind = (_split_name(split_of.get(cell[0])), cell[1])
        (rest if kind in seen else first).append(cell)
        seen.add(kind)
    return (first + rest)[: PER_ROW - 1]
